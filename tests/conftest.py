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


TINY_LM = dict(arch="transformer_lm",
               model_kwargs={"width": 32, "depth": 1, "heads": 2, "context": 16},
               dataset="text")
"""The tiny Transformer of the language-model tests (width 32, 1 block, context 16)."""


def write_text_corpus(root, files: int = 24, words: int = 120, seed: int = 0) -> str:
    """A folder of ``files`` small text files (a seeded word salad with Python-like lines)
    whose names put files in each of the train / validation / test splits; returns its path."""
    import os
    import random

    from sfw_jax.training.datasets._text import split_of

    rng = random.Random(seed)
    vocab = ("def class return self import for in if else while print value data "
             "x y z = ( ) : + 1 2 3").split()
    names, i = [], 0
    need = {"train", "val", "test"}
    while len(names) < files or need:
        name = f"pkg/mod_{i:03d}.py"
        i += 1
        s = split_of(name.split("/", 1)[1], 0.1)
        if len(names) < files or s in need:
            names.append(name)
            need.discard(s)
    for name in names:
        path = os.path.join(str(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lines = [" ".join(rng.choice(vocab) for _ in range(8)) for _ in range(words // 8)]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> str:
    """A tiny text corpus folder (:func:`write_text_corpus`)."""
    return write_text_corpus(tmp_path_factory.mktemp("corpus"))


def train_tiny_lm(out_dir: str | None, corpus: str, **overrides):
    """Train the tiny Transformer (``TINY_LM``) on ``corpus``; returns the TrainResult."""
    from sfw_jax.training.loop import train
    base = dict(**TINY_LM, data_dir=corpus, optimizer="adamw", lr=3e-3, epochs=1,
                batch_size=16, eval_batch_size=64, keep_checkpoints=1, progress=False,
                out_dir=out_dir)
    base.update(overrides)
    return train(TrainConfig(**base))


@pytest.fixture(scope="session")
def tiny_lm_run(tmp_path_factory, text_corpus) -> str:
    """A finished 2-epoch AdamW run of the tiny Transformer on ``text_corpus`` (its folder)."""
    out = str(tmp_path_factory.mktemp("lm") / "run")
    train_tiny_lm(out, text_corpus, epochs=2)
    return out
