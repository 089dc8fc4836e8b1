"""Per-output-row pruning masks: every output unit of a kernel keeps the same fraction of its
inputs.

For an eligible leaf of shape ``(..., out)`` (Flax Dense ``(in, out)``, Conv
``(kh, kw, in, out)``), output unit ``o`` has the ``fan_in = size / out`` entries
``W[..., o]``; exactly ``round(sparsity * fan_in)`` of them are pruned, those of smallest score
``|s|`` (ties: lower flat position within the unit first), so every pruned score of a unit is
``<=`` every kept one and masks nest across sparsities. This is the comparison group of Wanda
(Sun et al., 2023: "per output"; a PyTorch ``Linear`` weight ``(out, in)`` is pruned row by
row, a Flax kernel ``(in, out)`` column by column).

The scores are ``|W|`` for per-row magnitude pruning, or Wanda's ``|W_ij| ||X_j||``
(:func:`sfw_jax.pruning.wanda_scores`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sfw_jax._selectors import Selector, is_kernel, select_leaves
from sfw_jax._tree import PyTree
from sfw_jax.pruning._masks import check_sparsity


def _row_keep(scores: jax.Array, sparsity: float) -> jax.Array:
    """Kept mask of one leaf: per output unit (last axis) the round(s fan_in) smallest pruned."""
    shape = scores.shape
    s = jnp.abs(scores.astype(jnp.float32)).reshape(-1, shape[-1])
    k = round(sparsity * s.shape[0])
    order = jnp.argsort(s, axis=0, stable=True)        # per unit: positions by score, ascending
    rank = jnp.argsort(order, axis=0, stable=True)     # each position's place in that order
    return (rank >= k).reshape(shape)


def row_mask(scores: PyTree, sparsity: float, *, include: Selector = None) -> PyTree:
    """Bool pytree like ``scores`` (True = kept): per-output-row pruning (module docstring).

    Args:
      scores: pytree of arrays, e.g. ``params`` (magnitude) or Wanda scores.
      sparsity: fraction in [0, 1] of each output unit's inputs to prune (a concrete number).
      include: which leaves are pruned: None (:func:`sfw_jax.is_kernel`), a bool pytree like
        ``scores`` or a predicate ``(path, leaf) -> bool``; others are all-kept. A selected leaf
        must have rank >= 2 (ValueError naming it otherwise).
    """
    sparsity = check_sparsity(sparsity)
    chosen = select_leaves(scores, include, is_kernel, "include")

    def leaf_mask(path, leaf, sel):
        if not sel:
            return jnp.ones(jnp.shape(leaf), bool)
        if jnp.ndim(leaf) < 2:
            raise ValueError(f"include must select leaves of rank >= 2 (an output axis and "
                             f"inputs), got leaf {jax.tree_util.keystr(path)} with shape "
                             f"{jnp.shape(leaf)}")
        return _row_keep(jnp.asarray(leaf), sparsity)

    return jax.tree_util.tree_map_with_path(leaf_mask, scores, chosen)
