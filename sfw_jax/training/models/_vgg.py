"""CIFAR VGG-16 as in kuangliu/pytorch-cifar (``models/vgg.py``), in Flax linen.

Architecture: for each entry of ``VGG16_CFG``

    64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M

an int ``c`` is ``Conv 3x3 round(c * width), pad 1, with bias -> BatchNorm -> ReLU`` (named
``conv{i}``/``bn{i}``, i = 0..12) and ``M`` is a 2x2 stride-2 max-pool, then a global average
pool over H, W and one ``classifier`` Linear(round(512 * width), num_classes):

    x (N, H, W, C) -> features (N, ceil(H/32), ceil(W/32), 512w) -> mean -> (N, 512w)
    -> logits (N, num_classes)

For 32x32 inputs the feature map is 1x1, so the global pool equals the reference's
``AvgPool2d(1)`` + flatten. The max-pools use ceil mode so any H, W >= 1 works (same as the
reference floor mode whenever the sizes are even at every pool, e.g. multiples of 32).
With ``use_bn=False`` the BatchNorms are dropped (convs keep their bias).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sfw_jax.training.models import _layers as layers

VGG16_CFG: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                    512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """CIFAR VGG-16 with BatchNorm; see the module docstring.

    Attributes:
      num_classes: number of logits.
      width: channel multiplier on the cfg channel counts (1.0 = reference).
      use_bn: BatchNorm after every conv (reference: True).
      dtype: compute dtype; the logits come out in this dtype.
    """

    num_classes: int
    width: float = 1.0
    use_bn: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_fields(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """(N, H, W, C) images -> (N, num_classes) logits."""
        x = layers.image_input(x, self.dtype)
        i = 0
        for item in VGG16_CFG:
            if item == "M":
                x = layers.max_pool_ceil(x)
                continue
            x = layers.conv(x, layers.scaled(item, self.width), 3, padding=1, use_bias=True,
                            dtype=self.dtype, name=f"conv{i}")
            if self.use_bn:
                x = layers.batch_norm(x, train=train, dtype=self.dtype, name=f"bn{i}")
            x = nn.relu(x)
            i += 1
        x = jnp.mean(x, axis=(1, 2))
        return layers.dense(x, self.num_classes, dtype=self.dtype, name="classifier")
