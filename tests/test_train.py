"""Training engine: feasibility under SFW, kernels-only partition, resume equivalence,
non-finite loss handling, preconditions. Tiny synthetic data and an MLP keep it fast."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sfw_jax import contains_all, make_feasible
from sfw_jax.training import optimizers as opt_lib
from sfw_jax.training import loop as train_lib
from sfw_jax.training.checkpoint import Checkpointer
from sfw_jax.training.config import TrainConfig, validate
from sfw_jax.training.datasets import Dataset, DatasetInfo, Split

MLP = dict(arch="mlp", model_kwargs={"hidden": (32,)})


def tiny_dataset(n_train: int = 256, n_val: int = 64, n_test: int = 64, classes: int = 4,
                 hw: int = 8, seed: int = 0) -> Dataset:
    """Synthetic 8x8x1 images: class c brightens quadrant c (+40) on uniform noise (0..199)."""
    rng = np.random.default_rng(seed)
    q = hw // 2

    def split(n):
        y = rng.integers(0, classes, n).astype(np.int32)
        x = rng.integers(0, 200, (n, hw, hw, 1))
        for c in range(classes):
            r0, c0 = (c // 2) * q, (c % 2) * q
            x[y == c, r0:r0 + q, c0:c0 + q, 0] += 40
        return Split(x.astype(np.uint8), y)

    info = DatasetInfo(name="tiny", num_classes=classes, image_shape=(hw, hw, 1),
                       mean=np.array([0.3], np.float32), std=np.array([0.3], np.float32),
                       class_names=tuple(str(c) for c in range(classes)),
                       source="synthetic:tests")
    return Dataset(split(n_train), split(n_val), split(n_test), info)


def small_config(**kw) -> TrainConfig:
    base = dict(**MLP, dataset="tiny", optimizer="sfw", constraint="k_sparse", k=4, k_frac=0.1,
                tau=5.0, init_norm_samples=4, lr=1.0, lr_schedule="constant", epochs=2,
                batch_size=32, eval_batch_size=64, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_sfw_run_stays_feasible_learns_and_logs(tmp_path):
    ds = tiny_dataset()
    out = str(tmp_path / "run")
    res = train_lib.train(small_config(epochs=3, out_dir=out), ds)
    # Every tensor (biases too: the reference's scope) stays in its K-sparse polytope.
    assert contains_all(res.state.params, res.constraints)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.test["accuracy"] > 0.6  # 4 classes: chance is 0.25
    assert int(res.state.step) == 3 * (256 // 32)
    lines = [json.loads(s) for s in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time",
                "weight_counts", "n_params"):
        assert key in lines[0]
    assert lines == res.history
    saved = json.load(open(os.path.join(out, "config.json")))
    assert saved == validate(small_config(epochs=3, out_dir=out)).to_dict()
    final = json.load(open(os.path.join(out, "final.json")))
    assert final["test_acc"] == res.test["accuracy"]
    # The evaluator agrees with the final record's validation accuracy.
    val = res.evaluator(res.state.params, res.state.batch_stats, ds.val)
    assert val["accuracy"] == pytest.approx(lines[-1]["val_acc"], abs=1e-12)


def test_kernels_only_partition_routes_bias_and_bn_to_sgd():
    key = jax.random.PRNGKey(0)
    ks = jax.random.split(key, 4)
    params = {"conv": {"kernel": jax.random.normal(ks[0], (3, 3, 1, 4))},
              "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
              "fc": {"kernel": jax.random.normal(ks[1], (4, 3)), "bias": jnp.zeros(3)}}
    grads = jax.tree.map(lambda p, k: jax.random.normal(k, p.shape),
                         params, jax.tree.unflatten(jax.tree.structure(params),
                                                    list(jax.random.split(ks[2], 5))))
    cfg = validate(TrainConfig(optimizer="sfw", sfw_scope="kernels", constraint="k_sparse",
                               mode="radius", tau=1.0, k=3, lr=0.5, rest_lr=0.05,
                               momentum=0.9, weight_decay=0.01))
    c = opt_lib.build_constraints(cfg, params)
    labels = opt_lib.param_labels(c)
    assert labels == {"conv": {"kernel": "sfw"}, "bn": {"scale": "sgd", "bias": "sgd"},
                      "fc": {"kernel": "sfw", "bias": "sgd"}}
    params = make_feasible(params, c)
    tx = opt_lib.build_optimizer(cfg, c)
    state = tx.init(params)
    upd, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, upd)
    # SGD leaves, first step: update = -lr * (g + wd * w).
    for path in (("bn", "scale"), ("bn", "bias"), ("fc", "bias")):
        g, w, u = (t[path[0]][path[1]] for t in (grads, params, upd))
        np.testing.assert_allclose(u, -0.05 * (g + 0.01 * w), rtol=1e-6)
    # SFW leaves: x <- (1 - eta) x + eta v stays feasible; the step is not an SGD step.
    assert contains_all({"conv": new["conv"]["kernel"], "fc": new["fc"]["kernel"]},
                        {"conv": c["conv"]["kernel"], "fc": c["fc"]["kernel"]})
    assert not np.allclose(upd["fc"]["kernel"], -0.05 * grads["fc"]["kernel"])
    # The schedule scales both learning rates together.
    state = opt_lib.set_learning_rates(state, cfg, 0.05)
    assert opt_lib.get_learning_rates(state) == pytest.approx(
        {"learning_rate": 0.05, "rest_learning_rate": 0.005})


def test_lp_order_gives_constraint_lp_its_order():
    """``lp_order`` is the p of ``constraint='lp'``: each leaf gets the L_p ball of the
    configured L2 diameter, and an SFW step from a feasible point stays inside it."""
    params = {"w": jnp.full((6, 5), 0.01), "b": jnp.zeros(5)}
    grads = {"w": jax.random.normal(jax.random.PRNGKey(0), (6, 5)), "b": jnp.ones(5)}
    cfg = validate(TrainConfig(constraint="lp", lp_order=3.0, mode="diameter", tau=2.0))
    c = opt_lib.build_constraints(cfg, params)
    assert (c["w"].p, c["w"].n, c["b"].p) == (3.0, 30, 3.0)
    assert c["w"].diameter == pytest.approx(2.0)
    tx = opt_lib.build_optimizer(cfg, c)
    upd, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, upd)
    assert contains_all(new, c)
    assert opt_lib.build_constraints(cfg.replace(lp_order=2.0), params)["w"].p == 2.0


def test_sgd_optimizer_matches_pytorch_sgd_formula():
    cfg = validate(TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3))
    p = {"w": jnp.array([1.0, -2.0])}
    tx = opt_lib.build_optimizer(cfg)
    s = tx.init(p)
    g1, g2 = {"w": jnp.array([0.5, 0.5])}, {"w": jnp.array([-1.0, 2.0])}
    u1, s = tx.update(g1, s, p)
    p1 = optax.apply_updates(p, u1)
    u2, s = tx.update(g2, s, p1)
    b1 = g1["w"] + 1e-3 * p["w"]
    b2 = 0.9 * b1 + g2["w"] + 1e-3 * p1["w"]
    np.testing.assert_allclose(u1["w"], -0.1 * b1, rtol=1e-6)
    np.testing.assert_allclose(u2["w"], -0.1 * b2, rtol=1e-6)


def _interrupting(monkeypatch, at_call: int):
    """Make the train step raise KeyboardInterrupt on its ``at_call``-th call (mid-epoch)."""
    orig = train_lib.make_train_step

    def patched(*args, **kwargs):
        step = orig(*args, **kwargs)
        calls = [0]

        def wrapped(*a):
            calls[0] += 1
            if calls[0] == at_call:
                raise KeyboardInterrupt
            return step(*a)
        return wrapped

    monkeypatch.setattr(train_lib, "make_train_step", patched)


def test_resume_after_mid_epoch_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch):
    ds = tiny_dataset()
    # 'step' schedule (milestones 1, 2 of 4) and augmentation: resume must restore the
    # schedule state and the step counter that keys the augmentation.
    kw = dict(epochs=4, lr_schedule="step", augment=True, keep_checkpoints=2)
    full = train_lib.train(small_config(out_dir=str(tmp_path / "full"), **kw), ds)

    out = str(tmp_path / "cut")
    steps = 256 // 32
    with monkeypatch.context() as m:
        _interrupting(m, at_call=2 * steps + 3)  # during epoch 3
        with pytest.raises(KeyboardInterrupt):
            train_lib.train(small_config(out_dir=out, **kw), ds)
    with Checkpointer(os.path.join(out, "checkpoints")) as ck:
        assert ck.latest_epoch() == 2
    assert len(open(os.path.join(out, "metrics.jsonl")).readlines()) == 2

    resumed = train_lib.train(small_config(out_dir=out, resume=True, **kw), ds)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    strip = lambda h: [{k: v for k, v in r.items() if "time" not in k and k != "elapsed"}
                       for r in h]
    assert strip(resumed.history) == strip(full.history)
    assert [r["lr"] for r in full.history] == [1.0, 0.1, 0.1 ** 2, 0.1 ** 2]
    assert resumed.test == full.test
    assert len(open(os.path.join(out, "metrics.jsonl")).readlines()) == 4


def test_resume_with_a_constraint_schedule_matches_uninterrupted_run(tmp_path, monkeypatch):
    """The constraint schedule is rebuilt from the config on resume and the run continues bit
    for bit: 2 epochs of 8 steps, phases starting at steps 0, 6 and 12, checkpoint after step 8,
    interrupt at step 11."""
    ds = tiny_dataset()
    kw = dict(epochs=2, keep_checkpoints=2, tau_start=10.0, k_frac_start=0.4,
              schedule_phases=3, schedule_end=0.75)
    full = train_lib.train(small_config(out_dir=str(tmp_path / "full"), **kw), ds)
    out = str(tmp_path / "cut")
    with monkeypatch.context() as m:
        _interrupting(m, at_call=8 + 3)
        with pytest.raises(KeyboardInterrupt):
            train_lib.train(small_config(out_dir=out, **kw), ds)
    resumed = train_lib.train(small_config(out_dir=out, resume=True, **kw), ds)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.test == full.test
    assert contains_all(full.state.params, full.constraints)
    # the schedule is active: without it the run differs
    plain = train_lib.train(small_config(epochs=2), ds)
    assert plain.history[0]["train_loss"] != full.history[0]["train_loss"]


def test_steps_per_call_is_bitwise_one_step_per_call():
    """Three steps per jitted call (an epoch of 8 steps: two scanned calls, then two single
    steps) trains exactly as one step per call: the same state and per-epoch losses."""
    ds = tiny_dataset()
    one, three = (train_lib.train(small_config(steps_per_call=s), ds) for s in (1, 3))
    assert [h["train_loss"] for h in one.history] == [h["train_loss"] for h in three.history]
    for a, b in zip(jax.tree.leaves(one.state), jax.tree.leaves(three.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch,
                                                              steps_per_call):
    ds = tiny_dataset()
    out = str(tmp_path / "nan")
    orig = opt_lib.set_learning_rates
    epochs_seen = []

    def exploding(opt_state, cfg, lr):  # epoch 2 gets an absurd learning rate
        epochs_seen.append(lr)
        return orig(opt_state, cfg, 1e30 if len(epochs_seen) == 2 else lr)

    monkeypatch.setattr(opt_lib, "set_learning_rates", exploding)
    cfg = small_config(optimizer="sgd", lr=0.05, weight_decay=0.0, constraint="k_sparse",
                       epochs=3, out_dir=out, log_every=3, steps_per_call=steps_per_call)
    with pytest.raises(train_lib.NonFiniteLossError,
                       match=r"epoch 2/3, step \d+/8 .*Last good checkpoint: epoch 1"):
        train_lib.train(cfg, ds)
    with Checkpointer(os.path.join(out, "checkpoints")) as ck:
        assert ck.all_epochs() == [1]
        state, meta = ck.restore(jax.eval_shape(lambda: _fresh_state(cfg, ds)))
    assert meta["epochs_done"] == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    assert [json.loads(s)["epoch"] for s in open(os.path.join(out, "metrics.jsonl"))] == [1]


def _fresh_state(cfg, ds):
    cfg = validate(cfg)
    model = train_lib.build_model(cfg, ds.info)
    return train_lib.init_train_state(cfg, model, ds.info)[0]


def test_bf16_compute_keeps_float32_params():
    res = train_lib.train(small_config(precision="bf16", epochs=1), tiny_dataset())
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(res.state.params))
    assert np.isfinite(res.history[0]["train_loss"])
    assert res.test["accuracy"] > 0.4


def test_preconditions_fail_before_work(tmp_path):
    ds = tiny_dataset()
    mesh = train_lib.setup_devices(validate(small_config()))
    out = str(tmp_path / "r")
    with pytest.raises(ValueError, match="resume=True but out_dir .* holds no checkpoint"):
        train_lib.check_run_preconditions(validate(small_config(out_dir=out, resume=True)), mesh)
    train_lib.train(small_config(epochs=1, out_dir=out), ds)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train_lib.check_run_preconditions(validate(small_config(epochs=1, out_dir=out)), mesh)
    with pytest.raises(ValueError, match=r"differ from the checkpointed run .*tau: saved 5.0 "
                                         r"vs now 6.0"):
        train_lib.check_run_preconditions(
            validate(small_config(epochs=2, out_dir=out, resume=True, tau=6.0)), mesh)
    with pytest.raises(ValueError, match="batch_size must be <= the number of training"):
        train_lib.train(small_config(batch_size=512), ds)
    with pytest.raises(ValueError, match="momentum must be in \\[0, 1\\), got 1.0"):
        train_lib.train(small_config(momentum=1.0), ds)


def test_weight_counts_are_exact():
    params = {"a": jnp.array([20.0, 0.5, 1e-3, 0.0]), "b": {"c": jnp.array([[2.0, -3e-7]])}}
    counts = train_lib.weight_counts(params)
    assert list(counts) == ["10", "1", "0.1", "0.01", "0.001", "0.0001", "1e-05", "1e-06",
                            "1e-07", "1e-08", "1e-09", "1e-10"]
    # Strictly above: 1e-3 is not counted at threshold 1e-3; 0 never counts.
    assert list(counts.values()) == [1, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5]


def test_sfw_init_runs_in_training_and_rescales_params(tmp_path):
    """--sfw-init: the learned scales change the initial params, stay >= their minimum, the
    params stay feasible, and the run records the init's cost."""
    import json as _json
    from sfw_jax.fw._constraints import contains_all
    from sfw_jax.training.presets import from_preset
    cfg = from_preset("quickstart-digits", epochs=1, init_norm_samples=2,
                      sfw_init=True, sfw_init_steps=8, sfw_init_lr=0.05,
                      progress=False, keep_checkpoints=0, out_dir=str(tmp_path / "run"))
    res = train_lib.train(cfg)
    info = _json.loads((tmp_path / "run" / "sfw_init.json").read_text())
    assert info["steps"] == 8 and info["seconds"] > 0
    scales = list(info["scales"].values())
    assert any(abs(s - 1.0) > 1e-3 for s in scales)
    assert all(s >= 0.0 for s in scales)
    assert contains_all(res.state.params, res.constraints)


def test_sfw_init_with_sgd_is_a_conflict():
    from sfw_jax.training import config as _config
    from sfw_jax.training.presets import from_preset
    with pytest.raises(ValueError, match="sfw_init"):
        _config.validate(from_preset("quickstart-digits", optimizer="sgd", sfw_init=True))
