"""Shared fixtures."""

from __future__ import annotations

import functools

import pytest

from sfw_jax.training.config import TrainConfig


def train_tiny_digits_sgd(out_dir: str, epochs: int) -> str:
    """Train a tiny SGD SimpleCNN (width 0.25, BatchNorm) on the embedded digits into
    ``out_dir`` (checkpoint kept) and return ``out_dir``."""
    from sfw_jax.training.loop import train
    cfg = TrainConfig(arch="simple_cnn", model_kwargs={"width": 0.25, "use_bn": True},
                      dataset="digits", optimizer="sgd", lr=0.05, weight_decay=5e-4,
                      lr_schedule="constant", epochs=epochs, batch_size=64, augment=False,
                      keep_checkpoints=1, progress=False, out_dir=out_dir)
    train(cfg)
    return out_dir


@pytest.fixture(scope="module")
def tiny_digits_run_factory(tmp_path_factory):
    """``make(name, epochs) -> out_dir`` of a finished tiny digits run (see above)."""
    def make(name: str, epochs: int) -> str:
        return train_tiny_digits_sgd(str(tmp_path_factory.mktemp(name) / "run"), epochs)
    return make


@pytest.fixture(scope="module")
def run_dir(tiny_digits_run_factory, request) -> str:
    """A finished tiny digits run of ``RUN_EPOCHS`` epochs (a module constant, default 1),
    one per test module."""
    return tiny_digits_run_factory(request.module.__name__.rsplit(".", 1)[-1],
                                   epochs=getattr(request.module, "RUN_EPOCHS", 1))


@pytest.fixture(scope="module")
def run(run_dir):
    """``run_dir`` loaded back (:func:`experiments._loaded_run.load_trained`)."""
    from experiments._loaded_run import load_trained
    return load_trained(run_dir)


def forbid_calls(monkeypatch, *targets) -> None:
    """Make every ``(module, attribute name)`` in ``targets`` raise AssertionError('work was
    redone') when called (for checks that a resumed run reuses its results)."""
    def fail(*a, **k):
        raise AssertionError("work was redone")

    for module, name in targets:
        monkeypatch.setattr(module, name, fail)


def fresh_native_kernel(monkeypatch, tmp_path) -> None:
    """Forget this process's build of the native CPU kernel (restored after the test): an empty
    cache folder and uncached ``ensure_registered`` / ``unavailable_reason``."""
    from sfw_jax.fw import native
    monkeypatch.setenv("SFW_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "ensure_registered",
                        functools.lru_cache(native.ensure_registered.__wrapped__))
    monkeypatch.setattr(native, "unavailable_reason",
                        functools.lru_cache(native.unavailable_reason.__wrapped__))
