"""Gauges of the constraint sets: x lies in the set of radius r iff gauge(x) <= r.

Scalars in float32 (float64 for float64 inputs), computed overflow-safe; ``k`` and ``p`` are
static Python numbers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sfw_jax.fw._checks import acc_dtype, check_k, check_p


def k_sparse_gauge(x: jax.Array, k: int) -> jax.Array:
    """Gauge of P_K(1): max(||x||_inf, ||x||_1 / K); x is in P_K(r) iff gauge <= r. float32 scalar."""
    check_k(k, x.size)
    a = jnp.abs(x.astype(acc_dtype(x)))
    return jnp.maximum(jnp.max(a), jnp.sum(a) / k)


def lp_norm(x: jax.Array, p: float) -> jax.Array:
    """||x||_p over all entries (float32/float64 scalar), overflow-safe for large p."""
    p = check_p(p)
    a = jnp.abs(x.astype(acc_dtype(x))).reshape(-1)
    if math.isinf(p):
        return jnp.max(a)
    if p == 1:
        return jnp.sum(a)
    if p == 2:
        return jnp.sqrt(jnp.sum(a * a))
    amax = jnp.max(a)
    safe = jnp.where(amax > 0, amax, 1)
    return amax * jnp.sum((a / safe) ** p) ** (1.0 / p)


def k_support_norm(x: jax.Array, k: int) -> jax.Array:
    """The k-support norm of x (Argyriou, Foygel & Srebro, 2012), float32 scalar.

    With |x| sorted decreasingly (z_1 >= ... >= z_n) and the unique l in {0, ..., k-1} such that
    z_{k-l-1} > (1/(l+1)) sum_{i>=k-l} z_i >= z_{k-l} (z_0 = +inf),
        ||x||_k^sp = sqrt( sum_{i<k-l} z_i^2 + (1/(l+1)) (sum_{i>=k-l} z_i)^2 ).
    Costs one sort of |x|.
    """
    check_k(k, x.size)
    z = -jnp.sort(-jnp.abs(x.astype(acc_dtype(x))).reshape(-1))       # decreasing
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
