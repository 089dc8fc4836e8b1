"""Exact top-k selection masks.

``top_k_mask(x, k)`` returns a bool array shaped like ``x`` with exactly ``k`` True entries: the
``k`` largest values of ``x`` (compared in flat, row-major order), ties broken deterministically by
lower flat index first (the order ``jax.lax.top_k`` uses). ``k`` is static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

METHODS = ("auto", "sort")


def _top_k_mask_sort(x: jax.Array, k: int) -> jax.Array:
    flat = x.reshape(-1)
    _, idx = jax.lax.top_k(flat, k)
    return jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(x.shape)


def top_k_mask(x: jax.Array, k: int, *, method: str = "auto") -> jax.Array:
    """Bool mask of the ``k`` largest entries of ``x`` (exactly ``k`` True; ties: lower index)."""
    n = x.size
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] for an array of size {n}, got {k!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if k == n:
        return jnp.ones(x.shape, bool)
    return _top_k_mask_sort(x, k)
