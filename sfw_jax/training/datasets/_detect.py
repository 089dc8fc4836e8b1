"""Recognising which local format a ``data_dir`` holds."""

from __future__ import annotations

import os
from pathlib import Path

from sfw_jax.training.datasets._cifar_pickle import cifar_variant
from sfw_jax.training.datasets._errors import LOCAL_FORMATS_HELP, DataFormatError
from sfw_jax.training.datasets._idx import looks_like_idx
from sfw_jax.training.datasets._imagefolder import is_archive, looks_like_imagefolder
from sfw_jax.training.datasets._tiny_imagenet import looks_like_tiny_imagenet

LOCAL_FORMATS = ("idx", "cifar-python", "imagefolder", "tiny-imagenet")
_ALIASES = {
    "idx": "idx",
    "cifar-python": "cifar-python",
    "cifarpython": "cifar-python",
    "imagefolder": "imagefolder",
    "image-folder": "imagefolder",
    "tiny-imagenet": "tiny-imagenet",
    "tinyimagenet": "tiny-imagenet",
    "tiny-imagenet-200": "tiny-imagenet",
}


def format_alias(name: str) -> str | None:
    """The canonical local format for ``name`` (case, ``_`` / ``-`` insensitive), else None."""
    return _ALIASES.get(name.strip().lower().replace("_", "-"))


def format_of(path: Path) -> str | None:
    """The local format ``path`` itself holds, or None."""
    path = Path(path)
    if is_archive(path):
        return "imagefolder"
    if not path.is_dir():
        return None
    if looks_like_tiny_imagenet(path):
        return "tiny-imagenet"
    if cifar_variant(path) is not None:
        return "cifar-python"
    if looks_like_idx(path):
        return "idx"
    if looks_like_imagefolder(path):
        return "imagefolder"
    return None


def detect_format(data_dir: Path, wanted: str | None = None) -> tuple[str, Path] | None:
    """Find a local dataset in ``data_dir`` or in exactly one of its sub-folders / archives.

    Args:
      data_dir: folder (or tar archive) to inspect.
      wanted: restrict to this canonical format (one of ``LOCAL_FORMATS``).

    Returns:
      ``(format, path)`` with ``path`` the folder/archive holding it, or None if none found.

    Raises:
      FileNotFoundError: ``data_dir`` does not exist.
      DataFormatError: several sub-folders or archives hold datasets (ambiguous).
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise FileNotFoundError(f"data_dir {data_dir} does not exist. " + LOCAL_FORMATS_HELP)
    own = format_of(data_dir)
    if own is not None and wanted in (None, own):
        return own, data_dir
    if not data_dir.is_dir():
        return None
    found = []
    for entry in sorted(os.scandir(data_dir), key=lambda e: e.name):
        if entry.is_dir() or is_archive(Path(entry.path)):
            fmt = format_of(Path(entry.path))
            if fmt is not None and wanted in (None, fmt):
                found.append((fmt, Path(entry.path)))
    if len(found) > 1:
        listed = ", ".join(f"{p.name} ({f})" for f, p in found)
        raise DataFormatError(
            f"data_dir {data_dir} holds several datasets: {listed}; point data_dir at one of them"
        )
    return found[0] if found else None
