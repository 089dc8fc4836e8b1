"""Flax linen models for SFW experiments: ``SimpleCNN``, ``MLP``, ``ResNet18``, ``VGG16`` and
the byte-level language model ``TransformerLM``.

The image models take NHWC images (``MLP``: any (N, ...) batch), are called as
``model.apply(variables, x, train=...)`` and return (N, num_classes) logits in ``dtype``.
``TransformerLM`` takes (B, T) token ids and returns (B, T, num_classes) next-token logits; it
is a *sequence model*: it has a ``context`` attribute (:func:`model_context`).
Models with BatchNorm keep running statistics in the ``batch_stats`` collection; pass
``mutable=['batch_stats']`` when ``train=True``. Parameters are float32 and initialised like
PyTorch's defaults (see ``sfw_jax.training.models._layers``).

``get_model(name, num_classes, **kw)`` builds a model by name; ``MODELS`` maps names to classes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from sfw_jax.training.models._layers import torch_bias_init, torch_kernel_init
from sfw_jax.training.models._resnet import BasicBlock, ResNet, ResNet18
from sfw_jax.training.models._simple import MLP, SimpleCNN
from sfw_jax.training.models._transformer import TransformerLM
from sfw_jax.training.models._vgg import VGG16, VGG16_CFG

MODELS: dict[str, type[nn.Module]] = {
    "simple_cnn": SimpleCNN,
    "mlp": MLP,
    "resnet18": ResNet18,
    "vgg16": VGG16,
    "transformer_lm": TransformerLM,
}


def get_model(name: str, num_classes: int, **kw: Any) -> nn.Module:
    """Model ``MODELS[name](num_classes=num_classes, **kw)``.

    ``kw`` are the model's other attributes (e.g. ``width``, ``use_bn``, ``dtype``, ``hidden``).
    Raises ValueError for an unknown ``name``, an invalid ``num_classes`` or an unknown keyword.
    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    cls = MODELS[name]
    allowed = sorted(f for f in cls.__dataclass_fields__ if f not in ("num_classes", "parent", "name"))
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(
            f"kw for model {name!r} must be among {allowed}, got unknown {unknown}")
    return cls(num_classes=num_classes, **kw)


def model_context(name: str, model_kwargs: Any = None) -> int | None:
    """The context (longest input sequence) of sequence model ``name`` with ``model_kwargs``
    (its ``context`` kwarg, else the class default); None for the image models."""
    fields = MODELS[name].__dataclass_fields__
    if "context" not in fields:
        return None
    return dict(model_kwargs or {}).get("context", fields["context"].default)


__all__ = [
    "MODELS", "get_model", "model_context", "TransformerLM", "SimpleCNN", "MLP", "ResNet", "ResNet18", "BasicBlock", "VGG16",
    "VGG16_CFG", "torch_kernel_init", "torch_bias_init",
]
