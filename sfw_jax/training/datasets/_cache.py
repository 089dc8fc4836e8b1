"""On-disk cache of decoded image arrays as uncompressed ``.npz`` files.

A cache entry is keyed by a caller-provided fingerprint of the source (paths, sizes and
modification times) plus decoding options, so changed data is decoded again. Entries are
written atomically (temporary file + rename) so concurrent readers never see half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sfw_jax`` or ``~/.cache/sfw_jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sfw_jax"


def cache_path(cache_dir: Path, label: str, *key_parts: object) -> Path:
    """File in ``cache_dir`` for the given key parts; ``label`` makes the name readable."""
    digest = hashlib.sha256(repr((CACHE_VERSION,) + key_parts).encode()).hexdigest()[:20]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)[:60]
    return Path(cache_dir) / f"{safe}-{digest}.npz"


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """All arrays of the ``.npz`` at ``path``, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None  # a damaged cache entry is simply rebuilt


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically; creates the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
