"""The data options of a run: which dataset, where, its validation split and augmentation."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from sfw_jax.training.config._option import bad, check_options, option


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What :func:`sfw_jax.training.datasets.load_dataset` loads and how the loop feeds it."""

    GROUP: ClassVar[str] = "data"

    dataset: str = option("digits", help="dataset name: 'digits' (embedded, offline), "
                          "'cifar10', 'idx', 'imagefolder', ... (docs/training.md, Data)")
    data_dir: str | None = option(None, help="local dataset folder or archive",
                                  resume_may_differ=True, per_process=True)
    val_fraction: float = option(0.1, lo=0.0, hi=1.0, hi_open=True,
                                 help="fraction of the training set held out for validation")
    image_size: int | None = option(None, lo=1, help="resize images to this side length")
    max_train_samples: int | None = option(
        None, lo=1, help="train on a seeded random subset of N training samples (smoke runs)")
    augment: bool | None = option(None, help="random crop (pad 4) + horizontal flip in the "
                                  "train step; None: on for datasets named cifar*")

    def validate(self) -> None:
        """ValueError naming the first invalid field."""
        check_options(self)
        if not self.dataset:
            raise bad("dataset", self.dataset, "a non-empty dataset name")

    def resolve(self) -> "DataConfig":
        """``augment=None`` -> on for CIFAR-like datasets (name starts with 'cifar')."""
        if self.augment is not None:
            return self
        return dataclasses.replace(self, augment=self.dataset.lower().startswith("cifar"))
