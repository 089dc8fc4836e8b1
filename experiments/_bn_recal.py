"""Calibration data of a loaded run, and BatchNorm re-calibration of its pruned weights (an extra
beyond the paper): the training examples they use (:func:`calibration_indices`), the model inputs
of Wanda's activation norms (:func:`calibration_inputs`) and the re-estimated running
statistics."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments._loaded_run import LoadedRun
from sfw_jax.pruning import recalibrate_batch_norm
from sfw_jax.training.datasets import Split
from sfw_jax.training.datasets import TokenSplit, inputs_targets
from sfw_jax.training.steps import preprocess

PyTree = Any


@functools.lru_cache(maxsize=8)
def _train_mode_apply(model: Any) -> Any:
    """``model.apply`` in training mode, one object per (hashable) Flax module, so that the jit
    cache of the statistics pass, keyed by it, is hit at every sparsity level."""
    return functools.partial(model.apply, train=True)


def calibration_indices(n: int, num_batches: int, batch_size: int, seed: int) -> np.ndarray:
    """int ``[nb, bs]``: ``nb * bs`` of ``n`` examples drawn without replacement in a seeded
    order, ``bs = min(batch_size, n)``, ``nb = min(num_batches, n // bs)`` (at least 1; the last
    partial batch is dropped)."""
    order = np.random.default_rng(seed).permutation(n)
    bs = min(batch_size, n)
    nb = max(1, min(num_batches, n // bs))
    return order[: nb * bs].reshape(nb, bs)


def recal_images(split: Split, num_batches: int, batch_size: int, seed: int) -> np.ndarray:
    """``num_batches * batch_size`` training images (fewer if the split is smaller) drawn
    without replacement in a seeded order, as uint8 ``[num_batches, batch_size, H, W, C]``
    (:func:`calibration_indices`)."""
    return split.images[calibration_indices(len(split), num_batches, batch_size, seed)]


def calibration_inputs(run: LoadedRun, num_batches: int, batch_size: int,
                       seed: int) -> list[jax.Array]:
    """Model inputs of ``num_batches`` training batches (:func:`calibration_indices` over the
    run's training examples): normalised images, or the token inputs ``w[:, :-1]`` of byte
    windows."""
    split = run.train_split
    idx = calibration_indices(len(split), num_batches, batch_size, seed)
    if isinstance(split, TokenSplit):
        return [jnp.asarray(inputs_targets(split.tokens[i])[0]) for i in idx]
    mean, std = np.asarray(run.dataset.info.mean), np.asarray(run.dataset.info.std)
    return [preprocess(jnp.asarray(split.images[i]), mean, std) for i in idx]


def recalibrated_batch_stats(run: LoadedRun, params: PyTree, batches: np.ndarray, *,
                             jit: bool = True) -> PyTree:
    """BatchNorm running statistics re-estimated for ``params``.

    :func:`sfw_jax.pruning.recalibrate_batch_norm` (cumulative average of per-batch
    statistics, training-mode forward passes, no gradient step) over ``batches`` (uint8
    ``[B, bs, H, W, C]`` from :func:`recal_images`, normalised like training inputs, no
    augmentation). Returns ``run.batch_stats`` unchanged when the model has no BatchNorm.
    ``jit``: compile the forward pass (once per model and batch shape: the model's
    training-mode apply function is one object per model); ``False`` runs the passes op by op.
    """
    if not jax.tree.leaves(run.batch_stats):
        return run.batch_stats
    if np.ndim(batches) != 5 or len(batches) == 0:
        raise ValueError(f"batches must be a non-empty uint8 array [B, bs, H, W, C], got "
                         f"shape {np.shape(batches)}")
    mean, std = np.asarray(run.dataset.info.mean), np.asarray(run.dataset.info.std)
    inputs = (preprocess(jnp.asarray(b), mean, std) for b in batches)
    out = recalibrate_batch_norm(_train_mode_apply(run.model),
                                 {"params": params, "batch_stats": run.batch_stats}, inputs,
                                 jit=jit)
    return out["batch_stats"]
