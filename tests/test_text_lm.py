"""The byte-level language model: ``transformer_lm``, the ``text`` dataset, training with
sequence outputs (bits per byte), and the 'adamw' / 'adam_sfw' optimizers. A tiny Transformer
(width 32, one block, context 16) on a tiny corpus written by the tests keeps it cheap."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sfw_jax import contains_all, is_kernel
from sfw_jax._selectors import select_leaves
from sfw_jax._tree import flat_paths
from sfw_jax.training import optimizers as opt_lib
from sfw_jax.training.config import TrainConfig, validate
from sfw_jax.training.datasets import DataFormatError, load_dataset
from sfw_jax.training.datasets._text import (TokenSplit, inputs_targets, load_text, read_files,
                                             split_of, windows)
from sfw_jax.training.models import get_model, model_context
from tests.conftest import TINY_LM, train_tiny_lm

CPYTHON = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "text",
                       "cpython-3.11.7-lib.tar.gz")
KEY = jax.random.key(0)


def tiny_model(**kw):
    return get_model("transformer_lm", 256, **{**TINY_LM["model_kwargs"], **kw})


@pytest.fixture(scope="module")
def tiny_params():
    return tiny_model().init(KEY, jnp.zeros((1, 16), jnp.int32))["params"]


# ---------------------------------------------------------------- model

def test_transformer_shapes_names_and_count(tiny_params):
    shapes = {p: x.shape for p, x in flat_paths(tiny_params)}
    d, f = 32, 128
    assert shapes["tok_embed/embedding"] == (256, d)
    assert shapes["pos_embed/embedding"] == (16, d)
    for n in ("query", "key", "value", "out"):
        assert shapes[f"block_0/attn/{n}/kernel"] == (d, d)
    assert shapes["block_0/mlp/fc1/kernel"] == (d, f)
    assert shapes["block_0/mlp/fc2/kernel"] == (f, d)
    # 4 d^2 + 2 d f kernels, their biases, 2 LayerNorms per block + ln_f, the two embeddings;
    # no head: it is tied to the token embedding.
    blocks = 4 * d * d + 2 * d * f + (4 * d + f + d) + 2 * 2 * d
    assert sum(x.size for x in jax.tree.leaves(tiny_params)) == blocks + 2 * d + (256 + 16) * d
    assert not any("head" in p for p in shapes)


def test_kernel_scope_is_exactly_the_attention_and_mlp_kernels(tiny_params):
    picked = {p for p, keep in flat_paths(select_leaves(tiny_params, None, is_kernel)) if keep}
    assert picked == {f"block_0/attn/{n}/kernel" for n in ("query", "key", "value", "out")} | {
        "block_0/mlp/fc1/kernel", "block_0/mlp/fc2/kernel"}


def test_logits_are_causal_and_use_the_tied_embedding(tiny_params):
    model = tiny_model()
    t = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    logits = model.apply({"params": tiny_params}, t)
    assert logits.shape == (2, 16, 256)
    changed = model.apply({"params": tiny_params}, t.at[:, 9].set((t[:, 9] + 7) % 256))
    diff = np.abs(np.asarray(logits - changed)).max(axis=(0, 2))
    assert np.all(diff[:9] == 0) and np.all(diff[9:] > 0)
    # The head is the token embedding transposed: with a zero table every logit is 0.
    zero = {**tiny_params, "tok_embed": {"embedding": jnp.zeros((256, 32))}}
    assert float(jnp.abs(model.apply({"params": zero}, t)).max()) == 0.0


@pytest.mark.parametrize("kw, match", [
    ({"width": 30, "heads": 4}, "width must be a multiple of heads"),
    ({"depth": 0}, "depth must be an int >= 1"),
    ({"context": 2.0}, "context must be an int >= 1")])
def test_transformer_rejects_bad_attributes(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(**kw)


def test_transformer_rejects_sequences_longer_than_context(tiny_params):
    with pytest.raises(ValueError, match="1 <= T <= context=16"):
        tiny_model().apply({"params": tiny_params}, jnp.zeros((1, 17), jnp.int32))


def test_model_context():
    assert model_context("transformer_lm", {"context": 64}) == 64
    assert model_context("transformer_lm") == 128
    assert model_context("simple_cnn", {"width": 0.5}) is None


# ---------------------------------------------------------------- dataset

def test_split_of_is_the_documented_fixed_hash():
    for name in ("a.py", "email/parser.py", "LICENSE.txt"):
        u = int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) / 2 ** 64
        want = "test" if u < 0.1 else "val" if u < 0.2 else "train"
        assert split_of(name, 0.1) == want
        # the test files do not depend on val_fraction
        assert (split_of(name, 0.3) == "test") == (want == "test")


def test_windows_overlap_by_one_byte_and_cover_the_stream():
    stream = bytes(range(50))
    w = windows(stream, 8)
    assert w.shape == (7, 8) and w.dtype == np.uint8      # (50 - 1) // 7 = 7
    np.testing.assert_array_equal(w[1:, 0], w[:-1, -1])
    rebuilt = np.concatenate([w[0], *(row[1:] for row in w[1:])])
    np.testing.assert_array_equal(rebuilt, np.arange(50)[:len(rebuilt)])
    x, y = inputs_targets(w)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    assert windows(b"abc", 8).shape == (0, 8)


def test_text_dataset_splits_by_file(text_corpus):
    ds = load_dataset("text", data_dir=text_corpus, context=16)
    files = read_files(text_corpus)
    assert ds.info.num_classes == 256 and ds.info.sequence_length == 16
    for split_name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        assert isinstance(split, TokenSplit) and split.seq_len == 16 and len(split) > 0
        stream = b"".join(files[n] for n in sorted(files) if split_of(n, 0.1) == split_name)
        np.testing.assert_array_equal(split.tokens, windows(stream, 17))
    # every file lands in exactly one split: the streams partition all the text
    total = sum(len(b) for b in files.values())
    assert all(not n.startswith("pkg/") for n in files)      # the common top folder dropped
    covered = sum(len(s) * 16 + 1 for s in (ds.train, ds.val, ds.test))
    assert covered <= total < covered + 3 * 17


def test_archive_and_folder_give_the_same_dataset(text_corpus, tmp_path):
    archive = tmp_path / "corpus.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(text_corpus, "pkg"), arcname="pkg")
    a = load_text(str(archive), 16)
    b = load_text(text_corpus, 16)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, s).tokens, getattr(b, s).tokens)


def test_text_dataset_errors(tmp_path, text_corpus):
    with pytest.raises(ValueError, match="data_dir is required"):
        load_text(None, 16)
    with pytest.raises(ValueError, match="context must be an int >= 1"):
        load_dataset("text", data_dir=text_corpus)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="holds no files"):
        load_text(str(tmp_path / "empty"), 16)
    with pytest.raises(DataFormatError, match="holds no window of 100001 bytes"):
        load_text(text_corpus, 100000)


@pytest.mark.skipif(not os.path.isfile(CPYTHON),
                    reason=f"the shared text corpus {CPYTHON} is absent (see shared/data/README.md)")
def test_real_corpus_splits_by_file():
    files = read_files(CPYTHON)
    assert len(files) == 386 and "LICENSE.txt" in files and "json/decoder.py" in files
    ds = load_text(CPYTHON, 128)
    n = {s: len(getattr(ds, s)) for s in ("train", "val", "test")}
    by_split = {s: sum(len(b) for f, b in files.items() if split_of(f, 0.1) == s)
                for s in ("train", "val", "test")}
    for s in n:
        assert n[s] == (by_split[s] - 1) // 128
    assert by_split["train"] > 0.7 * sum(by_split.values())


# ---------------------------------------------------------------- training

def test_lm_run_learns_and_reports_bits_per_byte(tmp_path, text_corpus):
    out = str(tmp_path / "run")
    res = train_tiny_lm(out, text_corpus, epochs=2)
    hist = res.history
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] < math.log(256)
    final = json.load(open(os.path.join(out, "final.json")))
    assert final["test_bits_per_byte"] == pytest.approx(final["test_loss"] / math.log(2))
    assert hist[-1]["val_bits_per_byte"] == pytest.approx(hist[-1]["val_loss"] / math.log(2))
    # The evaluator's mean over every next-byte position, against a direct computation.
    ds = res.dataset
    x, y = inputs_targets(ds.test.tokens)
    logits = res.model.apply({"params": res.state.params}, jnp.asarray(x))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y))
    assert final["test_loss"] == pytest.approx(float(ce.mean()), rel=1e-5)
    acc = float(np.mean(np.argmax(np.asarray(logits), -1) == y))
    assert final["test_acc"] == pytest.approx(acc, abs=1e-12)
    n = len(ds.train) // 16
    assert int(res.state.step) == 2 * n


def test_adam_sfw_keeps_kernels_feasible_and_trains_the_rest_with_adamw(text_corpus):
    res = train_tiny_lm(None, text_corpus, optimizer="adam_sfw", sfw_scope="kernels", lr=0.01,
                        rest_lr=3e-3, k_frac=0.1, tau=5.0, init_norm_samples=2,
                        cpu_kernel=False, epochs=1)
    assert contains_all(res.state.params, res.constraints)
    constrained = {p for p, c in flat_paths(res.constraints, is_leaf=lambda c: hasattr(
        c, "constrained")) if c.constrained}
    assert constrained == {p for p, keep in flat_paths(
        select_leaves(res.state.params, None, is_kernel)) if keep}
    assert res.history[0]["train_loss"] < math.log(256)


def test_adam_sfw_update_is_adam_direction_into_frank_wolfe_and_adamw_elsewhere():
    """Two steps by hand: the constrained leaf moves by eta (v - x), v the K-sparse vertex of
    Adam's direction d (optax.scale_by_adam on its gradients alone), eta = lr ||d|| / ||x - v||;
    the bias gets exactly optax.adamw's updates."""
    from sfw_jax import k_sparse_lmo, make_constraints
    params = {"k": jnp.asarray([[0.1, -0.2], [0.05, 0.0]]), "b": jnp.asarray([0.3, -0.1])}
    g1 = {"k": jnp.asarray([[1.0, -2.0], [0.5, 4.0]]), "b": jnp.asarray([0.2, -0.4])}
    g2 = {"k": jnp.asarray([[-3.0, 1.0], [0.5, 0.1]]), "b": jnp.asarray([0.1, 0.3])}
    cons = make_constraints(params, "k_sparse", k=1, k_frac=0.25, value=1.0, mode="radius",
                            where=lambda p, x: np.ndim(x) >= 2)
    cfg = validate(TrainConfig(**TINY_LM, optimizer="adam_sfw", sfw_scope="kernels", lr=0.1,
                               rest_lr=0.01, weight_decay=0.0))
    tx = opt_lib.build_optimizer(cfg, cons)
    adam, rest = optax.scale_by_adam(), optax.adamw(0.01, weight_decay=0.0)
    state, a_state, r_state = tx.init(params), adam.init(params["k"]), rest.init(params["b"])
    for g in (g1, g2):
        upd, state = tx.update(g, state, params)
        d, a_state = adam.update(g["k"], a_state)
        v = k_sparse_lmo(d, 1, 1.0)
        x = params["k"]
        eta = min(0.1 * float(jnp.linalg.norm(d)) / float(jnp.linalg.norm(x - v)), 1.0)
        np.testing.assert_allclose(upd["k"], eta * (v - x), rtol=1e-5, atol=1e-7)
        want, r_state = rest.update(g["b"], r_state, params["b"])
        np.testing.assert_allclose(upd["b"], want, rtol=1e-6)
        params = optax.apply_updates(params, upd)


