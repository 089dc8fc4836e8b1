"""Pruning masks (magnitude, random, N:M), applying them, and retraining under them.

Masks are bool pytrees shaped like ``params``; ``True`` = kept, ``False`` = pruned (set to 0).

Exact counts. Of the ``N`` *eligible* entries (entries of leaves picked by ``include``; default:
leaves with ``ndim >= 2``, i.e. conv and dense kernels; every other leaf is all-kept), exactly
``round(sparsity * N)`` are pruned (Python's ``round``, half to even, as in
``torch.nn.utils.prune``):

* ``scope='global'``: one ranking over all eligible entries together (one threshold);
* ``scope='layerwise'``: each eligible leaf ``l`` of size ``N_l`` ranked alone, exactly
  ``round(sparsity * N_l)`` of its entries pruned.

Ranking. Entries are ordered by ``|w|`` ascending; ties are broken by *global flat position*:
leaves in ``jax.tree.leaves(params)`` order, entries in row-major order within a leaf, lower
position pruned first. Pruned are the first ``k`` of this order, so every pruned ``|w|`` is
``<=`` every kept ``|w|``, counts are exact with ties, and masks nest across sparsities (kept at
a higher sparsity implies kept at a lower one, same ``scope``/``include``/``structure``).
Magnitudes are compared in float32 (float64 when a float64 leaf is eligible); NaN ranks above
``+inf`` (kept).

``structure='filter'`` ranks whole output filters/units (the LAST axis: Flax conv kernels are
HWIO ``[kh, kw, in, out]``, dense kernels ``[in, out]``) by their L2 norm over all other axes,
``||W[..., j]||_2``, and prunes exactly ``round(sparsity * F)`` of the ``F`` eligible filters
(globally across leaves, or per leaf with ``'layerwise'``). Note that global filter pruning
compares norms of filters with different fan-in.

N:M masks (:func:`nm_mask`) keep the ``n`` largest ``|w|`` of every group of ``m``
consecutive entries along an axis (2:4 sparsity); they need no global ranking.

Cost: one mask is one search of the segmented selection engine (:mod:`sfw_jax.fw.segtopk`: a
fixed number of counting passes over the eligible entries, jit-compiled, no sort; the global
ranking is one segment holding every eligible leaf, the layerwise one a segment per leaf) and
one compare pass; :func:`masks_for_sweep` sorts the magnitudes once on the host and then needs
one compare pass per sparsity level. Compiled programs are cached per tree structure and leaf
shapes; the sparsity is a traced count, so new sparsities do not recompile.
"""

from __future__ import annotations

import numbers
from functools import partial
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sfw_jax._selectors import Selector, is_kernel, select_leaves
from sfw_jax._tree import PyTree, check_same_structure, path_str
from sfw_jax.fw import segtopk
from sfw_jax.fw._nm import check_groupable, check_nm, nm_eligible, nm_top_mask

RANKING_SCOPES = ("global", "layerwise")
"""``scope`` of the magnitude and random masks: one ranking over all eligible leaves, or one per
leaf."""

STRUCTURES = ("unstructured", "filter")
"""``structure`` of the magnitude and random masks: entries, or whole output filters."""


def check_sparsity(sparsity: Any, argname: str = "sparsity") -> float:
    """``float(sparsity)`` if it is a concrete real number in ``[0, 1]``, else ValueError."""
    if isinstance(sparsity, (bool, np.bool_)):
        raise ValueError(f"{argname} must be a real number in [0, 1], got {sparsity!r}")
    try:
        value = float(sparsity)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{argname} must be a concrete real number in [0, 1], got {sparsity!r}") from err
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{argname} must be in [0, 1], got {sparsity!r}")
    return value


def _check_choice(value: Any, allowed: tuple[str, ...], argname: str) -> None:
    if value not in allowed:
        raise ValueError(f"{argname} must be one of {allowed}, got {value!r}")


def _check_ranking(sparsity: Any, scope: str, structure: str) -> float:
    """The checked ``sparsity`` of a magnitude / random mask (and its ``scope``, ``structure``)."""
    sparsity = check_sparsity(sparsity)
    _check_choice(scope, RANKING_SCOPES, "scope")
    _check_choice(structure, STRUCTURES, "structure")
    return sparsity


