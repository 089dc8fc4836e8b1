"""CIFAR ResNet-18 as in kuangliu/pytorch-cifar (``models/resnet.py``), in Flax linen.

Architecture (``w = round(64 * width)``; layer names mirror the PyTorch module names):

    x (N, H, W, C)
    conv1 3x3 w, stride 1, pad 1, no bias -> bn1 -> ReLU                 (no max-pool)
    layer1: 2 x BasicBlock(w,  stride 1)                                  (N, H,    W,    w)
    layer2: 2 x BasicBlock(2w, first stride 2)                            (N, H/2,  W/2,  2w)
    layer3: 2 x BasicBlock(4w, first stride 2)                            (N, H/4,  W/4,  4w)
    layer4: 2 x BasicBlock(8w, first stride 2)                            (N, H/8,  W/8,  8w)
    global average pool over H, W -> (N, 8w) -> linear Linear(num_classes) with bias

    BasicBlock(planes, stride): conv1 3x3 stride pad 1 -> bn1 -> ReLU -> conv2 3x3 pad 1 -> bn2,
    plus shortcut (identity, or shortcut_conv 1x1 stride + shortcut_bn when the stride is not 1
    or the channel count changes), then ReLU. Convs have no bias.

(Spatial sizes use PyTorch's ``floor((H - 1) / 2) + 1`` for the stride-2 convs; any H, W >= 1
works.) The reference's ``avg_pool2d(out, 4)`` on 32x32 inputs equals this global average pool.
With ``use_bn=False`` BatchNorm is dropped and every conv gets a bias instead.
With the defaults and 10 classes: 11,173,962 parameters (BN scale+bias counted, running stats not).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sfw_jax.training.models import _layers as layers


class BasicBlock(nn.Module):
    """ResNet basic block: (N, H, W, C) -> (N, ceil(H/stride), ceil(W/stride), planes)."""

    planes: int
    stride: int = 1
    use_bn: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv_bn(h, features, kernel, stride, padding, conv_name, bn_name):
            h = layers.conv(h, features, kernel, stride=stride, padding=padding,
                            use_bias=not self.use_bn, dtype=self.dtype, name=conv_name)
            if self.use_bn:
                h = layers.batch_norm(h, train=train, dtype=self.dtype, name=bn_name)
            return h

        out = nn.relu(conv_bn(x, self.planes, 3, self.stride, 1, "conv1", "bn1"))
        out = conv_bn(out, self.planes, 3, 1, 1, "conv2", "bn2")
        if self.stride != 1 or x.shape[-1] != self.planes:
            shortcut = conv_bn(x, self.planes, 1, self.stride, 0, "shortcut_conv", "shortcut_bn")
        else:
            shortcut = x
        return nn.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR-style ResNet with BasicBlocks; see the module docstring.

    Attributes:
      num_classes: number of logits.
      stage_sizes: blocks per stage (four stages of w, 2w, 4w, 8w channels).
      width: channel multiplier on the base 64 channels (1.0 = reference).
      use_bn: BatchNorm after every conv (reference: True).
      dtype: compute dtype; the logits come out in this dtype.
    """

    num_classes: int
    stage_sizes: Sequence[int]
    width: float = 1.0
    use_bn: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_fields(self)
        layers.check_int_sequence(self.stage_sizes, "stage_sizes", 4)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """(N, H, W, C) images -> (N, num_classes) logits."""
        x = layers.image_input(x, self.dtype)
        w = layers.scaled(64, self.width)
        x = layers.conv(x, w, 3, stride=1, padding=1, use_bias=not self.use_bn,
                        dtype=self.dtype, name="conv1")
        if self.use_bn:
            x = layers.batch_norm(x, train=train, dtype=self.dtype, name="bn1")
        x = nn.relu(x)
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(w * 2 ** stage, stride, use_bn=self.use_bn, dtype=self.dtype,
                               name=f"layer{stage + 1}_{block}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return layers.dense(x, self.num_classes, dtype=self.dtype, name="linear")


class ResNet18(ResNet):
    """The reference CIFAR ResNet-18: ``ResNet`` with ``stage_sizes=(2, 2, 2, 2)``."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
