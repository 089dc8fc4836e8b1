"""Linear minimization oracles (LMOs) as pure jit-able functions.

For a compact convex set C and a direction g, the LMO returns a minimizer of the linear function

    LMO_C(g) = argmin_{v in C} <v, g>.

All functions take arrays of any shape and float dtype (float32, bfloat16, float16, float64); the
output has the shape and dtype of the input. ``k`` and ``p`` are static Python numbers; ``radius``
may be a Python number or a (traced) scalar array. Reductions (norms) are computed in float32 (or
float64 for float64 inputs) to stay accurate in low precision. The gauges of the sets are in
:mod:`sfw_jax.fw._gauges`, their Euclidean projections in :mod:`sfw_jax.fw._projections`.

Sign convention for zero entries: where a vertex needs a sign for g_i = 0 we take g_i as
non-positive, i.e. ``v_i = +r`` (the reference's L_inf oracle does the same), so the oracle still
returns a vertex for g = 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sfw_jax.fw._checks import Scalar, acc_dtype, check_k, check_p, check_positive_finite
from sfw_jax.fw.topk import top_k_mask


def dual_order(p: float) -> float:
    """Hoelder conjugate q of p: 1/p + 1/q = 1 (q = inf for p = 1, q = 1 for p = inf)."""
    p = check_p(p)
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1.0)


def _neg_sign(g: jax.Array) -> jax.Array:
    """-sign(g) with the zero convention above: -1 where g > 0, +1 where g <= 0 (dtype of g)."""
    one = jnp.ones((), g.dtype)
    return jnp.where(g > 0, -one, one)


# --------------------------------------------------------------------------------------------
# K-sparse polytope  P_K(r) = {x : ||x||_inf <= r, ||x||_1 <= K r} = conv{K-sparse x in {0,+-r}^n}
# --------------------------------------------------------------------------------------------

def k_sparse_lmo(g: jax.Array, k: int, radius: Scalar, *, method: str = "auto") -> jax.Array:
    """Vertex of the K-sparse polytope P_K(r) minimizing <v, g>.

    v_i = -r * sign(g_i) for the ``k`` entries of largest |g_i| (ties: lower flat index first),
    v_i = 0 elsewhere. Always exactly ``k`` nonzeros (g_i = 0 selected -> v_i = +r), so the
    result is a vertex even for g = 0. Optimal value: <v, g> = -r * (sum of the k largest |g_i|).

    Args:
      g: direction, any shape and float dtype.
      k: static int in [1, g.size].
      radius: r > 0.
      method: top-k selection path of :func:`sfw_jax.fw.topk.top_k_mask` ('auto', 'sort', ...).
    Returns:
      v with the shape and dtype of g.
    """
    check_k(k, g.size)
    check_positive_finite(radius, "radius")
    # the selection is piecewise constant in g: no gradient flows through it
    mask = top_k_mask(jax.lax.stop_gradient(g), int(k), method=method, absolute=True)
    return k_sparse_vertex(g, mask, radius)


def k_sparse_vertex(g: jax.Array, mask: jax.Array, radius: Scalar) -> jax.Array:
    """The K-sparse vertex on a given support: ``-r sign(g)`` where ``mask``, 0 elsewhere (the
    sign convention of the module docstring); shape and dtype of ``g``."""
    r = jnp.asarray(radius, g.dtype)
    return jnp.where(mask, _neg_sign(g) * r, jnp.zeros((), g.dtype))


# --------------------------------------------------------------------------------------------
# L_p balls  B_p(r) = {x : ||x||_p <= r}
# --------------------------------------------------------------------------------------------

def lp_ball_lmo(g: jax.Array, p: float, radius: Scalar) -> jax.Array:
    """Minimizer of <v, g> over the L_p ball of radius r, p >= 1 (p = inf allowed).

    Hoelder: v = -r * sign(g) * |g|^(q-1) / ||g||_q^(q-1), q = p/(p-1), so that
    <v, g> = -r ||g||_q and ||v||_p = r (for g != 0). Special cases:
      p = 1:   v = -r * sign(g_i) e_i at i = argmax |g_i| (first index on ties), a vertex;
      p = 2:   v = -r g / ||g||_2;
      p = inf: v = -r * sign(g) (g_i = 0 -> +r), a vertex.
    For g = 0 every feasible point is optimal: p = 1 and p = inf return a vertex, other p return 0.
    Never NaN.
    """
    p = check_p(p)
    check_positive_finite(radius, "radius")
    acc = acc_dtype(g)
    r = jnp.asarray(radius, acc)
    if math.isinf(p):
        return (_neg_sign(g).astype(acc) * r).astype(g.dtype)
    flat = g.reshape(-1)
    if p == 1:
        i = jnp.argmax(jnp.abs(flat))
        v = jnp.zeros(flat.shape, acc).at[i].set(_neg_sign(flat[i]).astype(acc) * r)
        return v.reshape(g.shape).astype(g.dtype)
    ga = g.astype(acc)
    if p == 2:
        nrm = jnp.sqrt(jnp.sum(ga * ga))
        safe = jnp.where(nrm > 0, nrm, 1)
        return jnp.where(nrm > 0, -r * ga / safe, 0).astype(g.dtype)
    q = dual_order(p)
    a = jnp.abs(ga)
    amax = jnp.max(a)
    safe_max = jnp.where(amax > 0, amax, 1)
    u = a / safe_max                       # in [0, 1]: no overflow for any q
    w = u ** (q - 1.0)                     # |g|^(q-1) up to the factor amax^(q-1)
    denom = jnp.sum(u ** q) ** ((q - 1.0) / q)   # ||u||_q^(q-1) >= 1 when amax > 0
    v = -r * jnp.sign(ga) * w / jnp.where(amax > 0, denom, 1)
    return jnp.where(amax > 0, v, 0).astype(g.dtype)


# --------------------------------------------------------------------------------------------
# k-support norm ball  B_k^sp(r) = conv{x : ||x||_0 <= k, ||x||_2 <= r}
# --------------------------------------------------------------------------------------------

def k_support_lmo(g: jax.Array, k: int, radius: Scalar, *, method: str = "auto") -> jax.Array:
    """Minimizer of <v, g> over the k-support-norm ball of radius r.

    With t = g restricted to its k largest |g_i| (ties: lower flat index first),
    v = -r * t / ||t||_2 and <v, g> = -r * ||t||_2 (the dual norm of the k-support norm is the L2
    norm of the top-k part). For g = 0 a vertex is returned: +r/sqrt(k) on the first k entries.
    """
    check_k(k, g.size)
    check_positive_finite(radius, "radius")
    acc = acc_dtype(g)
    mask = top_k_mask(jax.lax.stop_gradient(jnp.abs(g)), int(k), method=method)
    t = jnp.where(mask, g.astype(acc), 0)
    nrm = jnp.sqrt(jnp.sum(t * t))
    r = jnp.asarray(radius, acc)
    safe = jnp.where(nrm > 0, nrm, 1)
    vertex = jnp.where(mask, _neg_sign(g).astype(acc) * r / math.sqrt(k), 0)
    return jnp.where(nrm > 0, -r * t / safe, vertex).astype(g.dtype)
