"""Selectors: which leaves of a params pytree a constraint, a pruning mask or a statistic covers.

A *selector* is either
  * ``None``: the caller's default predicate,
  * a bool pytree with the same structure as ``params``, or
  * a predicate ``f(path, leaf) -> bool`` where ``path`` is a tuple of strings naming the leaf
    (dict keys, attribute names and sequence indices as strings), e.g.
    ``('params', 'Conv_0', 'kernel')``.

The named *leaf scopes* (:data:`LEAF_SCOPES`) are the two selectors the training and pruning
options name: ``'kernels'`` (:func:`is_kernel`) and ``'all'`` (:func:`every_leaf`).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import numpy as np

from sfw_jax._tree import PyTree, path_names

Predicate = Callable[[tuple, Any], bool]
Selector = Union[None, PyTree, Predicate]

LEAF_SCOPES = ("kernels", "all")
"""Named selectors: ``'kernels'`` = conv and dense kernels (:func:`is_kernel`), ``'all'`` =
every parameter tensor (the reference's scope: biases and BatchNorm scales/offsets too)."""

EMBEDDING_NAME = "embedding"
"""The leaf name of an embedding table (Flax ``nn.Embed``): never a kernel."""


def is_kernel(path: tuple, leaf: Any) -> bool:
    """Conv and dense kernels: the leaves of rank >= 2 (Flax Dense ``(in, out)``, Conv
    ``(kh, kw, in, out)``) except embedding tables (a leaf named ``'embedding'``, Flax
    ``nn.Embed``: a lookup, not a linear map); biases, BatchNorm and LayerNorm scales/offsets
    have rank 1. ``leaf`` may be an array or a ``jax.ShapeDtypeStruct``."""
    if path and path[-1] == EMBEDDING_NAME:
        return False
    return np.ndim(leaf) >= 2


def every_leaf(path: tuple, leaf: Any) -> bool:
    """Every leaf."""
    del path, leaf
    return True


def leaf_scope(scope: str) -> Predicate:
    """The predicate of a named scope in :data:`LEAF_SCOPES`; ValueError for another name."""
    if scope == "kernels":
        return is_kernel
    if scope == "all":
        return every_leaf
    raise ValueError(f"scope must be one of {list(LEAF_SCOPES)}, got {scope!r}")


def select_leaves(params: PyTree, selector: Selector, default: Predicate,
                  argname: str = "where") -> PyTree:
    """Bool pytree like ``params``: which leaves the selector picks (``default`` for None).

    Raises ValueError naming ``argname`` if a bool pytree does not match ``params``.
    """
    if selector is None:
        selector = default
    if callable(selector):
        return jax.tree_util.tree_map_with_path(
            lambda p, x: bool(selector(path_names(p), x)), params)
    p_def = jax.tree.structure(params)
    s_def = jax.tree.structure(selector)
    if p_def != s_def:
        raise ValueError(
            f"{argname} must be a predicate (path, leaf) -> bool or a bool pytree with the "
            f"structure of params; got a tree with structure {s_def}, expected {p_def}")
    return jax.tree.map(bool, selector)