def _eligible(params: PyTree, include: Selector, structure: str):
    """(leaves, treedef, indices of eligible leaves) with the filter-structure check."""
    leaves, treedef = jax.tree.flatten(params)
    chosen = treedef.flatten_up_to(select_leaves(params, include, is_kernel, "include"))
    idx = [i for i, c in enumerate(chosen) if c]
    if structure == "filter":
        for i in idx:
            if jnp.ndim(leaves[i]) == 0:
                raise ValueError(
                    "include must not select 0-d leaves with structure='filter' (a filter is "
                    f"a slice of the last axis); got leaf {i} with shape ()")
    return leaves, treedef, idx


def _n_units(leaf: Any, structure: str) -> int:
    """Number of rankable units of a leaf: entries, or output filters (last axis)."""
    shape = jnp.shape(leaf)
    return int(np.prod(shape)) if structure == "unstructured" else int(shape[-1])


def _n_prune(sparsity: float, n: int) -> int:
    return round(sparsity * n)


def _score_dtype(leaves: Sequence[Any]):
    wide = any(jnp.asarray(x).dtype in (jnp.float64, jnp.complex128) for x in leaves)
    return jnp.float64 if wide and jax.config.jax_enable_x64 else jnp.float32


def _scores(leaf: jax.Array, structure: str, dtype) -> jax.Array:
    """1-D scores: ``|w|`` flattened (unstructured) or per-filter L2 norms over axes [:-1]."""
    x = jnp.abs(jnp.asarray(leaf)).astype(dtype)
    if structure == "unstructured":
        return x.reshape(-1)
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(x.ndim - 1))))


def _ks(sparsity: float, sizes: Sequence[int], scope: str) -> list[int]:
    """Counts to prune: one for the global group, or one per eligible leaf."""
    if scope == "global":
        return [_n_prune(sparsity, sum(sizes))]
    return [_n_prune(sparsity, n) for n in sizes]


def _segments(n_leaves: int, scope: str) -> tuple[int, ...]:
    """Ranking segment of each eligible leaf: all in segment 0 (global) or one each."""
    return (0,) * n_leaves if scope == "global" else tuple(range(n_leaves))


def _ranks(scores: jax.Array) -> jax.Array:
    """Integer ranks ordering non-negative float ``scores`` (flat) exactly like the floats: the
    bit patterns as int32 (float64: int64). ``+0.0`` ranks lowest, NaN above ``+inf``;
    precondition: no negative scores (``-0.0`` must not occur)."""
    if scores.dtype == jnp.float64:
        return jax.lax.bitcast_convert_type(scores, jnp.int64)
    return jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.int32)


def _expand(pruned: jax.Array, shape: tuple[int, ...], structure: str) -> jax.Array:
    """Kept mask of ``shape`` from pruned flags over its entries or its last-axis filters."""
    kept = ~pruned
    if structure == "unstructured":
        return kept.reshape(shape)
    return jnp.broadcast_to(kept, shape)


@partial(jax.jit, static_argnames=("structure", "dtype"))
def _magnitude_keys(leaves: list[jax.Array], structure: str, dtype) -> list[jax.Array]:
    """The engine's keys of the scores: the lowest score has the highest key."""
    return [segtopk.descending_keys(_ranks(_scores(x, structure, dtype))) for x in leaves]


def _kept(keys: list[jax.Array], t: jax.Array, cut: jax.Array, shapes: tuple, scope: str,
          structure: str) -> list[jax.Array]:
    """Kept masks from each segment's selection ``(t, cut)`` of the pruned entries."""
    lay = segtopk.make_layout([c.size for c in keys], _segments(len(keys), scope))
    return [_expand(segtopk.selected(c, t[s], cut[s], off), shape, structure)
            for c, s, off, shape in zip(keys, lay.segment_of, lay.offsets, shapes)]


@partial(jax.jit, static_argnames=("shapes", "scope", "structure"))
def _select(keys: list[jax.Array], ks: jax.Array, shapes: tuple, scope: str,
            structure: str) -> list[jax.Array]:
    """Kept masks for counts ``ks`` pruned per segment (one search of the engine)."""
    lay = segtopk.make_layout([c.size for c in keys], _segments(len(keys), scope))
    t, cut = segtopk.select(keys, ks, lay)
    return _kept(keys, t, cut, shapes, scope, structure)


@partial(jax.jit, static_argnames=("shapes", "scope", "structure"))
def _select_at(keys: list[jax.Array], t: jax.Array, cut: jax.Array, shapes: tuple, scope: str,
               structure: str) -> list[jax.Array]:
    """Kept masks for known per-segment selections (from a host sort)."""
    return _kept(keys, t, cut, shapes, scope, structure)