def test_adamw_decays_only_leaves_of_rank_two_or_more():
    params = {"k": jnp.ones((2, 2)), "b": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    cfg = validate(TrainConfig(**TINY_LM, optimizer="adamw", lr=0.1, weight_decay=0.5))
    tx = opt_lib.build_optimizer(cfg)
    upd, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(upd["k"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(upd["b"], np.zeros(2))


@pytest.mark.parametrize("kw, match", [
    (dict(arch="simple_cnn", model_kwargs={}), "arch must be a sequence model"),
    (dict(dataset="digits"), "dataset must be one of \\['text'\\]"),
    (dict(augment=True), "image options"),
    (dict(optimizer="adam_sfw", delay_lmo=0.3), "adam_sfw' takes no constraint schedule"),
    (dict(optimizer="adam_sfw", weight_decay=0.1),
     "weight_decay=0.1 conflicts with optimizer='adam_sfw' and sfw_scope='all'")])
def test_language_model_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        validate(TrainConfig(**{**TINY_LM, **kw}))


def test_optimizer_defaults():
    cfg = validate(TrainConfig(**TINY_LM, optimizer="adam_sfw"))
    assert (cfg.lr, cfg.rest_lr, cfg.weight_decay, cfg.lr_schedule) == (0.01, 1e-3, 0.0,
                                                                         "cosine")
    cfg = validate(TrainConfig(**TINY_LM, optimizer="adamw"))
    assert (cfg.lr, cfg.weight_decay, cfg.lr_schedule) == (1e-3, 0.1, "cosine")
    assert validate(TrainConfig()).rest_lr == 0.1
