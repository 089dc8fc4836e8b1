"""Named training configs: ``PRESETS`` maps a name to ``TrainConfig`` field overrides;
:func:`from_preset` applies one, then explicit overrides on top."""

from __future__ import annotations

from typing import Any

from sfw_jax.training.config import TrainConfig

__all__ = ["PRESETS", "preset_names", "from_preset"]


# The reference's CIFAR-10 defaults (Lu et al. 2022, published code): SFW on every tensor,
# K-sparse with k=10 / k_frac=5%, tau=15 'initialization' diameters, lr 1.0 with gradient
# rescaling, momentum 0.9, batch 128, 180 epochs, 'dynamic_change' schedule fed the last batch's
# loss, no decay, all 50k training images.
_PAPER_SFW = dict(
    dataset="cifar10", optimizer="sfw", constraint="k_sparse", k=10, k_frac=0.05, tau=15.0,
    mode="initialization", rescale="gradient", sfw_scope="all", init_norm_samples=100,
    init_norm_rule="reference", lr=1.0, lr_schedule="dynamic_change", trend_loss="last_batch",
    momentum=0.9, weight_decay=0.0, epochs=180, batch_size=128, augment=True, val_fraction=0.0)

PRESETS: dict[str, dict[str, Any]] = {
    "paper-resnet18-cifar10": dict(arch="resnet18", **_PAPER_SFW),
    "paper-vgg16-cifar10": dict(arch="vgg16", **_PAPER_SFW),
    # The SGD baseline of the same setting (lr 0.1, momentum 0.9, decay 5e-4, /10 at E/3, 2E/3).
    "paper-resnet18-cifar10-sgd": dict(
        arch="resnet18", dataset="cifar10", optimizer="sgd", lr=0.1, lr_schedule="step",
        momentum=0.9, weight_decay=5e-4, epochs=180, batch_size=128, augment=True,
        val_fraction=0.0),
    # The offline quickstart's SFW run on sklearn's 8x8 digits; tau and k_frac chosen on the
    # validation split (dense and 90-97% one-shot accuracy). The XLA path (cpu_kernel=False)
    # makes the run bitwise the same on every machine.
    "quickstart-digits": dict(
        arch="simple_cnn", model_kwargs={"width": 0.5}, dataset="digits", optimizer="sfw",
        constraint="k_sparse", k=10, k_frac=0.02, tau=10.0, mode="initialization",
        rescale="gradient", sfw_scope="all", init_norm_samples=20, init_norm_rule="per_leaf",
        lr=1.0, lr_schedule="step", momentum=0.9, weight_decay=0.0, epochs=30, batch_size=64,
        augment=False, val_fraction=0.1, cpu_kernel=False),
    # A CPU-sized CIFAR-10 run on the JPEG image-folder copy (unpacked to data/cifar10-jpeg),
    # the base of the cifar10-cpu studies (experiments/study_presets.py); the XLA path, so that
    # the runs reproduce bitwise.
    "cpu-simplecnn-cifar10": dict(
        arch="simple_cnn", model_kwargs={"width": 0.5, "use_bn": True}, dataset="cifar10",
        data_dir="data/cifar10-jpeg", optimizer="sfw", constraint="k_sparse", k=10,
        k_frac=0.05, tau=15.0, mode="initialization", rescale="gradient", sfw_scope="all",
        init_norm_samples=20, lr=1.0, lr_schedule="dynamic_change", momentum=0.9,
        weight_decay=0.0, epochs=15, batch_size=128, augment=True, val_fraction=0.1,
        cpu_kernel=False),
}


def preset_names() -> list[str]:
    """Sorted preset names."""
    return sorted(PRESETS)


def from_preset(name: str | None, **overrides: Any) -> TrainConfig:
    """``TrainConfig()`` with preset ``name`` (None: no preset) applied, then ``overrides``."""
    cfg = TrainConfig()
    if name is not None:
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {preset_names()}, got {name!r}")
        cfg = cfg.replace(**PRESETS[name])
    return cfg.replace(**overrides)
