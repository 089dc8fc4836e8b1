"""The model options of a run: architecture, its attributes and compute precision."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from sfw_jax.training.config._option import bad, check_options, option
from sfw_jax.training.models import MODELS

PRECISIONS = ("fp32", "bf16")
"""Compute precisions: the model runs in float32 or bfloat16 (params stay float32)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: ``get_model(arch, num_classes, dtype=<precision>, **model_kwargs)``
    (:func:`sfw_jax.training.models.get_model`; ``num_classes`` comes from the dataset)."""

    GROUP: ClassVar[str] = "model"

    arch: str = option("simple_cnn", choices=MODELS, help="model name")
    model_kwargs: Mapping[str, Any] = option(
        default_factory=dict, flag="--model-kw", metavar="KEY=VALUE",
        help="model attribute KEY=VALUE, VALUE as JSON (width=0.5, use_bn=true, hidden=[64]); "
             "repeatable, replaces the preset's model_kwargs")
    precision: str = option("fp32", choices=PRECISIONS,
                            help="compute precision; params, optimizer state and the loss stay "
                                 "float32")

    def validate(self) -> None:
        """ValueError naming the first invalid field."""
        check_options(self)
        if "dtype" in self.model_kwargs or "num_classes" in self.model_kwargs:
            raise bad("model_kwargs", dict(self.model_kwargs),
                      "free of 'dtype' (use precision) and 'num_classes' (set by the dataset)")

    def resolve(self) -> "ModelConfig":
        """List values of ``model_kwargs`` (from JSON) become tuples (Flax attributes are
        hashable)."""
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_kwargs.items()}
        return dataclasses.replace(self, model_kwargs=kw)
