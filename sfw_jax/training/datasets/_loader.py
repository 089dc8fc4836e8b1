"""``load_dataset``: one entry point for TFDS, local files and the embedded digits data."""

from __future__ import annotations

import numbers
from pathlib import Path

from sfw_jax.training.datasets._cifar_pickle import cifar_variant, load_cifar_python
from sfw_jax.training.datasets._detect import detect_format, format_alias
from sfw_jax.training.datasets._digits import load_digits_dataset
from sfw_jax.training.datasets._errors import LOCAL_FORMATS_HELP, DataFormatError, DatasetUnavailableError
from sfw_jax.training.datasets._idx import load_idx
from sfw_jax.training.datasets._image_table import DecodeOptions
from sfw_jax.training.datasets._imagefolder import load_imagefolder
from sfw_jax.training.datasets._resize import resize_images
from sfw_jax.training.datasets._splits import carve_validation, channel_stats, check_val_fraction
from sfw_jax.training.datasets._text import TEXT_DATASETS, load_text
from sfw_jax.training.datasets._tfds_source import load_tfds
from sfw_jax.training.datasets._tiny_imagenet import load_tiny_imagenet
from sfw_jax.training.datasets._types import Dataset, DatasetInfo, RawDataset, Split

_FILE_FORMATS = ("imagefolder", "tiny-imagenet")  # decoded from image files (resized on decode)


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    num_workers: int | None = None,
    download: bool = True,
    context: int | None = None,
) -> Dataset:
    """Load an image-classification dataset as uint8 train / val / test splits plus metadata.

    Sources, chosen by ``name`` and ``data_dir``:
      * ``'digits'``: scikit-learn's bundled 8x8 digits (offline; ``data_dir`` must be None).
      * ``'text'``: byte-level language-model windows of ``context + 1`` bytes from the text
        files of ``data_dir`` (a folder or tar archive), split by file
        (:mod:`sfw_jax.training.datasets._text`; ``val_fraction`` of the files by name hash are
        validation, 10% test); its splits are ``TokenSplit``.
      * a local format name (``'idx'``, ``'cifar-python'``, ``'imagefolder'``,
        ``'tiny-imagenet'``) with ``data_dir``: that format, read from ``data_dir`` (or its one
        sub-folder holding it).
      * any other name with ``data_dir``: the local format auto-detected in ``data_dir``;
        failing that, a TFDS dataset already prepared in ``data_dir`` (no download).
      * any other name without ``data_dir``: TFDS via ``tfds.data_source`` (prepared, or
        downloaded when ``download``).

    Validation: a source's own validation split (image folders with ``val/``) is used as is;
    otherwise a class-stratified ``val_fraction`` of train is carved out with ``seed`` (the
    same seed gives the same split). ``val_fraction=0`` gives an empty val ``[0, H, W, C]``.

    Args:
      name: dataset or format name (see above).
      data_dir: folder or ``.tar[.gz]`` archive with local files.
      val_fraction: in ``[0, 1)``.
      seed: seed of the validation carve-out.
      image_size: resize every image to ``image_size x image_size`` (None keeps the size).
      cache_dir: cache of decoded image files (default ``~/.cache/sfw_jax``).
      use_cache: read/write that cache.
      num_workers: decoding threads (default ``min(8, cpu_count)``).
      download: allow TFDS to download a dataset that is not prepared.
      context: the window length - 1 of ``'text'`` (the model's context); required there,
        unused otherwise.

    Returns:
      ``Dataset`` whose ``info.mean`` / ``info.std`` are per-channel statistics in [0, 1]
      scale of the final train split.

    Raises:
      ValueError: bad argument (names it and the value) or unknown dataset name.
      FileNotFoundError: a missing folder or file (named, with the expected layout).
      DataFormatError: a file with wrong layout or content (named, with the expected layout).
      DatasetUnavailableError: a TFDS dataset that is not available here.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty dataset or format name; got {name!r}")
    val_fraction = check_val_fraction(val_fraction)
    if name.strip().lower() in TEXT_DATASETS:
        if image_size is not None:
            raise ValueError(f"image_size must be None for the 'text' dataset, got {image_size!r}")
        return load_text(data_dir, context, val_fraction=val_fraction)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size <= 0
    ):
        raise ValueError(f"image_size must be None or a positive integer; got {image_size!r}")
    options = DecodeOptions(
        image_size=None if image_size is None else int(image_size),
        cache_dir=None if cache_dir is None else Path(cache_dir),
        use_cache=use_cache,
        num_workers=num_workers,
    )
    raw, fmt, dataset_name = _load_raw(name.strip(), data_dir, options, download)
    if image_size is not None and fmt not in _FILE_FORMATS:
        raw = RawDataset(
            train=_resized(raw.train, int(image_size)),
            test=_resized(raw.test, int(image_size)),
            val=None if raw.val is None else _resized(raw.val, int(image_size)),
            class_names=raw.class_names,
            source=raw.source,
        )
    _check_labels(raw)
    if raw.val is not None:
        train, val = raw.train, raw.val
    else:
        train, val = carve_validation(raw.train, val_fraction, int(seed))
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name=dataset_name,
        num_classes=len(raw.class_names),
        image_shape=train.image_shape,
        mean=mean,
        std=std,
        class_names=tuple(raw.class_names),
        source=raw.source,
    )
    return Dataset(train=train, val=val, test=raw.test, info=info)


def _load_raw(
    name: str, data_dir: str | Path | None, options: DecodeOptions, download: bool
) -> tuple[RawDataset, str, str]:
    """``(raw dataset, source format, dataset name)`` for ``load_dataset``."""
    if name.lower() == "digits":
        if data_dir is not None:
            raise ValueError(
                f"'digits' ships with scikit-learn and reads no files; got data_dir={str(data_dir)!r} "
                "(pass data_dir=None, or a format name such as 'idx' to read local files)"
            )
        return load_digits_dataset(), "digits", "digits"
    forced = format_alias(name)
    if forced is not None:
        if data_dir is None:
            raise ValueError(f"format {name!r} reads local files: data_dir is required")
        found = detect_format(Path(data_dir), wanted=forced)
        root = found[1] if found else Path(data_dir)
        dataset_name = _name_from(forced, root)
        return _read_local(forced, root, dataset_name, options), forced, dataset_name
    if data_dir is None:
        return load_tfds(name, None, download=download), "tfds", name
    found = detect_format(Path(data_dir))
    if found is not None:
        return _read_local(found[0], found[1], name, options), found[0], name
    try:
        return load_tfds(name, data_dir, download=False), "tfds", name
    except (DatasetUnavailableError, ValueError) as err:
        raise DataFormatError(
            f"data_dir {data_dir} holds no recognised local dataset and no prepared TFDS "
            f"dataset {name!r} ({err.__class__.__name__}). " + LOCAL_FORMATS_HELP
        ) from err


def _read_local(fmt: str, root: Path, name: str, options: DecodeOptions) -> RawDataset:
    if fmt == "idx":
        return load_idx(root, name)
    if fmt == "cifar-python":
        return load_cifar_python(root)
    if fmt == "imagefolder":
        return load_imagefolder(root, options)
    return load_tiny_imagenet(root, options)


def _name_from(fmt: str, root: Path) -> str:
    """Dataset name when only a format was given."""
    if fmt == "cifar-python":
        return cifar_variant(root) or "cifar"
    if fmt == "tiny-imagenet":
        return "tiny-imagenet"
    base = root.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    return base or fmt


def _resized(split: Split, size: int) -> Split:
    return Split(resize_images(split.images, size), split.labels)


def _check_labels(raw: RawDataset) -> None:
    k = len(raw.class_names)
    for split_name, split in (("train", raw.train), ("val", raw.val), ("test", raw.test)):
        if split is None or len(split) == 0:
            continue
        low, high = int(split.labels.min()), int(split.labels.max())
        if low < 0 or high >= k:
            raise DataFormatError(
                f"{raw.source}: {split_name} labels range {low}..{high}, expected 0..{k - 1} "
                f"({k} classes)"
            )
