"""PyTorch-default layers and argument checks shared by the Flax linen models.

Initialisation matches PyTorch's ``nn.Conv2d`` / ``nn.Linear`` defaults:

* kernel: ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-b, b) with ``b = 1/sqrt(fan_in)``, which is
  ``variance_scaling(1/3, 'fan_in', 'uniform')`` (bound ``sqrt(3 * (1/3) / fan_in)``);
* bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in));
* BatchNorm: scale 1, bias 0, ``momentum=0.9`` (PyTorch's 0.1), ``epsilon=1e-5``.

``fan_in`` is ``kh * kw * in_channels`` for a conv kernel of shape ``(kh, kw, in, out)`` and
``in_features`` for a dense kernel of shape ``(in, out)``. SFW's ``'initialization'`` diameter
mode reads the norms of freshly initialised weights, so matching the reference init matters.

The layer helpers below are called from inside a ``@nn.compact`` method; the submodule they
create is attached to that calling module under ``name``. Parameters are always float32;
``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Any

# PyTorch kaiming_uniform_(a=sqrt(5)): gain^2 = 2 / (1 + 5) = 1/3 -> bound = sqrt(1 / fan_in).
torch_kernel_init: Initializer = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
PARAM_DTYPE = jnp.float32


def torch_bias_init(fan_in: int) -> Initializer:
    """Initializer drawing U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch conv/linear bias)."""
    if not isinstance(fan_in, int) or isinstance(fan_in, bool) or fan_in < 1:
        raise ValueError(f"fan_in must be an int >= 1, got {fan_in!r}")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = PARAM_DTYPE) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(x: jax.Array, features: int, kernel: int, *, stride: int = 1, padding: int = 0,
         use_bias: bool, dtype: Dtype, name: str) -> jax.Array:
    """PyTorch-style ``Conv2d(in, features, kernel, stride, padding)`` on NHWC ``x``.

    ``x``: (N, H, W, C_in) -> (N, H', W', features) with
    ``H' = floor((H + 2 * padding - kernel) / stride) + 1`` (symmetric zero padding, as PyTorch).
    """
    fan_in = kernel * kernel * int(x.shape[-1])
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride),
        padding=((padding, padding), (padding, padding)), use_bias=use_bias, dtype=dtype,
        param_dtype=PARAM_DTYPE, kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(fan_in), name=name)(x)


def dense(x: jax.Array, features: int, *, dtype: Dtype, name: str) -> jax.Array:
    """PyTorch-style ``Linear(in, features)`` (with bias): (..., in) -> (..., features)."""
    fan_in = int(x.shape[-1])
    return nn.Dense(
        features, use_bias=True, dtype=dtype, param_dtype=PARAM_DTYPE,
        kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in), name=name)(x)


def batch_norm(x: jax.Array, *, train: bool, dtype: Dtype, name: str) -> jax.Array:
    """PyTorch-default ``BatchNorm2d``/``BatchNorm1d`` over the last axis of ``x``.

    In train mode normalises with batch statistics and updates ``batch_stats`` (running
    ``mean``/``var``, ``new = 0.9 * old + 0.1 * batch``; the variance is the biased batch
    variance, PyTorch uses the unbiased one for the running estimate); in eval mode uses the
    running statistics and changes nothing.
    """
    return nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
        param_dtype=PARAM_DTYPE, name=name)(x)


def max_pool_ceil(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, PyTorch ``ceil_mode=True``: (N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C).

    Equal to the floor-mode pool of the references when H and W are even; ceil mode keeps every
    input size >= 1 valid through any number of pools.
    """
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


def scaled(channels: int, width: float) -> int:
    """``max(1, round(channels * width))``: channel count under a width multiplier."""
    return max(1, int(round(channels * width)))


def check_fields(module: nn.Module) -> None:
    """ValueError for a bad ``num_classes``, ``width`` (where the model has one) or ``dtype``,
    the attributes every model here shares."""
    check_num_classes(module.num_classes)
    if hasattr(module, "width"):
        check_width(module.width)
    check_dtype(module.dtype)


def image_input(x: Any, dtype: Dtype) -> jax.Array:
    """``x`` checked to be an NHWC image batch (:func:`check_image`), in the compute dtype."""
    check_image(x)
    return jnp.asarray(x, dtype)


def check_int_sequence(value: Any, name: str, length: int | None = None) -> None:
    """ValueError unless ``value`` is a tuple or list of ints >= 1 (of ``length`` items, where
    given)."""
    if (not isinstance(value, (tuple, list)) or (length is not None and len(value) != length)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                       for v in value)):
        count = "" if length is None else f"{length} "
        raise ValueError(f"{name} must be a sequence of {count}ints >= 1, got {value!r}")


def check_num_classes(num_classes: Any) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")


def check_width(width: Any) -> None:
    if (isinstance(width, bool) or not isinstance(width, (int, float))
            or not math.isfinite(width) or width <= 0):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")


def check_dtype(dtype: Any) -> None:
    try:
        ok = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"dtype must be a floating dtype such as jnp.float32 or jnp.bfloat16, got {dtype!r}")


def check_image(x: Any) -> None:
    """Raise ValueError unless ``x`` is a 4-D NHWC batch with non-empty H, W, C."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4 or min(shape[1:]) < 1:
        raise ValueError(
            f"x must be an NHWC image batch of shape (N, H, W, C) with H, W, C >= 1, "
            f"got shape {shape}")