def _assemble(leaves: list, treedef, idx: list[int], kept: list[jax.Array]) -> PyTree:
    out = [jnp.ones(jnp.shape(x), bool) for x in leaves]
    for i, m in zip(idx, kept):
        out[i] = m
    return jax.tree.unflatten(treedef, out)


def _mask_from_keys(leaves, treedef, idx, keys, sparsity, scope, structure) -> PyTree:
    if not idx:
        return _assemble(leaves, treedef, idx, [])
    ks = jnp.asarray(_ks(sparsity, [c.size for c in keys], scope), jnp.int32)
    shapes = tuple(tuple(jnp.shape(leaves[i])) for i in idx)
    return _assemble(leaves, treedef, idx, _select(keys, ks, shapes, scope, structure))


def magnitude_mask(params: PyTree, sparsity: float, *, scope: str = "global",
                   include: Selector = None, structure: str = "unstructured") -> PyTree:
    """Bool pytree like ``params`` (True = kept) pruning the smallest-magnitude entries.

    Args:
      params: pytree of arrays (e.g. a Flax ``variables['params']`` dict).
      sparsity: fraction in ``[0, 1]`` of the eligible entries (or filters) to prune; exactly
        ``round(sparsity * N)`` are pruned (per leaf with ``scope='layerwise'``). Must be a
        concrete Python number (static under ``jax.jit``).
      scope: ``'global'`` (one ranking over all eligible leaves) or ``'layerwise'``.
      include: which leaves may be pruned: None (:func:`sfw_jax.is_kernel`: the leaves of rank
        >= 2), a bool pytree like ``params``, or a predicate ``(path, leaf) -> bool``
        (:func:`sfw_jax.every_leaf` gives the reference's prune-every-tensor scope).
        Other leaves are all-kept.
      structure: ``'unstructured'`` (entries by ``|w|``) or ``'filter'`` (output filters,
        the last axis, by L2 norm; the mask is constant along all other axes).

    Ordering, tie-breaking and nesting are described in the module docstring.
    """
    sparsity = _check_ranking(sparsity, scope, structure)
    leaves, treedef, idx = _eligible(params, include, structure)
    elig = [jnp.asarray(leaves[i]) for i in idx]
    keys = _magnitude_keys(elig, structure, _score_dtype(elig))
    return _mask_from_keys(leaves, treedef, idx, keys, sparsity, scope, structure)


def nm_mask(params: PyTree, n: int, m: int, *, axis: int = -2,
            include: Selector = None) -> PyTree:
    """Bool pytree like ``params`` (True = kept): N:M magnitude pruning.

    In every group of ``m`` consecutive entries along ``axis`` of each eligible leaf, exactly the
    ``n`` entries of largest ``|w|`` are kept (ties: lower index along ``axis`` first; the
    ranking of :func:`sfw_jax.fw._nm.nm_top_mask`, the same as the N:M polytope's LMO, so a
    vertex of :class:`sfw_jax.NMSparsePolytope` is kept whole). Eligible leaves have ``1 - n/m`` of their
    entries pruned; other leaves are all-kept. Pure and jit-able (``include`` static).

    Args:
      params: pytree of arrays.
      n, m: ints with 1 <= n <= m (2:4 is ``n=2, m=4``).
      axis: the grouping axis (default -2, the input features of Flax Dense ``(in, out)`` and
        Conv ``(kh, kw, in, out)`` kernels, the axis 2:4 sparse tensor cores group along).
      include: which leaves are pruned: None (the kernels, :func:`sfw_jax.is_kernel`, whose size
        along ``axis`` is a multiple of m, :func:`sfw_jax.fw._nm.nm_eligible`), a bool pytree
        like ``params``, or a
        predicate ``(path, leaf) -> bool``; a leaf it selects must have ``axis`` with a size
        that is a multiple of m (ValueError naming the leaf otherwise).
    """
    n, m = check_nm(n, m)
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"axis must be an int, got {axis!r}")
    chosen = select_leaves(params, include, lambda path, leaf: (
        is_kernel(path, leaf) and nm_eligible(jnp.shape(leaf), m, axis)), "include")

    def leaf_mask(path, leaf, sel):
        if not sel:
            return jnp.ones(jnp.shape(leaf), bool)
        check_groupable(jnp.shape(leaf), m, axis, f"params leaf {path_str(path)!r}")
        return nm_top_mask(jnp.asarray(leaf), n, m, axis=axis)

    return jax.tree_util.tree_map_with_path(leaf_mask, params, chosen)


