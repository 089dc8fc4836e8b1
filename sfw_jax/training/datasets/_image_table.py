"""Decode a table of encoded image files into ``Split`` arrays, with an on-disk cache.

A *table* lists, per split, the file names and labels of the images of a folder-based
dataset (image folders, Tiny-ImageNet) and knows how to read a file's bytes. Decoded arrays
are cached (see ``sfw_jax.training.datasets._cache``) keyed by the source fingerprint and decoding
options, so a second load only reads one ``.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sfw_jax.training.datasets import _cache as cache_lib
from sfw_jax.training.datasets._decode import decode_images
from sfw_jax.training.datasets._types import Split


@dataclass(frozen=True)
class ImageTable:
    """Files of a folder-based dataset.

    Attributes:
      splits: split name (``'train'``, ``'val'``, ``'test'``) -> ``(names, labels)``, with
        ``names`` a list of N file identifiers accepted by ``read`` and ``labels`` int32 ``[N]``.
      class_names: class names, index = label.
      read: returns the encoded bytes of one file identifier.
      location: prefix of file identifiers in error messages (folder or archive path).
    """

    splits: dict[str, tuple[list[str], np.ndarray]]
    class_names: tuple[str, ...]
    read: Callable[[str], bytes]
    location: str = ""


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode: ``channels`` 1/3/None (see ``decode_image``), ``image_size`` or None,
    ``cache_dir`` (None: ``default_cache_dir()``), ``use_cache``, ``num_workers``."""

    channels: int | None = None
    image_size: int | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    num_workers: int | None = None


def data_root(root: Path | str, layout: str, *, folder: bool = False) -> Path:
    """``root`` as a ``Path``; FileNotFoundError naming it and the expected ``layout`` unless it
    exists (and, with ``folder``, is a folder)."""
    root = Path(root)
    if not (root.is_dir() if folder else root.exists()):
        raise FileNotFoundError(f"{root}: data directory does not exist; {layout}")
    return root


def load_table(
    label: str,
    fingerprint: object,
    build: Callable[[], ImageTable],
    options: DecodeOptions,
) -> tuple[dict[str, Split], tuple[str, ...]]:
    """Decoded splits and class names of the table ``build()`` returns, through the cache.

    Args:
      label: readable prefix of the cache file name (e.g. the folder name).
      fingerprint: hashable description of the source content (paths, sizes, mtimes);
        ``build`` is not called on a cache hit.
      build: lists the files (may read an archive).
      options: decoding and cache options.
    """
    path = cache_lib.cache_path(
        Path(options.cache_dir) if options.cache_dir is not None else cache_lib.default_cache_dir(),
        label,
        fingerprint,
        options.channels,
        options.image_size,
    )
    if options.use_cache:
        cached = cache_lib.load_arrays(path)
        if cached is not None:
            return _from_arrays(cached)
    table = build()
    splits: dict[str, Split] = {}
    for split, (names, labels) in table.splits.items():
        images = decode_images(
            names,
            table.read,
            channels=options.channels,
            size=options.image_size,
            num_workers=options.num_workers,
            desc=f"decoding {label} {split}",
            location=table.location,
        )
        splits[split] = Split(images, np.asarray(labels, np.int32))
    if options.use_cache:
        cache_lib.save_arrays(path, _to_arrays(splits, table.class_names))
    return splits, table.class_names


def _to_arrays(splits: dict[str, Split], class_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    arrays = {"class_names": np.asarray(class_names, dtype=str)}
    for name, split in splits.items():
        arrays[f"{name}_images"] = split.images
        arrays[f"{name}_labels"] = split.labels
    return arrays


def _from_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict[str, Split], tuple[str, ...]]:
    splits = {
        key[: -len("_images")]: Split(arrays[key], arrays[key[: -len("_images")] + "_labels"])
        for key in arrays
        if key.endswith("_images")
    }
    return splits, tuple(str(n) for n in arrays["class_names"])
