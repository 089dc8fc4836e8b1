"""Masks for language models: per-output-row magnitude, N:M 2:4 along the input dimension, and
Wanda (|W_ij| ||X_j||_2 per output, activation norms captured from the Dense layers' inputs),
each against an independent NumPy computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfw_jax import nm_mask, row_mask
from sfw_jax._tree import flat_paths
from sfw_jax.pruning import input_norms, wanda_mask, wanda_nm_mask, wanda_scores
from sfw_jax.training.models import get_model
from tests.conftest import TINY_LM


def _np_row_keep(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Per output (last axis): prune the round(s * fan_in) smallest |scores| (stable order)."""
    s = np.abs(scores).reshape(-1, scores.shape[-1])
    k = round(sparsity * s.shape[0])
    keep = np.ones_like(s, bool)
    for o in range(s.shape[1]):
        keep[np.argsort(s[:, o], kind="stable")[:k], o] = False
    return keep.reshape(scores.shape)


def _np_nm_keep(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """In every group of m consecutive inputs (axis -2) of each output keep the n largest."""
    s = np.abs(scores)
    keep = np.zeros_like(s, bool)
    for g in range(0, s.shape[0], m):
        for o in range(s.shape[1]):
            top = np.argsort(-s[g:g + m, o], kind="stable")[:n]
            keep[g + top, o] = True
    return keep


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_row_mask_prunes_exactly_per_output_unit(sparsity):
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(10, 6)).astype(np.float32),
                        "bias": rng.normal(size=6).astype(np.float32)},
              "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}}
    params["dense"]["kernel"][:4, 0] = 0.5          # ties: lower input index pruned first
    mask = row_mask(params, sparsity)
    np.testing.assert_array_equal(mask["dense"]["kernel"],
                                  _np_row_keep(params["dense"]["kernel"], sparsity))
    np.testing.assert_array_equal(mask["conv"]["kernel"],
                                  _np_row_keep(params["conv"]["kernel"], sparsity))
    assert np.all(mask["dense"]["bias"])
    per_unit = np.asarray(mask["dense"]["kernel"]).sum(axis=0)
    assert np.all(per_unit == 10 - round(sparsity * 10))


def test_row_mask_rejects_rank_one_leaves():
    with pytest.raises(ValueError, match="rank >= 2"):
        row_mask({"b": jnp.ones(3)}, 0.5, include=lambda p, x: True)


def test_nm_mask_2_4_groups_exact_on_transformer_kernels_only():
    model = get_model("transformer_lm", 256, **TINY_LM["model_kwargs"])
    params = model.init(jax.random.key(3), jnp.zeros((1, 16), jnp.int32))["params"]
    mask = nm_mask(params, 2, 4)
    for path, m in flat_paths(mask):
        m = np.asarray(m)
        if path.endswith("kernel"):
            groups = m.reshape(-1, 4, m.shape[-1]).sum(axis=1)
            assert np.all(groups == 2), path
        else:                                  # embeddings, norms, biases stay dense
            assert m.all(), path
    w = np.asarray(params["block_0"]["mlp"]["fc2"]["kernel"])
    np.testing.assert_array_equal(mask["block_0"]["mlp"]["fc2"]["kernel"], _np_nm_keep(w, 2, 4))


@pytest.fixture(scope="module")
def mlp_case():
    """A 2-layer MLP, its params and three calibration batches."""
    model = get_model("mlp", 5, hidden=(8,))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 12)))
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(7, 12)).astype(np.float32) for _ in range(3)]
    return model, variables, batches


def test_wanda_norms_scores_and_masks_equal_numpy(mlp_case):
    model, variables, batches = mlp_case
    p = jax.tree.map(np.asarray, variables["params"])
    x = np.concatenate(batches)
    h = np.maximum(x @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)  # the input of 'out'
    want_norms = {"fc1": np.sqrt((x.astype(np.float64) ** 2).sum(0)),
                  "out": np.sqrt((h.astype(np.float64) ** 2).sum(0))}
    norms = input_norms(model, variables, batches)
    for layer in ("fc1", "out"):
        np.testing.assert_allclose(norms[layer]["kernel"][:, 0], want_norms[layer], rtol=1e-5)
        assert np.shape(norms[layer]["bias"]) == ()
    for layer, s in (("fc1", 0.5), ("out", 0.5)):
        scores = np.abs(p[layer]["kernel"]) * want_norms[layer][:, None]
        np.testing.assert_allclose(wanda_scores(variables["params"], norms)[layer]["kernel"],
                                   scores, rtol=1e-5)
        mask = wanda_mask(variables["params"], norms, s)
        np.testing.assert_array_equal(mask[layer]["kernel"], _np_row_keep(scores, s))
        assert np.all(mask[layer]["bias"])
    # 2:4 along the inputs of fc1 (12 inputs); 'out' has 8 inputs: grouped too
    mask = wanda_nm_mask(variables["params"], norms, 2, 4)
    scores = np.abs(p["fc1"]["kernel"]) * want_norms["fc1"][:, None]
    np.testing.assert_array_equal(mask["fc1"]["kernel"], _np_nm_keep(scores, 2, 4))


def test_wanda_differs_from_magnitude_when_inputs_have_unequal_scale(mlp_case):
    """With feature 0 of the input scaled by 100, Wanda keeps fc1's row 0 entirely, magnitude
    pruning (the same per-row ranking of |W|) does not."""
    model, variables, batches = mlp_case
    scaled = [b * np.r_[100.0, np.ones(11)].astype(np.float32) for b in batches]
    norms = input_norms(model, variables, scaled)
    wanda = np.asarray(wanda_mask(variables["params"], norms, 0.75)["fc1"]["kernel"])
    magnitude = np.asarray(row_mask(variables["params"], 0.75)["fc1"]["kernel"])
    assert wanda[0].all() and not magnitude[0].all()


def test_transformer_attention_inputs_share_norms():
    """query, key and value read the same LayerNorm output: equal activation norms; the
    embeddings get no norms (not Dense kernels)."""
    model = get_model("transformer_lm", 256, **TINY_LM["model_kwargs"])
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    toks = [np.random.default_rng(i).integers(0, 256, (4, 16)).astype(np.int32)
            for i in range(2)]
    norms = input_norms(model, variables, toks)
    attn = norms["block_0"]["attn"]
    np.testing.assert_allclose(attn["query"]["kernel"], attn["key"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(attn["query"]["kernel"], attn["value"]["kernel"], rtol=1e-6)
    assert norms["block_0"]["mlp"]["fc2"]["kernel"].shape == (128, 1)
    assert np.shape(norms["tok_embed"]["embedding"]) == ()
    mask = wanda_mask(variables["params"], norms, 0.5)
    kept = {p: float(np.mean(m)) for p, m in flat_paths(mask)}
    assert kept["block_0/mlp/fc1/kernel"] == 0.5 and kept["tok_embed/embedding"] == 1.0


def test_input_norms_needs_a_batch(mlp_case):
    model, variables, _ = mlp_case
    with pytest.raises(ValueError, match="at least one batch"):
        input_norms(model, variables, [])
