"""Host-side minibatch iteration over a ``Split`` with seeded per-epoch shuffling."""

from __future__ import annotations

import numbers
from typing import Iterator

import numpy as np

from sfw_jax.training.datasets._types import Split


def num_batches(split_or_size: Split | int, batch_size: int, *, drop_last: bool = True) -> int:
    """Number of batches ``iterate_batches`` yields for a split (or an example count)."""
    n = len(split_or_size) if isinstance(split_or_size, Split) else int(split_or_size)
    _check_batch_size(batch_size)
    if n < 0:
        raise ValueError(f"split size must be >= 0; got {n}")
    return n // batch_size if drop_last else -(-n // batch_size)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")


def epoch_permutation(n: int, rng: np.random.Generator | int | None, epoch: int = 0) -> np.ndarray:
    """Order of the ``n`` examples in one epoch.

    ``rng`` an int: seeded by ``(rng, epoch)`` (``SeedSequence([rng, epoch])``), so every
    (seed, epoch) pair gives its own reproducible order. A ``Generator``: drawn from it (its
    state advances; ``epoch`` is unused). None: an unseeded generator.
    """
    if isinstance(rng, np.random.Generator):
        gen = rng
    elif rng is None:
        gen = np.random.default_rng()
    elif isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        if rng < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0; got rng={rng!r}, epoch={epoch!r}")
        gen = np.random.default_rng([int(rng), int(epoch)])
    else:
        raise ValueError(f"rng must be a numpy Generator, an int seed or None; got {rng!r}")
    return gen.permutation(n)


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    rng: np.random.Generator | int | None,
    shuffle: bool = True,
    drop_last: bool = True,
    epoch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images uint8 [B, H, W, C], labels int32 [B])`` batches of one epoch.

    Args:
      split: the data.
      batch_size: B > 0.
      rng: shuffling randomness, see ``epoch_permutation`` (ignored when not ``shuffle``).
      shuffle: permute the examples (else the stored order).
      drop_last: drop a final batch smaller than B (else yield it).
      epoch: epoch number mixed into an int seed.
    """
    _check_batch_size(batch_size)
    n = len(split)
    order = epoch_permutation(n, rng, epoch) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield split.images[idx], split.labels[idx]
