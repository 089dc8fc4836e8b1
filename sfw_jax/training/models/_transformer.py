"""``TransformerLM``: a decoder-only, pre-LayerNorm byte-level language model.

For tokens ``t`` of shape (B, T) (ints in ``0 .. num_classes - 1``; bytes: 256), ``T <= context``,
``d = width``, ``h = heads``, ``f = mlp_ratio * d``::

    x = tok_embed[t] + pos_embed[0 .. T-1]                                       (B, T, d)
    depth times (block_i):
        x = x + attn.out( causal_attention( ln1(x) ) )      q, k, v = Dense(d) each, h heads
        x = x + mlp.fc2( gelu( mlp.fc1( ln2(x) ) ) )        fc1: d -> f, fc2: f -> d
    logits = ln_f(x) @ tok_embed^T                                     (B, T, num_classes)

Causal attention: head ``j`` of position ``s`` attends to positions ``<= s`` with weights
``softmax(q_s k_r / sqrt(d / h))``. Every Dense layer has a bias. Parameters (float32)::

    tok_embed/embedding (V, d)   pos_embed/embedding (context, d)
    block_i/ln1, ln2 {scale, bias} (d,)
    block_i/attn/{query, key, value, out}/{kernel (d, d), bias (d,)}
    block_i/mlp/fc1/{kernel (d, f), bias (f,)}   block_i/mlp/fc2/{kernel (f, d), bias (d,)}
    ln_f {scale, bias} (d,)

Which tensors are constrained and pruned: the attention and MLP kernels, and only those. They
are the leaves :func:`sfw_jax.is_kernel` (the ``'kernels'`` scope) picks: rank >= 2 and not an
embedding table. Embeddings (named ``embedding``), LayerNorm scales and offsets and biases (rank
1) fall outside it. The output head is *tied* to the token embedding (the logits reuse
``tok_embed^T``; there is no head kernel), so it is neither constrained nor pruned, as Wanda and
SparseGPT keep an LM's embeddings and head dense.

Init (GPT-2): kernels and embeddings N(0, 0.02^2), the residual projections ``attn/out`` and
``mlp/fc2`` N(0, (0.02 / sqrt(2 depth))^2), biases 0, LayerNorm scale 1 and offset 0
(epsilon 1e-5).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sfw_jax.training.models import _layers as layers

INIT_STD = 0.02
LN_EPSILON = 1e-5


def _check_positive_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _dense(x: jax.Array, features: int, *, std: float, dtype: Any, name: str) -> jax.Array:
    return nn.Dense(features, dtype=dtype, param_dtype=layers.PARAM_DTYPE,
                    kernel_init=nn.initializers.normal(std), bias_init=nn.initializers.zeros,
                    name=name)(x)


def _layer_norm(x: jax.Array, *, dtype: Any, name: str) -> jax.Array:
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=layers.PARAM_DTYPE,
                        name=name)(x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate query / key / value / out Dense layers:
    (B, T, d) -> (B, T, d)."""

    width: int
    heads: int
    out_std: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        hd = d // self.heads

        def heads(name):
            y = _dense(x, d, std=INIT_STD, dtype=self.dtype, name=name)
            return y.reshape(b, t, self.heads, hd)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = jnp.einsum("bshd,brhd->bhsr", q, k) / jnp.sqrt(jnp.asarray(hd, self.dtype))
        causal = jnp.tril(jnp.ones((t, t), bool))
        scores = jnp.where(causal, scores.astype(jnp.float32), -jnp.inf)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        y = jnp.einsum("bhsr,brhd->bshd", weights, v).reshape(b, t, d)
        return _dense(y, d, std=self.out_std, dtype=self.dtype, name="out")


class MlpBlock(nn.Module):
    """fc1 (d -> hidden), GELU, fc2 (hidden -> d)."""

    width: int
    hidden: int
    out_std: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.gelu(_dense(x, self.hidden, std=INIT_STD, dtype=self.dtype, name="fc1"))
        return _dense(y, self.width, std=self.out_std, dtype=self.dtype, name="fc2")


class Block(nn.Module):
    """One pre-LayerNorm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    width: int
    heads: int
    hidden: int
    out_std: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _layer_norm(x, dtype=self.dtype, name="ln1")
        x = x + CausalSelfAttention(self.width, self.heads, self.out_std, self.dtype,
                                    name="attn")(y)
        y = _layer_norm(x, dtype=self.dtype, name="ln2")
        return x + MlpBlock(self.width, self.hidden, self.out_std, self.dtype, name="mlp")(y)


class TransformerLM(nn.Module):
    """Decoder-only pre-LayerNorm Transformer; see the module docstring.

    Attributes:
      num_classes: vocabulary size V (set by the dataset: 256 for bytes).
      width: model width d (a multiple of ``heads``).
      depth: number of blocks.
      heads: attention heads.
      context: the longest sequence (size of the position embedding).
      mlp_ratio: MLP hidden width / d.
      dtype: compute dtype; the logits come out in this dtype.
    """

    num_classes: int
    width: int = 128
    depth: int = 2
    heads: int = 4
    context: int = 128
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_num_classes(self.num_classes)
        layers.check_dtype(self.dtype)
        for name in ("width", "depth", "heads", "context", "mlp_ratio"):
            _check_positive_int(getattr(self, name), name)
        if self.width % self.heads:
            raise ValueError(f"width must be a multiple of heads={self.heads}, "
                             f"got {self.width}")
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        """(B, T) token ids -> (B, T, num_classes) logits. ``train`` is accepted for a uniform
        API (no dropout)."""
        shape = getattr(tokens, "shape", None)
        if shape is None or len(shape) != 2 or not 1 <= shape[1] <= self.context:
            raise ValueError(f"tokens must have shape (B, T) with 1 <= T <= context="
                             f"{self.context}, got shape {shape}")
        tokens = jnp.asarray(tokens).astype(jnp.int32)
        embed = nn.Embed(self.num_classes, self.width, dtype=self.dtype,
                         param_dtype=layers.PARAM_DTYPE,
                         embedding_init=nn.initializers.normal(INIT_STD), name="tok_embed")
        pos = nn.Embed(self.context, self.width, dtype=self.dtype,
                       param_dtype=layers.PARAM_DTYPE,
                       embedding_init=nn.initializers.normal(INIT_STD), name="pos_embed")
        x = embed(tokens) + pos(jnp.arange(shape[1]))[None]
        out_std = INIT_STD / math.sqrt(2 * self.depth)
        for i in range(self.depth):
            x = Block(self.width, self.heads, self.mlp_ratio * self.width, out_std, self.dtype,
                      name=f"block_{i}")(x)
        x = _layer_norm(x, dtype=self.dtype, name="ln_f")
        return embed.attend(x)
