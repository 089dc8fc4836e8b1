"""Small models that train in minutes on a CPU: ``SimpleCNN`` and ``MLP``.

``SimpleCNN`` (``c = round(32 * width)``, ``BN`` only when ``use_bn``):

    x (N, H, W, C)
    conv1 3x3 c,  pad 1 [+BN] ReLU -> conv2 3x3 c,  pad 1 [+BN] ReLU -> maxpool 2 (ceil)
    conv3 3x3 2c, pad 1 [+BN] ReLU -> conv4 3x3 2c, pad 1 [+BN] ReLU -> maxpool 2 (ceil)
    head 'fc':  flatten (N, ceil(H/4) * ceil(W/4) * 2c) -> fc1 Linear(4c) ReLU -> fc2 Linear(num_classes)
    head 'gap': global average pool (N, 2c) -> fc2 Linear(num_classes)
    logits (N, num_classes)

With head 'fc' on 32x32 images most weights sit in fc1 (88% at width 0.5), a layer so redundant
that magnitude pruning barely hurts any training method; head 'gap' leaves almost all weights in
the convolutions (the all-convolutional shape of ResNets and VGGs).

Convs carry a bias only without BN. Works for any H, W >= 1 (8x8 digits, 28x28, 32x32, ...).

``MLP``: flatten ``x`` (N, ...) to (N, D) -> [Linear(h) ReLU for h in hidden] -> Linear(num_classes).

Both: ``__call__(x, train=False)``; params float32, compute in ``dtype``; PyTorch-default init.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sfw_jax.training.models import _layers as layers


HEADS = ("fc", "gap")
"""``SimpleCNN.head`` values."""


class SimpleCNN(nn.Module):
    """Four 3x3 convs, two ceil-mode max-pools, two dense layers; see the module docstring.

    Attributes:
      num_classes: number of logits.
      width: channel multiplier (1.0 -> 32, 32, 64, 64 conv channels and 128 hidden units).
      use_bn: BatchNorm after every conv (then the convs have no bias).
      head: 'fc' (flatten, fc1, fc2) or 'gap' (global average pool, fc2).
      dtype: compute dtype; the logits come out in this dtype.
    """

    num_classes: int
    width: float = 1.0
    use_bn: bool = False
    head: str = "fc"
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_fields(self)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """(N, H, W, C) images -> (N, num_classes) logits."""
        x = layers.image_input(x, self.dtype)
        c = layers.scaled(32, self.width)
        for i, features in enumerate((c, c, 2 * c, 2 * c), start=1):
            x = layers.conv(x, features, 3, padding=1, use_bias=not self.use_bn,
                            dtype=self.dtype, name=f"conv{i}")
            if self.use_bn:
                x = layers.batch_norm(x, train=train, dtype=self.dtype, name=f"bn{i}")
            x = nn.relu(x)
            if i % 2 == 0:
                x = layers.max_pool_ceil(x)
        if self.head == "gap":
            x = jnp.mean(x, axis=(1, 2))
        else:
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(layers.dense(x, 4 * c, dtype=self.dtype, name="fc1"))
        return layers.dense(x, self.num_classes, dtype=self.dtype, name="fc2")


class MLP(nn.Module):
    """Flatten then fully connected ReLU layers; see the module docstring.

    Attributes:
      num_classes: number of logits.
      hidden: widths of the hidden layers (may be empty: a linear model).
      dtype: compute dtype; the logits come out in this dtype.
    """

    num_classes: int
    hidden: Sequence[int] = (256, 256)
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_fields(self)
        layers.check_int_sequence(self.hidden, "hidden")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """(N, ...) inputs -> (N, num_classes) logits. ``train`` is accepted for a uniform API."""
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) < 2 or min(shape[1:]) < 1:
            raise ValueError(
                f"x must be a batch of shape (N, ...) with at least one non-empty feature axis, "
                f"got shape {shape}")
        x = jnp.asarray(x, self.dtype).reshape((shape[0], -1))
        for i, features in enumerate(self.hidden, start=1):
            x = nn.relu(layers.dense(x, features, dtype=self.dtype, name=f"fc{i}"))
        return layers.dense(x, self.num_classes, dtype=self.dtype, name="out")
