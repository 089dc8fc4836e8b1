"""The offline default dataset: scikit-learn's bundled UCI optical digits (no download).

1797 grayscale 8x8 images, pixel values 0..16 scaled to uint8 0..255 (``round(v * 255 / 16)``),
10 classes ``'0'..'9'``. The data has no test split, so a fixed stratified 20% test split
(seed 0) is used; it does not depend on the ``seed`` passed to ``load_dataset``.
"""

from __future__ import annotations

import numpy as np

from sfw_jax.training.datasets._types import RawDataset, Split

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_dataset() -> RawDataset:
    """Load sklearn's digits as ``uint8 [N, 8, 8, 1]`` train (1437) / test (360) splits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(np.asarray(bunch.images, np.float64) * (255.0 / 16.0)).astype(np.uint8)
    images = images[..., None]
    labels = np.asarray(bunch.target, np.int32)
    train_idx, test_idx = train_test_split(
        np.arange(labels.shape[0]),
        test_size=TEST_FRACTION,
        stratify=labels,
        random_state=SPLIT_SEED,
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return RawDataset(
        train=Split(images[train_idx], labels[train_idx]),
        test=Split(images[test_idx], labels[test_idx]),
        val=None,
        class_names=tuple(str(k) for k in range(10)),
        source="sklearn:digits",
    )
