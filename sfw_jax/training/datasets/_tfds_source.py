"""TensorFlow Datasets source via ``tfds.data_source`` (random access, no TensorFlow needed).

``tensorflow_datasets`` is imported inside the functions, so the rest of the library works
where it is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sfw_jax.training.datasets._errors import LOCAL_FORMATS_HELP, DatasetUnavailableError
from sfw_jax.training.datasets._types import RawDataset, Split

_READ_CHUNK = 1024


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetUnavailableError(
            f"tensorflow-datasets is not installed ({err}), so TFDS names cannot be loaded. "
            + LOCAL_FORMATS_HELP
        ) from err
    return tfds


def _read_source(source: Sequence[dict], image_key: str, label_key: str, where: str) -> Split:
    n = len(source)
    images, labels = [], []
    batched = hasattr(source, "__getitems__")
    for start in range(0, n, _READ_CHUNK):
        keys = list(range(start, min(n, start + _READ_CHUNK)))
        records = None
        if batched:
            try:
                records = source.__getitems__(keys)
            except TypeError:
                # Sources without a working batch read (e.g. tfds.testing.mock_data in
                # tfds 4.9.10, whose mocked __getitems__ is unbound) are read one by one.
                batched = False
        if records is None:
            records = [source[k] for k in keys]
        for record in records:
            images.append(np.asarray(record[image_key]))
            labels.append(int(np.asarray(record[label_key])))
    if not images:
        raise DatasetUnavailableError(f"{where}: split is empty")
    stacked = np.stack(images)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    if stacked.dtype != np.uint8 or stacked.ndim != 4:
        raise DatasetUnavailableError(
            f"{where}: feature {image_key!r} is {stacked.dtype} {stacked.shape[1:]}, "
            "expected uint8 images [H, W, C]"
        )
    return Split(stacked, np.asarray(labels, np.int32))


def load_tfds(name: str, data_dir: str | Path | None = None, *, download: bool = True) -> RawDataset:
    """Load the ``train`` and ``test`` splits of a TFDS image-classification dataset.

    Args:
      name: TFDS name, optionally with config/version (``'cifar10'``, ``'mnist:3.*.*'``).
      data_dir: TFDS data folder (None: TFDS default, ``~/tensorflow_datasets``).
      download: whether TFDS may download and prepare the dataset when it is not prepared.

    Raises:
      DatasetUnavailableError: TFDS missing, or the dataset is neither prepared nor
        downloadable (the message suggests ``--data-dir`` with a local format).
      ValueError: ``name`` is not a TFDS dataset.
    """
    tfds = _import_tfds()
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except Exception as err:  # DatasetNotFoundError (a ValueError) and friends
        raise ValueError(
            f"dataset name {name!r} is neither a local format, 'digits', nor a TFDS dataset "
            f"({type(err).__name__}). " + LOCAL_FORMATS_HELP
        ) from err
    info = builder.info
    keys = info.supervised_keys or ("image", "label")
    image_key, label_key = keys[0], keys[1]
    where = f"TFDS dataset {name!r} (data_dir={data_dir or 'default'})"
    try:
        train_src, test_src = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=None if data_dir is None else str(data_dir),
            download=download,
        )
        train = _read_source(train_src, image_key, label_key, f"{where} train")
        test = _read_source(test_src, image_key, label_key, f"{where} test")
    except DatasetUnavailableError:
        raise
    except Exception as err:
        raise DatasetUnavailableError(
            f"{where} is not prepared in a random-access format (array_record) and could not be "
            f"downloaded/prepared here ({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}). "
            + LOCAL_FORMATS_HELP
        ) from err
    feature = info.features[label_key] if label_key in info.features else None
    names = getattr(feature, "names", None)
    num = getattr(feature, "num_classes", None)
    if names:
        class_names = tuple(str(n) for n in names)
    else:
        top = int(max(train.labels.max(), test.labels.max())) + 1
        class_names = tuple(str(k) for k in range(max(num or 0, top)))
    return RawDataset(train=train, test=test, val=None, class_names=class_names, source=f"tfds:{name}")
