"""Reader for the CIFAR-10 / CIFAR-100 "python version" pickle batches.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` (dicts
with ``b'data'`` uint8 ``[N, 3072]`` (R, G, B planes of 32x32, row-major) and ``b'labels'``),
``batches.meta`` (``b'label_names'``).
CIFAR-100 (``cifar-100-python``): ``train``, ``test`` (``b'data'``, ``b'fine_labels'``) and
``meta`` (``b'fine_label_names'``).

Pickles are read with a restricted unpickler that only allows numpy arrays and builtins, so a
malicious file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from sfw_jax.training.datasets._errors import DataFormatError
from sfw_jax.training.datasets._types import RawDataset, Split

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_LAYOUT = (
    "expected CIFAR python batches: cifar-10-batches-py (data_batch_1..data_batch_5, test_batch, "
    "batches.meta) or cifar-100-python (train, test, meta), each a pickled dict with b'data' "
    "uint8 [N, 3072] and b'labels' / b'fine_labels'"
)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "bytes"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """Unpickle one CIFAR batch file into a dict with ``bytes`` keys.

    Raises:
      FileNotFoundError: if ``path`` is missing. DataFormatError: if it is not a dict pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing CIFAR batch file; {CIFAR_LAYOUT}")
    try:
        obj = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as err:  # pickle raises many types on garbage input
        raise DataFormatError(f"{path}: cannot unpickle ({err}); {CIFAR_LAYOUT}") from err
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: holds a {type(obj).__name__}, expected a dict; {CIFAR_LAYOUT}")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _batch_split(path: Path, label_key: bytes) -> Split:
    batch = read_batch(path)
    if b"data" not in batch or label_key not in batch:
        raise DataFormatError(
            f"{path}: keys {sorted(batch)} lack b'data' or {label_key!r}; {CIFAR_LAYOUT}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(
            f"{path}: b'data' has dtype {data.dtype} shape {data.shape}, expected uint8 [N, 3072]"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataFormatError(
            f"{path}: {data.shape[0]} images but {labels.shape[0] if labels.ndim else 'scalar'} "
            f"labels in {label_key!r}; expected one label per image"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels.astype(np.int32))


def _concat(splits: list[Split]) -> Split:
    return Split(
        np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits])
    )


def _names(path: Path, key: bytes, fallback: int) -> tuple[str, ...]:
    if not path.is_file():
        return tuple(str(k) for k in range(fallback))
    meta = read_batch(path)
    if key not in meta:
        raise DataFormatError(f"{path}: keys {sorted(meta)} lack {key!r}; {CIFAR_LAYOUT}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[key])


def cifar_variant(root: Path) -> str | None:
    """``'cifar10'`` or ``'cifar100'`` if ``root`` looks like that batch folder, else None."""
    root = Path(root)
    if (root / "data_batch_1").is_file() or (root / "batches.meta").is_file():
        return "cifar10"
    if (root / "train").is_file() and ((root / "meta").is_file() or (root / "test").is_file()):
        return "cifar100"
    return None


def load_cifar_python(root: Path) -> RawDataset:
    """Load a ``cifar-10-batches-py`` or ``cifar-100-python`` folder."""
    root = Path(root)
    variant = cifar_variant(root)
    if variant is None:
        raise DataFormatError(f"{root}: no data_batch_1 or train batch file found; {CIFAR_LAYOUT}")
    if variant == "cifar10":
        train = _concat([_batch_split(root / n, b"labels") for n in CIFAR10_TRAIN])
        test = _batch_split(root / "test_batch", b"labels")
        names = _names(root / "batches.meta", b"label_names", 10)
    else:
        train = _batch_split(root / "train", b"fine_labels")
        test = _batch_split(root / "test", b"fine_labels")
        names = _names(root / "meta", b"fine_label_names", 100)
    top = int(max(train.labels.max(initial=-1), test.labels.max(initial=-1)))
    if top >= len(names) or min(train.labels.min(initial=0), test.labels.min(initial=0)) < 0:
        raise DataFormatError(
            f"{root}: labels range up to {top} but there are {len(names)} class names; "
            f"expected labels in 0..{len(names) - 1}"
        )
    return RawDataset(
        train=train, test=test, val=None, class_names=names, source=f"cifar-python:{root}"
    )
