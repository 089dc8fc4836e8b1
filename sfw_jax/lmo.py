"""Linear minimization oracles (LMOs) and the gauges of their sets, as pure jit-able functions.

For a compact convex set C and a direction g, the LMO returns a minimizer of the linear function

    LMO_C(g) = argmin_{v in C} <v, g>.

All functions take arrays of any shape and float dtype (float32, bfloat16, float16, float64); the
output has the shape and dtype of the input. ``k`` and ``p`` are static Python numbers; ``radius``
may be a Python number or a (traced) scalar array. Reductions (norms) are computed in float32 (or
float64 for float64 inputs) to stay accurate in low precision.

Sign convention for zero entries: where a vertex needs a sign for g_i = 0 we take g_i as
non-positive, i.e. ``v_i = +r`` (the reference's L_inf oracle does the same), so the oracle still
returns a vertex for g = 0.
"""

from __future__ import annotations

import math
import numbers
from typing import Union

import jax
import jax.numpy as jnp

from sfw_jax.topk import top_k_mask

Scalar = Union[float, jax.Array]


def _acc_dtype(x: jax.Array) -> jnp.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def _check_k(k: int, n: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= n:
        raise ValueError(f"{name} must be an int in [1, {n}] (the size of the array), got {k!r}")


def check_positive_finite(value: Scalar, name: str) -> None:
    """ValueError unless ``value`` (when concrete) is a finite number > 0."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_p(p: float) -> float:
    """Validate an L_p order: a number >= 1 or inf. Returns it as a float."""
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p must be a number >= 1 (or inf), got {p!r}") from None
    if math.isnan(pf) or pf < 1:
        raise ValueError(f"p must be a number >= 1 (or inf), got {p!r}")
    return pf


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
      method: top-k selection path of :func:`sfw_jax.topk.top_k_mask` ('auto', 'sort', ...).
    Returns:
      v with the shape and dtype of g.
    """
    _check_k(k, g.size)
    check_positive_finite(radius, "radius")
    # the selection is piecewise constant in g: no gradient flows through it
    mask = top_k_mask(jax.lax.stop_gradient(g), int(k), method=method, absolute=True)
    return k_sparse_vertex(g, mask, radius)


def k_sparse_vertex(g: jax.Array, mask: jax.Array, radius: Scalar) -> jax.Array:
    """The K-sparse vertex on a given support: ``-r sign(g)`` where ``mask``, 0 elsewhere (the
    sign convention of the module docstring); shape and dtype of ``g``."""
    r = jnp.asarray(radius, g.dtype)
    return jnp.where(mask, _neg_sign(g) * r, jnp.zeros((), g.dtype))


def k_sparse_gauge(x: jax.Array, k: int) -> jax.Array:
    """Gauge of P_K(1): max(||x||_inf, ||x||_1 / K); x is in P_K(r) iff gauge <= r. float32 scalar."""
    _check_k(k, x.size)
    a = jnp.abs(x.astype(_acc_dtype(x)))
    return jnp.maximum(jnp.max(a), jnp.sum(a) / k)


# --------------------------------------------------------------------------------------------
# L_p balls  B_p(r) = {x : ||x||_p <= r}
# --------------------------------------------------------------------------------------------

def lp_norm(x: jax.Array, p: float) -> jax.Array:
    """||x||_p over all entries (float32/float64 scalar), overflow-safe for large p."""
    p = check_p(p)
    a = jnp.abs(x.astype(_acc_dtype(x))).reshape(-1)
    if math.isinf(p):
        return jnp.max(a)
    if p == 1:
        return jnp.sum(a)
    if p == 2:
        return jnp.sqrt(jnp.sum(a * a))
    amax = jnp.max(a)
    safe = jnp.where(amax > 0, amax, 1)
    return amax * jnp.sum((a / safe) ** p) ** (1.0 / p)


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
    acc = _acc_dtype(g)
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
    _check_k(k, g.size)
    check_positive_finite(radius, "radius")
    acc = _acc_dtype(g)
    mask = top_k_mask(jax.lax.stop_gradient(jnp.abs(g)), int(k), method=method)
    t = jnp.where(mask, g.astype(acc), 0)
    nrm = jnp.sqrt(jnp.sum(t * t))
    r = jnp.asarray(radius, acc)
    safe = jnp.where(nrm > 0, nrm, 1)
    vertex = jnp.where(mask, _neg_sign(g).astype(acc) * r / math.sqrt(k), 0)
    return jnp.where(nrm > 0, -r * t / safe, vertex).astype(g.dtype)


def k_support_norm(x: jax.Array, k: int) -> jax.Array:
    """The k-support norm of x (Argyriou, Foygel & Srebro, 2012), float32 scalar.

    With |x| sorted decreasingly (z_1 >= ... >= z_n) and the unique l in {0, ..., k-1} such that
    z_{k-l-1} > (1/(l+1)) sum_{i>=k-l} z_i >= z_{k-l} (z_0 = +inf),
        ||x||_k^sp = sqrt( sum_{i<k-l} z_i^2 + (1/(l+1)) (sum_{i>=k-l} z_i)^2 ).
    Costs one sort of |x|.
    """
    _check_k(k, x.size)
    z = -jnp.sort(-jnp.abs(x.astype(_acc_dtype(x))).reshape(-1))       # decreasing
    csum2 = jnp.concatenate([jnp.zeros(1, z.dtype), jnp.cumsum(z * z)])  # csum2[j] = sum_{i<j} z_i^2
    tail = jnp.concatenate([jnp.cumsum(z[::-1])[::-1], jnp.zeros(1, z.dtype)])  # sum_{i>=j}
    ls = jnp.arange(k)                          # candidate l = 0..k-1
    j = k - ls - 1                              # 0-based index of z_{k-l} (1-based)
    avg = tail[j] / (ls + 1)
    prev = jnp.where(j >= 1, z[jnp.maximum(j - 1, 0)], jnp.inf)
    # The conditions hold for exactly one l in exact arithmetic; with ties, rounding can break
    # them, so compare with a relative slack (the norm is continuous in l across ties).
    tol = 4 * jnp.finfo(z.dtype).eps * k
    ok = (prev > avg * (1 - tol)) & (avg >= z[j] * (1 - tol))
    val = jnp.sqrt(csum2[j] + (ls + 1) * avg * avg)
    first = jnp.argmax(ok)
    return jnp.where(jnp.any(ok), val[first], val[k - 1])


# --------------------------------------------------------------------------------------------
# Euclidean projections where they are cheap
# --------------------------------------------------------------------------------------------

def project_l1_ball(x: jax.Array, radius: Scalar) -> jax.Array:
    """Euclidean projection onto {||x||_1 <= r} (Duchi et al., 2008): one sort, O(n log n).

    P(x) = sign(x) * max(|x| - theta, 0) with theta >= 0 the smallest value giving ||P(x)||_1 <= r.
    """
    acc = _acc_dtype(x)
    a = jnp.abs(x.astype(acc)).reshape(-1)
    r = jnp.asarray(radius, acc)
    z = -jnp.sort(-a)
    css = jnp.cumsum(z)
    idx = jnp.arange(1, z.shape[0] + 1, dtype=acc)
    cond = z - (css - r) / idx > 0
    rho = jnp.max(jnp.where(cond, jnp.arange(z.shape[0]), 0))
    theta = jnp.maximum((css[rho] - r) / (rho + 1), 0)
    out = jnp.sign(x.astype(acc)).reshape(-1) * jnp.maximum(a - theta, 0)
    inside = jnp.sum(a) <= r
    return jnp.where(inside, x.reshape(-1).astype(acc), out).reshape(x.shape).astype(x.dtype)


def project_k_sparse(x: jax.Array, k: int, radius: Scalar) -> jax.Array:
    """Euclidean projection onto P_K(r) = {||x||_inf <= r, ||x||_1 <= K r}: one sort, O(n log n).

    KKT: P(x) = sign(x) * clip(|x| - lam, 0, r) with lam >= 0 the smallest value such that
    f(lam) = sum_i clip(|x_i| - lam, 0, r) <= K r. f is continuous, piecewise linear and
    non-increasing with breakpoints {|x_i|} and {|x_i| - r}; lam is found exactly by evaluating f
    at all breakpoints (prefix sums over the sorted |x|) and interpolating on the crossing piece.
    """
    _check_k(k, x.size)
    acc = _acc_dtype(x)
    a = jnp.abs(x.astype(acc)).reshape(-1)
    r = jnp.asarray(radius, acc)
    target = k * r
    s = jnp.sort(a)                                       # increasing
    cs = jnp.concatenate([jnp.zeros(1, acc), jnp.cumsum(s)])
    n = s.shape[0]

    def f(lam):
        # entries with |x| >= lam + r contribute r; entries in (lam, lam + r) contribute |x| - lam
        lo = jnp.searchsorted(s, lam, side="right")       # first index with s > lam
        hi = jnp.searchsorted(s, lam + r, side="left")    # first index with s >= lam + r
        mid = cs[hi] - cs[lo] - (hi - lo) * lam
        return mid + (n - hi) * r

    bps = jnp.concatenate([s, s - r, jnp.zeros(1, acc)])
    bps = jnp.sort(jnp.maximum(bps, 0))
    fv = jax.vmap(f)(bps)                                 # non-increasing in bps
    # first breakpoint where f <= target; lam lies between it and the previous one
    j = jnp.argmax(fv <= target)
    jp = jnp.maximum(j - 1, 0)
    x0, x1, f0, f1 = bps[jp], bps[j], fv[jp], fv[j]
    slope = jnp.where(x1 > x0, (f1 - f0) / jnp.where(x1 > x0, x1 - x0, 1), 0)
    lam = jnp.where(slope < 0, x0 + (target - f0) / jnp.where(slope < 0, slope, -1), x1)
    lam = jnp.clip(lam, x0, x1)
    feasible = (jnp.max(a) <= r) & (jnp.sum(a) <= target)
    lam = jnp.where(feasible, 0, lam)
    out = jnp.sign(x.astype(acc)).reshape(-1) * jnp.clip(a - lam, 0, r)
    return out.reshape(x.shape).astype(x.dtype)
