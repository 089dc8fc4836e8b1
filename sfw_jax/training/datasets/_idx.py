"""Reader for the IDX format of MNIST-style datasets (MNIST, Fashion-MNIST, KMNIST, ...).

IDX layout (big-endian): two zero bytes, one type byte (0x08 = unsigned byte), one byte with
the number of dimensions ``d``, then ``d`` uint32 sizes, then the data in C order. Files may be
gzip-compressed (``.gz``), detected from the gzip magic bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from sfw_jax.training.datasets._errors import DataFormatError
from sfw_jax.training.datasets._types import RawDataset, Split

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
# File stems per split and kind: (images, labels).
_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IDX_LAYOUT = (
    "expected IDX files train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (a '.' instead of the last '-' is accepted)"
)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a ``uint8`` array of its dims.

    Raises:
      DataFormatError: bad magic, unsupported type, or a data length that does not match the
        header dims (names the file and both numbers).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataFormatError(f"{path}: corrupt gzip stream ({err}); {IDX_LAYOUT}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(
            f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}, expected 0000XXYY)"
        )
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _UBYTE:
        raise DataFormatError(
            f"{path}: IDX data type 0x{dtype_code:02x} is not supported, expected 0x08 (unsigned byte)"
        )
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_len:
        raise DataFormatError(f"{path}: truncated IDX header (ndim={ndim}, {len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(raw) - header_len
    if actual != expected:
        raise DataFormatError(
            f"{path}: IDX header dims {dims} need {expected} data bytes but the file has {actual}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def find_idx_file(root: Path, stem: str) -> Path | None:
    """Path of ``stem`` in ``root`` with or without ``.gz`` (and with ``.idx`` spelling), or None."""
    dotted = stem[: stem.rfind("-")] + "." + stem[stem.rfind("-") + 1 :]
    for name in (stem, dotted):
        for suffix in (".gz", ""):
            candidate = root / (name + suffix)
            if candidate.is_file():
                return candidate
    return None


def looks_like_idx(root: Path) -> bool:
    """Whether ``root`` holds a train-images IDX file."""
    return find_idx_file(root, _STEMS["train"][0]) is not None


def _read_split(root: Path, split: str) -> Split:
    image_stem, label_stem = _STEMS[split]
    paths = []
    for stem in (image_stem, label_stem):
        found = find_idx_file(root, stem)
        if found is None:
            raise FileNotFoundError(f"{root / (stem + '.gz')}: missing IDX file; {IDX_LAYOUT}")
        paths.append(found)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataFormatError(
            f"{paths[0]}: IDX images have dims {images.shape}, expected [N, H, W] or [N, H, W, C]"
        )
    if labels.ndim != 1:
        raise DataFormatError(f"{paths[1]}: IDX labels have dims {labels.shape}, expected [N]")
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{paths[0]} has {images.shape[0]} images but {paths[1]} has {labels.shape[0]} labels; "
            "expected the same count"
        )
    return Split(np.ascontiguousarray(images), labels.astype(np.int32))


def load_idx(root: Path, name: str) -> RawDataset:
    """Load an IDX dataset folder ``root``; ``name`` picks class names (fashion_mnist or digits)."""
    root = Path(root)
    train, test = _read_split(root, "train"), _read_split(root, "test")
    if train.image_shape != test.image_shape:
        raise DataFormatError(
            f"{root}: train images are {train.image_shape} but test images are {test.image_shape}"
        )
    num_classes = int(max(train.labels.max(initial=0), test.labels.max(initial=0))) + 1
    if name.replace("-", "_").lower() in ("fashion_mnist", "fashionmnist") and num_classes <= 10:
        class_names = FASHION_MNIST_CLASSES
    else:
        # MNIST-family datasets have (at least) 10 classes even if a small file misses some.
        class_names = tuple(str(k) for k in range(max(num_classes, 10)))
    return RawDataset(train=train, test=test, val=None, class_names=class_names, source=f"idx:{root}")
