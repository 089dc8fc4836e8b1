"""N:M structured sparsity: the N:M polytope's LMO, gauge, projection, and the per-group top-n.

Groups. For an array ``x`` and an ``axis`` whose size is a multiple of ``m``, a *group* is a run
of ``m`` consecutive entries along ``axis`` (all other indices fixed): the array is viewed as
``shape[:axis] + (G, m) + shape[axis+1:]`` with ``G = shape[axis] / m``. ``axis=-2`` is the
input-feature axis of Flax kernels, Dense ``(in, out)`` and Conv ``(kh, kw, in, out)``: the
reduction axis of the matrix product, along which 2:4 sparse tensor cores want their groups.

The set. With r > 0 and 1 <= n <= m, the N:M polytope is the product over groups g of the
K-sparse polytopes with K = n,

    P_{n:m}(r) = { x : ||x_g||_inf <= r and ||x_g||_1 <= n r for every group g },

whose vertices are exactly the N:M-sparse arrays with entries in {0, +-r}: n entries of size r in
every group. With ``size`` entries it has ``size / m`` groups, its vertices have
K = n size / m nonzeros and its L2 diameter is 2 r sqrt(K).

LMO. argmin_{v in P} <v, g> splits over groups: in each group, v_i = -r sign(g_i) on the n entries
of largest |g_i| (ties: lower index along ``axis`` first), 0 elsewhere; <v, g> = -r times the sum,
over groups, of the n largest |g_i| of the group. A zero g_i counts as positive (v_i = -r), so
g = 0 still gives a vertex with exactly n nonzeros per group. (The K-sparse LMO of
:mod:`sfw_jax.fw._lmo` counts a zero as non-positive, as the reference's L_inf oracle; either choice
is optimal, since a zero g_i contributes nothing to <v, g>.)

Per-group top-n without a sort. Every entry's rank in its group is counted by ``m`` elementwise
comparisons of integer magnitude keys (the bits of |x| as float32, which order exactly like the
magnitudes, NaN above inf): rank_i = #{j : key_j > key_i, or key_j = key_i and j < i}, kept iff
rank_i < n. The group axis is split in place (a reshape, no transpose); the work is O(m) per entry,
unrolled at trace time, data-independent and free of control flow, i.e. elementwise work that XLA
can fuse with its producers and consumers (on XLA:CPU the whole LMO of a conv kernel compiles to
one loop fusion). Meant for small ``m`` (2:4, 1:4, 4:8, ...).
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from sfw_jax.fw._checks import Scalar, acc_dtype, check_positive_finite
from sfw_jax.fw._projections import project_k_sparse


def check_nm(n: Any, m: Any) -> tuple[int, int]:
    """``(n, m)`` as ints if ``m >= 1`` and ``1 <= n <= m``; else ValueError naming the value."""
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or int(m) < 1:
        raise ValueError(f"m must be an int >= 1 (the group size), got {m!r}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= int(n) <= int(m):
        raise ValueError(f"n must be an int in [1, m={int(m)}] (nonzeros per group), got {n!r}")
    return int(n), int(m)


def parse_nm(value: Any, name: str = "nm") -> tuple[int, int]:
    """``(n, m)`` of an N:M pattern string such as ``"2:4"`` (ints with 1 <= n <= m), the
    spelling of configs and command lines; ValueError naming ``name`` and the value otherwise."""
    parts = value.split(":") if isinstance(value, str) else []
    try:
        n, m = (int(x) for x in parts)
    except ValueError:
        n = m = 0
    if len(parts) != 2 or not 1 <= n <= m:
        raise ValueError(f"{name} must be an N:M pattern 'N:M' with integers 1 <= N <= M, e.g. "
                         f"'2:4', got {value!r}")
    return n, m


def format_nm(n: int, m: int) -> str:
    """The pattern string ``"N:M"`` of ``(n, m)``."""
    return f"{n}:{m}"


def normalize_axis(shape: Sequence[int], axis: Any) -> int:
    """``axis`` as a non-negative index into ``shape``; ValueError if it is not an int in
    ``[-ndim, ndim)`` (a 1-D array has no axis -2, the default: pass ``axis=0``)."""
    ndim = len(shape)
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"axis must be an int, got {axis!r}")
    if not -ndim <= int(axis) < ndim:
        hint = (" (the default axis=-2, the input-feature axis of Flax kernels, needs an array of"
                " rank >= 2; for a 1-D array pass axis=0)" if int(axis) == -2 and ndim == 1
                else "")
        raise ValueError(f"axis={axis!r} is out of range for an array of shape {tuple(shape)} "
                         f"(rank {ndim}){hint}")
    return int(axis) % ndim


def check_groupable(shape: Sequence[int], m: int, axis: Any, what: str = "g") -> int:
    """The normalized ``axis`` of ``shape`` if its size is a positive multiple of ``m``;
    ValueError naming ``what``, the shape and the size otherwise."""
    ax = normalize_axis(shape, axis)
    size = shape[ax]
    if size == 0 or size % m:
        raise ValueError(f"the size of axis {axis} of {what} (shape {tuple(shape)}) must be a "
                         f"positive multiple of m={m}, got {size}")
    return ax


def nm_eligible(shape: Sequence[int], m: int, axis: int = -2) -> bool:
    """Whether a tensor of ``shape`` gets N:M groups by default: rank >= 2 and a size along
    ``axis`` that is a positive multiple of ``m`` (conv/dense kernels; not biases, BatchNorm
    parameters, or a first conv with 3 input channels for m = 4)."""
    shape = tuple(shape)
    if len(shape) < 2 or not -len(shape) <= axis < len(shape):
        return False
    size = shape[axis]
    return size > 0 and size % m == 0


def _grouped_shape(shape: Sequence[int], m: int, ax: int) -> tuple[int, ...]:
    """``shape`` with axis ``ax`` split into ``(G, m)`` (the within-group index at ``ax + 1``)."""
    return (*shape[:ax], shape[ax] // m, m, *shape[ax + 1:])


def _magnitude_keys(x: jax.Array) -> jax.Array:
    """Integer keys ordering |x| exactly (bits of |x| as float32, or float64 -> int64)."""
    a = jnp.abs(x)
    if a.dtype == jnp.float64:
        return jax.lax.bitcast_convert_type(a, jnp.int64)
    return jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.int32)


def nm_top_mask(x: jax.Array, n: int, m: int, *, axis: int = -2) -> jax.Array:
    """Bool array like ``x``: True on the ``n`` entries of largest |x_i| in every group of ``m``
    consecutive entries along ``axis`` (ties: lower index first; see the module docstring).

    Exactly ``n`` True per group for any input (zeros, ties, inf, NaN). ``n``, ``m``, ``axis``
    are static; ValueError (naming the value) for bad ones or an axis size not a multiple of m.
    """
    n, m = check_nm(n, m)
    x = jnp.asarray(x)
    ax = check_groupable(x.shape, m, axis, "x")
    if n == m:
        return jnp.ones(x.shape, bool)
    keys = _magnitude_keys(x).reshape(_grouped_shape(x.shape, m, ax))
    pos = jax.lax.broadcasted_iota(jnp.int32, keys.shape, ax + 1)   # index within the group
    rank = jnp.zeros(keys.shape, jnp.int32)
    for j in range(m):                                               # m static slices
        kj = jax.lax.slice_in_dim(keys, j, j + 1, axis=ax + 1)
        # entry j ranks before entry i: larger key, or an equal key at a lower index
        rank = rank + jnp.where(pos > j, kj >= keys, kj > keys).astype(jnp.int32)
    return (rank < n).reshape(x.shape)


def nm_sparse_lmo(g: jax.Array, n: int, m: int, radius: Scalar, *, axis: int = -2) -> jax.Array:
    """Vertex of the N:M polytope P_{n:m}(r) minimizing <v, g> (see the module docstring).

    In every group of ``m`` consecutive entries along ``axis``: v_i = -r sign(g_i) on the ``n``
    entries of largest |g_i| (ties: lower index first; g_i = 0 -> v_i = -r), 0 elsewhere.
    Optimal value: -r * sum over groups of the n largest |g_i| of the group.

    Args:
      g: direction, any shape of rank >= 1 and float dtype; ``g.shape[axis]`` a multiple of m.
      n, m: static ints, 1 <= n <= m.
      radius: r > 0 (a number or a traced scalar).
      axis: the grouping axis (default -2: the input features of a Flax Dense/Conv kernel).
    Returns:
      v with the shape and dtype of g.
    """
    n, m = check_nm(n, m)
    check_positive_finite(radius, "radius")
    g = jnp.asarray(g)
    check_groupable(g.shape, m, axis)
    # the selection is piecewise constant in g: no gradient flows through it
    mask = nm_top_mask(jax.lax.stop_gradient(g), n, m, axis=axis)
    return nm_vertex(g, mask, radius)


def nm_vertex(g: jax.Array, mask: jax.Array, radius: Scalar) -> jax.Array:
    """The vertex on a given support: ``-r sign(g)`` where ``mask`` with sign(0) = +1, 0
    elsewhere (shape and dtype of ``g``)."""
    r = jnp.asarray(radius, g.dtype)
    return jnp.where(mask, jnp.where(g >= 0, -r, r), jnp.zeros((), g.dtype))


def _group_abs(x: jax.Array, m: int, ax: int) -> jax.Array:
    """|x| in the accumulation dtype, grouped: shape ``_grouped_shape``."""
    acc = acc_dtype(x)
    return jnp.abs(x.astype(acc)).reshape(_grouped_shape(x.shape, m, ax))


def nm_group_gauges(x: jax.Array, n: int, m: int, *, axis: int = -2) -> jax.Array:
    """Per-group gauge max(||x_g||_inf, ||x_g||_1 / n), in the grouped shape with the
    within-group axis kept (size 1), float32 (float64 for float64 x)."""
    n, m = check_nm(n, m)
    ax = check_groupable(jnp.shape(x), m, axis, "x")
    a = _group_abs(jnp.asarray(x), m, ax)
    return jnp.maximum(jnp.max(a, axis=ax + 1, keepdims=True),
                       jnp.sum(a, axis=ax + 1, keepdims=True) / n)


def nm_sparse_gauge(x: jax.Array, n: int, m: int, *, axis: int = -2) -> jax.Array:
    """Gauge of P_{n:m}(1): max over groups of max(||x_g||_inf, ||x_g||_1 / n); x is in
    P_{n:m}(r) iff this is <= r. Scalar, float32 (float64 for float64 x)."""
    return jnp.max(nm_group_gauges(x, n, m, axis=axis))


def shift_inside_nm(x: jax.Array, n: int, m: int, radius: float, *, axis: int = -2) -> jax.Array:
    """Each group scaled into its own K-sparse polytope: x_g * r / gauge(x_g) where the group's
    gauge max(||x_g||_inf, ||x_g||_1 / n) exceeds r, x_g unchanged elsewhere (shape and dtype of
    x). Groups already inside are untouched, so the result is in P_{n:m}(r)."""
    gauges = nm_group_gauges(x, n, m, axis=axis)
    ax = normalize_axis(jnp.shape(x), axis)
    scale = jnp.where(gauges > radius, radius / jnp.where(gauges > 0, gauges, 1), 1)
    x = jnp.asarray(x)
    grouped = x.astype(gauges.dtype).reshape(_grouped_shape(x.shape, m, ax))
    return (grouped * scale).reshape(x.shape).astype(x.dtype)


def project_nm_sparse(x: jax.Array, n: int, m: int, radius: Scalar, *,
                      axis: int = -2) -> jax.Array:
    """Euclidean projection onto P_{n:m}(r): the set is a product over groups, so the projection
    is, group by group, the K-sparse polytope's exact projection with K = n
    (:func:`sfw_jax.fw._projections.project_k_sparse`: sign(x) clip(|x| - lam_g, 0, r) with one lam_g >= 0
    per group). One sort of m entries per group. Shape and dtype of x."""
    n, m = check_nm(n, m)
    x = jnp.asarray(x)
    ax = check_groupable(x.shape, m, axis, "x")
    grouped = x.reshape(_grouped_shape(x.shape, m, ax))
    rows = jnp.moveaxis(grouped, ax + 1, -1)                    # (..., m): one group per row
    flat = rows.reshape(-1, m)
    out = jax.vmap(lambda row: project_k_sparse(row, n, radius))(flat)
    out = jnp.moveaxis(out.reshape(rows.shape), -1, ax + 1)
    return out.reshape(x.shape)
