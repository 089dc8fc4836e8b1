"""Argument checks and the accumulation dtype shared by the oracles, gauges and sets."""

from __future__ import annotations

import math
import numbers
from typing import Any, Union

import jax
import jax.numpy as jnp

Scalar = Union[float, jax.Array]


def acc_dtype(x: jax.Array) -> jnp.dtype:
    """Accumulation dtype of reductions over ``x``: float64 for float64 inputs, else float32
    (norms of bfloat16 or float16 arrays stay accurate)."""
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def check_int(value: Any, name: str, lo: int = 1) -> int:
    """``int(value)`` if it is an int >= ``lo`` (not a bool); else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def check_k(k: Any, n: int, name: str = "k") -> None:
    """ValueError unless ``k`` is an int in [1, n] (n: the size of the array)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= n:
        raise ValueError(f"{name} must be an int in [1, {n}] (the size of the array), got {k!r}")


def check_positive_finite(value: Scalar, name: str) -> float | None:
    """``float(value)`` if it is a finite number > 0; None for a traced value (not checked);
    else ValueError naming it."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_p(p: Any) -> float:
    """An L_p order as a float: a number >= 1, or inf; else ValueError."""
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p must be a number >= 1 (or inf), got {p!r}") from None
    if math.isnan(pf) or pf < 1:
        raise ValueError(f"p must be a number >= 1 (or inf), got {p!r}")
    return pf
