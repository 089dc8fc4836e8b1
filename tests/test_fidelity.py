"""The paper preset's first SFW steps follow the reference instead of diverging (init-norm rule)."""

import jax
import numpy as np
import pytest

from experiments import fidelity


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return x, y


@pytest.mark.slow
def test_paper_preset_steps_stay_near_the_start_with_the_reference_rule():
    # A quarter-width ResNet-18 keeps the BatchNorm widths (16..128 channels) where per-leaf
    # norms give BatchNorm scales a K-sparse radius 4-11x the reference's.
    tx, ty = _synthetic(64, 0)
    ex, ey = _synthetic(64, 1)
    kw = dict(passes=2, batch_size=16, model_kwargs={"width": 0.25}, init_norm_samples=4)
    ref = fidelity.run_fidelity(tx, ty, ex, ey, init_norm_rule="reference", **kw)
    losses = ref["train_losses"]
    assert len(losses) == 8
    assert max(losses) < 1.5 * losses[0]
    # random labels and 8 steps of running statistics: eval stays near chance (ln 10 = 2.3)
    assert np.isfinite(ref["eval_loss"]) and ref["eval_loss"] < 5.0
    assert ref["min_nnz_minus_k"] >= 0
    # the per-leaf rule (BatchNorm scales with radius sqrt(C) times larger) blows up
    leaf = fidelity.run_fidelity(tx, ty, ex, ey, init_norm_rule="per_leaf", **kw)
    assert max(leaf["train_losses"]) > 1.5 * leaf["train_losses"][0]
    assert leaf["eval_loss"] > 100.0


def test_unbiased_running_var_matches_pytorch_average():
    # PyTorch: v <- 0.9 v + 0.1 s^2 N/(N-1); Flax: v <- 0.9 v + 0.1 s^2; both from v = 1.
    rng = np.random.default_rng(0)
    batch_vars = rng.uniform(0.5, 2.0, size=(5, 3))
    n = 7
    flax_v, torch_v = np.ones(3), np.ones(3)
    for s2 in batch_vars:
        flax_v = 0.9 * flax_v + 0.1 * s2
        torch_v = 0.9 * torch_v + 0.1 * s2 * n / (n - 1)
    stats = {"bn": {"mean": np.zeros(3), "var": flax_v}}
    sizes = {"bn": {"mean": n, "var": n}}
    out = fidelity.unbiased_running_var(stats, sizes, steps=5)
    np.testing.assert_allclose(out["bn"]["var"], torch_v, rtol=1e-12)
    np.testing.assert_array_equal(out["bn"]["mean"], np.zeros(3))


def test_bn_sizes_are_batch_times_spatial():
    from sfw_jax.training.models import get_model
    import jax.numpy as jnp
    model = get_model("resnet18", 10, width=0.25)
    x = jnp.zeros((4, 32, 32, 3))
    variables = model.init(jax.random.key(0), x[:1], train=False)
    sizes = fidelity._bn_sizes(model, variables, x)
    assert sizes["bn1"]["var"] == 4 * 32 * 32
    assert sizes["layer4_1"]["bn2"]["var"] == 4 * 4 * 4
