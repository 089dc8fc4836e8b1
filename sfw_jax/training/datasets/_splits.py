"""Validation carve-out and per-channel statistics for ``Split`` objects."""

from __future__ import annotations

import math
import numbers

import numpy as np

from sfw_jax.training.datasets._types import Split


def check_val_fraction(val_fraction: float) -> float:
    """Return ``val_fraction`` as a float after checking ``0 <= val_fraction < 1``.

    Raises:
      ValueError: naming ``val_fraction`` and the bad value.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise ValueError(
            f"val_fraction must be a real number in [0, 1); got {val_fraction!r} "
            f"({type(val_fraction).__name__})"
        )
    value = float(val_fraction)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    return value


def stratified_val_indices(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Indices (sorted, int64) of a seeded, class-stratified validation subset of ``labels``.

    The subset has ``round(val_fraction * N)`` examples (at least 1 when ``val_fraction > 0``),
    distributed over classes proportionally to their counts (largest remainder); which
    examples of a class are chosen is a seeded permutation. Same ``(labels, val_fraction,
    seed)`` -> same indices.

    Args:
      labels: int array ``[N]``.
      val_fraction: in ``[0, 1)``.
      seed: seed of ``numpy.random.default_rng``.

    Raises:
      ValueError: if the carve-out would leave the train split empty.
    """
    val_fraction = check_val_fraction(val_fraction)
    n = int(labels.shape[0])
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    if n_val == 0:
        return np.zeros((0,), np.int64)
    if n_val >= n:
        raise ValueError(
            f"val_fraction={val_fraction} of a train split with {n} examples leaves no "
            "training examples; use a smaller val_fraction"
        )
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_val / n)
    per_class = np.floor(exact).astype(np.int64)
    remainder = n_val - int(per_class.sum())
    if remainder > 0:
        # Largest fractional part first; ties broken by class order (stable sort).
        order = np.argsort(-(exact - per_class), kind="stable")
        per_class[order[:remainder]] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for cls, k in zip(classes, per_class):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen))


def carve_validation(train: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Split ``train`` into ``(new_train, val)`` with ``stratified_val_indices``.

    Both keep the original example order. ``val_fraction == 0`` gives an empty
    ``val`` with images of shape ``[0, H, W, C]``.
    """
    val_idx = stratified_val_indices(train.labels, val_fraction, seed)
    keep = np.ones(len(train), dtype=bool)
    keep[val_idx] = False
    return train.take(np.flatnonzero(keep)), train.take(val_idx)


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``uint8 [N, H, W, C]`` images in [0, 1] scale.

    Computed exactly with integer sums over chunks of ``chunk`` images (squares via a uint16
    lookup table, per-chunk sums in uint32, which cannot overflow for ``chunk <= 66000``).

    Returns:
      ``(mean, std)``, both ``float32 [C]``.

    Raises:
      ValueError: if there are no images.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"cannot compute mean/std of an empty or non-[N,H,W,C] image array (shape {images.shape})"
        )
    squares = (np.arange(256, dtype=np.uint32) ** 2).astype(np.uint16)
    total = np.zeros(images.shape[1:], np.int64)
    total_sq = np.zeros(images.shape[1:], np.int64)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk]
        total += block.sum(axis=0, dtype=np.uint32)
        total_sq += np.take(squares, block).sum(axis=0, dtype=np.uint32)
    c = images.shape[-1]
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total.reshape(-1, c).sum(axis=0) / count
    var = np.maximum(total_sq.reshape(-1, c).sum(axis=0) / count - mean**2, 0.0)
    return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)
