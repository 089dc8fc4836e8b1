"""experiments.retrain: prune + retrain under the mask, on a tiny finished digits run."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from experiments import retrain as rt
from sfw_jax.pruning import apply_mask
from sfw_jax.training import run_folder

RUN_EPOCHS = 2          # of the conftest fixtures run_dir / run


@pytest.fixture(scope="module")
def result(run) -> rt.RetrainResult:
    return rt.retrain(run, 0.9, epochs=2, lr=0.05, progress=False)


def test_pruned_weights_stay_exactly_zero(run, result):
    kernels = [(p, m) for p, m in zip(jax.tree.leaves(result.params),
                                      jax.tree.leaves(result.mask)) if p.ndim >= 2]
    n = sum(p.size for p, _ in kernels)
    pruned = sum(int(np.sum(~np.asarray(m))) for _, m in kernels)
    assert pruned == round(0.9 * n)
    for p, m in kernels:
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
    rec = result.record
    assert rec["n_scope"] == n and rec["n_pruned"] == pruned
    assert rec["final_sparsity"] == pruned / n
    # non-kernel leaves (biases, BatchNorm scale/offset) are not pruned by the 'kernels' scope
    for p, m in zip(jax.tree.leaves(result.params), jax.tree.leaves(result.mask)):
        if p.ndim < 2:
            assert np.all(np.asarray(m))


def test_retraining_trains_the_kept_weights_and_recovers_accuracy(run, result):
    rec = result.record
    changed = [not np.array_equal(np.asarray(a)[np.asarray(m)], np.asarray(b)[np.asarray(m)])
               for a, b, m in zip(jax.tree.leaves(result.params), jax.tree.leaves(run.params),
                                  jax.tree.leaves(result.mask))]
    assert all(changed)
    stats_changed = jax.tree.leaves(jax.tree.map(
        lambda a, b: not np.array_equal(a, b), result.batch_stats, run.batch_stats))
    assert all(stats_changed)
    # one-shot 90% on an SGD net is near chance; 2 epochs under the mask recover a lot
    assert rec["oneshot_test_acc"] < run.final["test_acc"]
    assert rec["test_acc"] > rec["oneshot_test_acc"] + 0.1
    ev = run.evaluator(result.params, result.batch_stats, run.dataset.test)
    assert ev["accuracy"] == rec["test_acc"]
    assert rec["epochs"] == 2 and len(rec["history"]) == 2
    assert rec["steps"] == 2 * (len(run.train_split) // run.config.batch_size)
    assert rec["weight_decay"] == run.config.weight_decay == 5e-4
    assert rec["wall_time"] > 0 and rec["retrain_epoch_fraction"] == 1.0


def test_run_is_not_modified(run, result):
    # the run's own arrays are intact (the donated train state was a copy)
    ev = run.evaluator(run.params, run.batch_stats, run.dataset.test)
    assert ev["accuracy"] == run.final["test_acc"]


def test_retrain_many_is_resumable(run, tmp_path, monkeypatch):
    out = str(tmp_path / "retrain.json")
    first = rt.retrain_many(run, [0.5], out_path=out, progress=False, epochs=1, lr=0.01)
    assert len(first) == 1 and first[0]["sparsity"] == 0.5

    def fail(*a, **k):
        raise AssertionError("retrained again")

    monkeypatch.setattr(rt, "retrain", fail)
    again = rt.retrain_many(run, [0.5], out_path=out, progress=False, epochs=1, lr=0.01)
    assert again == first
    with pytest.raises(AssertionError, match="retrained again"):  # other settings: new work
        rt.retrain_many(run, [0.5], out_path=out, progress=False, epochs=1, lr=0.02)
    assert run_folder.read_json(out)["records"] == first


def test_default_epochs():
    assert rt.default_epochs(180) == 18
    assert rt.default_epochs(20) == 2
    assert rt.default_epochs(3) == 1


@pytest.mark.parametrize("kw, message", [
    ({"sparsity": 1.5}, "sparsity must hold fractions in \\[0, 1\\]"),
    ({"epochs": 0}, "epochs must be an int >= 1"),
    ({"lr": -0.1}, "lr must be a finite number > 0"),
    ({"momentum": 1.0}, "momentum must be in \\[0, 1\\)"),
    ({"weight_decay": -1.0}, "weight_decay must be a number >= 0"),
    ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ({"scope": "biases"}, "scope must be one of"),
    ({"batch_size": 100000}, "batch_size must be <= the number of training examples"),
])
def test_bad_arguments(run, kw, message):
    args = {"sparsity": 0.5, "epochs": 1, **kw}
    with pytest.raises(ValueError, match=message):
        rt.retrain(run, args.pop("sparsity"), progress=False, **args)


def test_cli(run_dir, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert rt.main([run_dir, "--sparsities", "80", "--epochs", "1", "--out", out,
                    "--no-progress"]) == 0
    recs = run_folder.read_json(out)["records"]
    assert [r["sparsity"] for r in recs] == [0.8] and recs[0]["epochs"] == 1
    assert "retrained" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        rt.main([run_dir, "--sparsities", "101"])
    assert e.value.code == 2
    assert "percents in [0, 100]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rt.main([run_dir, "--epochs", "0"])
    assert "--epochs must be an int >= 1" in capsys.readouterr().err


def test_one_compiled_step_for_every_mask_and_the_result_of_a_baked_in_mask(run, result,
                                                                            monkeypatch):
    """The mask is an argument of the jitted step (in keep_masked's state): two levels that
    share a step cache compile it once, and the shared step gives bitwise the result of a
    fresh one. A step with the mask baked in as constants (a keep_masked that closes over it,
    as before) trains to the same accuracy; XLA fuses that step differently around the
    constants, so its float rounding differs in the last bits (~1e-7 after 2 epochs)."""
    cache = {}
    again = rt.retrain(run, 0.9, epochs=2, lr=0.05, progress=False, step_cache=cache)
    rt.retrain(run, 0.5, epochs=2, lr=0.05, progress=False, step_cache=cache)
    (step,) = cache.values()
    assert step._cache_size() == 1
    for a, b in zip(jax.tree.leaves((again.params, again.batch_stats)),
                    jax.tree.leaves((result.params, result.batch_stats))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert again.record == {**result.record, "wall_time": again.record["wall_time"],
                            "history": again.record["history"]}

    def baked_keep_masked(mask):
        return optax.GradientTransformation(
            lambda params: optax.EmptyState(), lambda u, s, params=None: (apply_mask(u, mask), s))

    monkeypatch.setattr(rt, "keep_masked", baked_keep_masked)
    baked = rt.retrain(run, 0.9, epochs=2, lr=0.05, progress=False)
    for a, b in zip(jax.tree.leaves((baked.params, baked.batch_stats)),
                    jax.tree.leaves((result.params, result.batch_stats))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert baked.record["test_acc"] == result.record["test_acc"]
    assert baked.record["n_pruned"] == result.record["n_pruned"]
