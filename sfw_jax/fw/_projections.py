"""Euclidean projections onto the sets where they are cheap (one sort, O(n log n)).

``P_C(x) = argmin_{y in C} ||y - x||_2``; shape and dtype of ``x``, computed in float32
(float64 for float64 inputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sfw_jax.fw._checks import Scalar, acc_dtype, check_k


def project_l1_ball(x: jax.Array, radius: Scalar) -> jax.Array:
    """Euclidean projection onto {||x||_1 <= r} (Duchi et al., 2008): one sort, O(n log n).

    P(x) = sign(x) * max(|x| - theta, 0) with theta >= 0 the smallest value giving ||P(x)||_1 <= r.
    """
    acc = acc_dtype(x)
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
    check_k(k, x.size)
    acc = acc_dtype(x)
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