def random_mask(key: jax.Array, params: PyTree, sparsity: float, *, scope: str = "global",
                include: Selector = None, structure: str = "unstructured") -> PyTree:
    """Random-pruning baseline with the same exact counts as :func:`magnitude_mask`.

    Each eligible entry (or filter) gets an independent uniform 31-bit key from
    ``jax.random.bits(jax.random.fold_in(key, i))`` (``i`` = position among eligible leaves);
    the ``round(sparsity * N)`` smallest keys are pruned (ties by position, which makes the
    pruned set uniform up to the chance of equal 31-bit keys at the threshold). Masks for one
    ``key`` nest across sparsities.
    """
    sparsity = _check_ranking(sparsity, scope, structure)
    leaves, treedef, idx = _eligible(params, include, structure)
    keys = [
        segtopk.descending_keys(
            (jax.random.bits(jax.random.fold_in(key, j), (_n_units(leaves[i], structure),),
                             jnp.uint32) >> 1).astype(jnp.int32))
        for j, i in enumerate(idx)
    ]
    return _mask_from_keys(leaves, treedef, idx, keys, sparsity, scope, structure)


def masks_for_sweep(params: PyTree, sparsities: Sequence[float], *, scope: str = "global",
                    include: Selector = None, structure: str = "unstructured") -> list[PyTree]:
    """``[magnitude_mask(params, s, ...) for s in sparsities]`` from one sort of the magnitudes.

    The keys are sorted once on the host (per leaf with ``scope='layerwise'``), giving every
    level's threshold; each mask then costs two compare passes (plus a cumsum only when the
    threshold is tied). Equal to :func:`magnitude_mask` level by level, so the masks nest.
    Eager only (not for use under ``jax.jit``).
    """
    levels = [check_sparsity(s, f"sparsities[{j}]") for j, s in enumerate(sparsities)]
    _check_choice(scope, RANKING_SCOPES, "scope")
    _check_choice(structure, STRUCTURES, "structure")
    leaves, treedef, idx = _eligible(params, include, structure)
    if not idx:
        return [_assemble(leaves, treedef, idx, []) for _ in levels]
    elig = [jnp.asarray(leaves[i]) for i in idx]
    keys = _magnitude_keys(elig, structure, _score_dtype(elig))
    segments = _segments(len(keys), scope)
    ks = np.array([_ks(s, [c.size for c in keys], scope) for s in levels],
                  np.int64).reshape(len(levels), max(segments) + 1)
    t, cut = segtopk.host_select([np.asarray(c) for c in keys], segments, ks)
    shapes = tuple(tuple(jnp.shape(leaves[i])) for i in idx)
    return [_assemble(leaves, treedef, idx,
                      _select_at(keys, jnp.asarray(t[j]), jnp.asarray(cut[j], jnp.int32),
                                 shapes, scope, structure))
            for j in range(len(levels))]


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """``where(mask, params, 0)`` leafwise: pruned entries set to exact zeros (dtype kept)."""
    check_same_structure(mask, params, "mask")
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


class KeepMaskedState(NamedTuple):
    """mask: the bool pytree like params (True = kept) that :func:`keep_masked` applies."""

    mask: PyTree


def keep_masked(mask: PyTree) -> optax.GradientTransformationExtraArgs:
    """Optax transformation zeroing updates at pruned entries: ``u <- where(mask, u, 0)``.

    Put it LAST in an ``optax.chain`` (after momentum, weight decay, learning rate) so the
    final update of every pruned entry is exactly 0: parameters that start at 0 (after
    :func:`apply_mask`) stay exactly 0 through retraining with any optimizer, while the
    optimizer's own state (e.g. momentum) is left as it computes it.

    The mask lives in the state (:class:`KeepMaskedState`), so under ``jax.jit`` it is an
    argument, not a constant: one compiled step serves every mask of the same shapes (e.g. the
    levels of a sparsity sweep; the update reads ``state.mask``, so a step built with one
    ``keep_masked(...)`` applies whichever mask its state holds).
    """

    def init_fn(params):
        check_same_structure(mask, params, "mask")
        return KeepMaskedState(jax.tree.map(lambda m: jnp.asarray(m, bool), mask))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        check_same_structure(state.mask, updates, "mask")
        return apply_mask(updates, state.mask), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
