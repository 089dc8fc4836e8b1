"""Wanda: pruning by weights and activations (Sun et al., 2023), for Flax Dense layers.

For a Dense layer ``y = x W + b`` with kernel ``W`` of shape ``(in, out)`` and calibration
inputs ``X`` (all the rows of ``x`` that reach the layer, over every position of every
calibration batch), input feature ``j`` has the norm ``||X_j||_2 = sqrt(sum_rows x_j^2)`` and
weight ``W_ij`` (input ``j``, output ``i``) the score

    S_ij = |W_ij| * ||X_j||_2 .

Wanda prunes per output unit (:mod:`sfw_jax.pruning._rows`: each output keeps the same fraction
of its inputs, the smallest scores pruned), or N:M along the input dimension (in every group of
M consecutive inputs of an output, the N largest scores kept; :func:`sfw_jax.nm_mask` on the
scores). No retraining, no weight update.

The norms come from one forward pass per calibration batch of the dense model, each Dense
layer's input captured with ``flax.linen.intercept_methods`` (the paper's code feeds each block
the outputs of the blocks pruned before it; here every layer sees the dense model's
activations, the simpler one-shot reading of the same criterion).
"""

from __future__ import annotations

from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sfw_jax._selectors import Selector, is_kernel, select_leaves
from sfw_jax._tree import PyTree, path_names
from sfw_jax.fw._nm import check_nm
from sfw_jax.pruning._masks import nm_mask
from sfw_jax.pruning._rows import row_mask

_KERNEL_NAME = "kernel"


def _input_square_sums(model: nn.Module, variables: dict, x: jax.Array) -> dict:
    """``{module path: float32 [in]}``: sum of squares of each Dense layer's input features over
    all rows of the batch ``x``."""
    sums: dict[tuple[str, ...], jax.Array] = {}

    def capture(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            inp = jnp.asarray(args[0], jnp.float32)
            sq = jnp.sum(jnp.square(inp).reshape(-1, inp.shape[-1]), axis=0)
            path = tuple(context.module.path)
            sums[path] = sums[path] + sq if path in sums else sq
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
        model.apply(variables, x, train=False)
    return sums


def input_norms(model: nn.Module, variables: dict, batches: Iterable[Any]) -> PyTree:
    """Wanda's activation norms of every Dense layer of ``model`` over ``batches``.

    Args:
      model: a Flax linen module called as ``model.apply(variables, x, train=False)``.
      variables: its variables (``{'params': ..., 'batch_stats': ...}``).
      batches: model inputs (e.g. token ids ``[B, T]``); each compiles once per shape.

    Returns a pytree like ``variables['params']``: at the kernel ``(in, out)`` of each Dense
    layer the model called, ``||X_j||_2`` as float32 ``(in, 1)`` (broadcasts against the
    kernel), at every other leaf a float32 scalar 1. ValueError when ``batches`` is empty.
    """
    collect = jax.jit(lambda v, x: _input_square_sums(model, v, x))
    totals: dict[tuple[str, ...], np.ndarray] = {}
    for x in batches:
        for path, sq in jax.device_get(collect(variables, x)).items():
            totals[path] = totals.get(path, 0.0) + np.asarray(sq, np.float64)
    if not totals:
        raise ValueError("batches must hold at least one batch that reaches a Dense layer, "
                         "got none")

    def leaf(path, x):
        names = path_names(path)
        sq = totals.get(names[:-1]) if names and names[-1] == _KERNEL_NAME else None
        if sq is None or np.ndim(x) != 2:
            return jnp.ones((), jnp.float32)
        return jnp.asarray(np.sqrt(sq), jnp.float32)[:, None]

    return jax.tree_util.tree_map_with_path(leaf, variables["params"])


def wanda_scores(params: PyTree, norms: PyTree) -> PyTree:
    """``|W| * ||X||`` leafwise (:func:`input_norms`): Wanda's ``S_ij`` at the Dense kernels,
    ``|W|`` elsewhere."""
    return jax.tree.map(lambda w, n: jnp.abs(w).astype(jnp.float32) * n, params, norms)


def _has_norms(params: PyTree, norms: PyTree) -> PyTree:
    """Bool pytree: the kernels (:func:`sfw_jax.is_kernel`) for which ``norms`` hold
    activation norms, Wanda's default scope."""
    kernels = select_leaves(params, None, is_kernel)
    return jax.tree.map(lambda k, n: bool(k) and np.ndim(n) == 2, kernels, norms)


def wanda_mask(params: PyTree, norms: PyTree, sparsity: float, *,
               include: Selector = None) -> PyTree:
    """Bool pytree like ``params`` (True = kept): Wanda, unstructured per output unit; exactly
    ``round(sparsity * in)`` inputs pruned per output of every selected kernel. ``include``:
    None (:func:`_has_norms`), a bool pytree or a predicate (:func:`row_mask`)."""
    chosen = _has_norms(params, norms) if include is None else include
    return row_mask(wanda_scores(params, norms), sparsity, include=chosen)


def wanda_nm_mask(params: PyTree, norms: PyTree, n: int, m: int, *,
                  include: Selector = None) -> PyTree:
    """Bool pytree like ``params`` (True = kept): Wanda N:M, in every group of ``m``
    consecutive inputs (axis -2) of each output the ``n`` largest scores kept. ``include``:
    None (:func:`_has_norms`, the kernels whose input size ``m`` divides), a bool pytree or a
    predicate (:func:`sfw_jax.nm_mask`)."""
    n, m = check_nm(n, m)
    if include is None:
        include = jax.tree.map(lambda c, w: bool(c) and jnp.shape(w)[-2] % m == 0,
                               _has_norms(params, norms), params)
    return nm_mask(wanda_scores(params, norms), n, m, include=include)
