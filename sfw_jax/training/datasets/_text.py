"""The ``text`` dataset: byte-level language-model windows from a folder or tar archive of text.

Files. Every regular file of the folder (recursively) or of the ``.tar`` / ``.tar.gz`` / ``.tgz``
archive is read as bytes, named by its path relative to the root with ``/`` separators; when all
files sit below one top-level folder that folder is dropped from the names, so an archive and
its unpacked copy give the same names.

Split by file, never inside one. A file's split is a fixed function of its name:
``u = int(sha256(name)[:8 bytes]) / 2^64`` in [0, 1); ``u < test_fraction`` -> test,
``u < test_fraction + val_fraction`` -> validation, else train. The test files do not depend on
``val_fraction``, and no file contributes text to two splits.

Windows. A split's files are concatenated in name order into one byte stream ``s`` of length
``n``; window ``i`` is ``s[i T : i T + T + 1]`` (``T = context``), ``i = 0 .. (n - 1) // T - 1``
(a tail shorter than ``T + 1`` is dropped). Consecutive windows share one byte, so every byte
after the first is the next-byte target of exactly one position: the model reads
``w[:-1]`` and predicts ``w[1:]`` (:func:`inputs_targets`). Byte vocabulary: 256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers
import os
from pathlib import Path

import numpy as np

from sfw_jax.training.datasets._errors import DataFormatError
from sfw_jax.training.datasets._image_table import data_root
from sfw_jax.training.datasets._imagefolder import is_archive, read_archive
from sfw_jax.training.datasets._splits import check_val_fraction
from sfw_jax.training.datasets._types import Dataset, DatasetInfo

TEXT_DATASETS = ("text",)
"""Dataset names of this loader (``load_dataset(name, ...)``)."""

VOCAB_SIZE = 256
"""Byte vocabulary: one token per byte value."""

TEST_FRACTION = 0.1
"""Fraction of the files (by hash) in the test split."""

TEXT_LAYOUT = ("expected a folder of text files (read recursively) or a .tar/.tar.gz archive "
               "of one, e.g. ../shared/data/text/cpython-3.11.7-lib.tar.gz")

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class TokenSplit:
    """One split of a byte-level language-model dataset, in host memory.

    Attributes:
      tokens: ``uint8`` array ``[N, T + 1]``: N windows of ``T + 1`` bytes.
    """

    tokens: np.ndarray

    def __post_init__(self) -> None:
        t = self.tokens
        if not isinstance(t, np.ndarray) or t.dtype != np.uint8 or t.ndim != 2 or t.shape[1] < 2:
            raise ValueError(f"TokenSplit.tokens must be a uint8 numpy array [N, T + 1] with "
                             f"T >= 1; got {type(t).__name__} dtype={getattr(t, 'dtype', None)} "
                             f"shape={getattr(t, 'shape', None)}")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        """T: positions (next-byte targets) per window."""
        return int(self.tokens.shape[1]) - 1

    def take(self, indices: np.ndarray) -> "TokenSplit":
        """New split with the windows at ``indices`` (int array ``[M]``), in that order."""
        return TokenSplit(self.tokens[indices])


def inputs_targets(windows):
    """``(w[..., :-1], w[..., 1:])`` as int32: the model's inputs and next-byte targets of
    windows ``w`` of shape ``[..., T + 1]`` (NumPy or JAX arrays)."""
    return windows[..., :-1].astype(np.int32), windows[..., 1:].astype(np.int32)


def split_of(name: str, val_fraction: float, test_fraction: float = TEST_FRACTION) -> str:
    """'train', 'val' or 'test': the split of the file ``name`` (see the module docstring)."""
    u = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def read_files(data_dir: str | Path) -> dict[str, bytes]:
    """The files of a folder (recursively) or tar archive by relative name (module docstring)."""
    root = data_root(data_dir, TEXT_LAYOUT)
    if is_archive(root):
        files = read_archive(root, keep=lambda name: True, layout=TEXT_LAYOUT)
    elif root.is_dir():
        files = {}
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for n in names:
                full = Path(folder) / n
                if full.is_file():
                    files[full.relative_to(root).as_posix()] = full.read_bytes()
        tops = {n.split("/")[0] for n in files}
        if len(tops) == 1 and all("/" in n for n in files):
            strip = len(next(iter(tops))) + 1
            files = {n[strip:]: b for n, b in files.items()}
    else:
        raise DataFormatError(f"{root}: not a folder or a tar archive; {TEXT_LAYOUT}")
    if not files:
        raise DataFormatError(f"{root}: holds no files; {TEXT_LAYOUT}")
    return files


def windows(stream: bytes, length: int) -> np.ndarray:
    """uint8 ``[N, length]``: windows at stride ``length - 1`` of ``stream`` (module docstring)."""
    data = np.frombuffer(stream, np.uint8)
    n = max(0, (len(data) - 1) // (length - 1))
    if n == 0:
        return np.zeros((0, length), np.uint8)
    view = np.lib.stride_tricks.sliding_window_view(data, length)
    return np.ascontiguousarray(view[: n * (length - 1): length - 1])


def load_text(data_dir: str | Path | None, context: int, *, val_fraction: float = 0.1,
              test_fraction: float = TEST_FRACTION) -> Dataset:
    """The ``text`` dataset of ``data_dir`` with windows of ``context + 1`` bytes.

    Returns a :class:`~sfw_jax.training.datasets.Dataset` whose splits are
    :class:`TokenSplit` and whose ``info`` has ``num_classes = 256`` and
    ``sequence_length = context``. Raises ValueError for a bad argument, FileNotFoundError /
    DataFormatError naming ``data_dir`` (missing, no files, or a split without a full window).
    """
    if data_dir is None:
        raise ValueError(f"data_dir is required for the 'text' dataset ({TEXT_LAYOUT})")
    if isinstance(context, bool) or not isinstance(context, numbers.Integral) or context < 1:
        raise ValueError(f"context must be an int >= 1 for the 'text' dataset, got {context!r}")
    val_fraction = check_val_fraction(val_fraction)
    if not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1 with test_fraction in "
                         f"(0, 1), got {val_fraction!r} + {test_fraction!r}")
    files = read_files(data_dir)
    streams = {s: [] for s in SPLITS}
    for name in sorted(files):
        streams[split_of(name, val_fraction, test_fraction)].append(files[name])
    splits = {}
    for s in SPLITS:
        splits[s] = TokenSplit(windows(b"".join(streams[s]), context + 1))
        if len(splits[s]) == 0 and (s != "val" or val_fraction > 0):
            raise DataFormatError(
                f"{data_dir}: the {s} split ({len(streams[s])} of {len(files)} files by name "
                f"hash) holds no window of {context + 1} bytes; use more text or a shorter "
                f"context")
    info = DatasetInfo(name="text", num_classes=VOCAB_SIZE, image_shape=(),
                       mean=np.zeros(0, np.float32), std=np.ones(0, np.float32),
                       class_names=tuple(f"{b:#04x}" for b in range(VOCAB_SIZE)),
                       source=f"text:{data_dir}", sequence_length=int(context))
    return Dataset(train=splits["train"], val=splits["val"], test=splits["test"], info=info)
