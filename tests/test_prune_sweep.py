"""experiments.prune_sweep and the run loading it relies on, on a tiny finished digits run (SGD, BatchNorm)."""

from __future__ import annotations

import csv
import dataclasses
import re
import os
import shutil

import jax
import numpy as np
import pytest

from experiments import _loaded_run
from experiments import _bn_recal
from experiments import prune_sweep as ps
from sfw_jax import leaf_scope
from sfw_jax.training import run_folder

RUN_EPOCHS = 1          # of the conftest fixtures run_dir / run


def _sizes(params, scope):
    leaves = jax.tree.leaves(params)
    return sum(x.size for x in leaves if scope == "all" or x.ndim >= 2)


def test_load_trained_restores_final_weights(run):
    assert run.config.optimizer == "sgd" and run.config.epochs == 1
    assert set(run.batch_stats) == {"bn1", "bn2", "bn3", "bn4"}
    ev = run.evaluator(run.params, run.batch_stats, run.dataset.test)
    assert ev["accuracy"] == run.final["test_acc"]
    assert ev["loss"] == pytest.approx(run.final["test_loss"], rel=1e-6)
    assert len(run.history) == 1


def test_load_trained_errors(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="missing' is not a folder"):
        _loaded_run.load_trained(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        _loaded_run.load_trained(str(tmp_path))
    (tmp_path / "config.json").write_text(open(os.path.join(run_dir, "config.json")).read())
    with pytest.raises(FileNotFoundError, match="did not finish"):
        _loaded_run.load_trained(str(tmp_path))


def test_a_run_without_checkpoint(tmp_path, run_dir, run, capsys):
    """Without its checkpoint a run folder is an error for a caller that needs the weights; with
    ``need_weights=False`` it loads (a note says so), knows from shapes that the model has
    BatchNorm, and reading the weights names the missing checkpoint."""
    bare = str(tmp_path / "bare")
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns(run_folder.CHECKPOINT_DIR))
    with pytest.raises(run_folder.NotARunError, match="bare holds no checkpoint"):
        _loaded_run.load_trained(bare, run.dataset)
    loaded = _loaded_run.load_trained(bare, run.dataset, need_weights=False)
    assert f"note: {bare} has no checkpoint" in capsys.readouterr().err
    assert loaded.has_batch_norm and run.has_batch_norm
    assert loaded.final == run.final and loaded.history == run.history
    with pytest.raises(run_folder.NotARunError, match="bare holds no checkpoint"):
        loaded.params


def test_dense_level_equals_run_accuracy_and_sparsity_is_exact(run):
    levels = [0.0, 0.5, 0.9, 0.95]
    rows = ps.sweep(run, levels, scopes=("kernels", "all"), progress=False)
    assert [(r["scope"], r["target_sparsity"]) for r in rows] == \
        [(sc, s) for sc in ("kernels", "all") for s in levels]
    for r in rows:
        n = _sizes(run.params, r["scope"])
        assert r["n_scope"] == n
        assert r["n_pruned"] == round(r["target_sparsity"] * n)
        assert r["sparsity"] == r["n_pruned"] / n
        assert r["zero_fraction"] >= r["sparsity"]
        assert r["bn_recal"] is False
        if r["target_sparsity"] == 0.0:
            assert r["test_acc"] == run.final["test_acc"]
            assert r["val_acc"] == run.history[-1]["val_acc"]
    by = {(r["scope"], r["target_sparsity"]): r for r in rows}
    # pruning 95% of an SGD net's kernels without retraining destroys it
    assert by[("kernels", 0.95)]["test_acc"] < run.final["test_acc"] - 0.2


def test_one_sort_per_scope(run, monkeypatch):
    import sfw_jax.pruning as pruning

    calls = []
    real = pruning.masks_for_sweep

    def counting(params, sparsities, **kw):
        calls.append(list(sparsities))
        return real(params, sparsities, **kw)

    monkeypatch.setattr(pruning, "masks_for_sweep", counting)
    ps.sweep(run, [0.0, 0.3, 0.6, 0.9], scopes=("kernels", "all"), progress=False)
    assert calls == [[0.0, 0.3, 0.6, 0.9], [0.0, 0.3, 0.6, 0.9]]


def test_bn_recal_changes_batch_stats_only(run):
    from sfw_jax.pruning import apply_mask, magnitude_mask

    params_before = jax.tree.map(np.array, run.params)
    stats_before = jax.tree.map(np.array, run.batch_stats)
    pruned = apply_mask(run.params, magnitude_mask(run.params, 0.9))
    batches = _bn_recal.recal_images(run.train_split, 3, 32, seed=0)
    assert batches.shape == (3, 32, 8, 8, 1) and batches.dtype == np.uint8
    new = _bn_recal.recalibrated_batch_stats(run, pruned, batches)
    assert jax.tree.structure(new) == jax.tree.structure(run.batch_stats)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), new,
                                         stats_before))
    assert all(d > 0 for d in diffs)
    # neither the run's params nor its stored statistics were touched
    jax.tree.map(np.testing.assert_array_equal, run.params, params_before)
    jax.tree.map(np.testing.assert_array_equal, run.batch_stats, stats_before)
    # the bn_recal rows are the pruned params evaluated with exactly these statistics
    rows = ps.sweep(run, [0.9], scopes=("kernels",), bn_recal=True, recal_batches=3,
                    recal_batch_size=32, progress=False)
    assert [r["bn_recal"] for r in rows] == [False, True]
    expect = run.evaluator(pruned, new, run.dataset.test)["accuracy"]
    assert rows[1]["test_acc"] == expect
    assert rows[1]["n_pruned"] == rows[0]["n_pruned"]
    # recal_scopes: only those scopes get the re-calibrated variant
    rows = ps.sweep(run, [0.9], scopes=("kernels", "all"), bn_recal=True, recal_batches=3,
                    recal_batch_size=32, recal_scopes=("all",), progress=False)
    assert [(r["scope"], r["bn_recal"]) for r in rows] == [
        ("kernels", False), ("all", False), ("all", True)]
    with pytest.raises(ValueError, match=r"recal_scopes must be a subset of scopes \['kernels'\]"
                                         r", got \['all'\]"):
        ps.sweep(run, [0.9], scopes=("kernels",), bn_recal=True, recal_scopes="all",
                 progress=False)
    with pytest.raises(ValueError, match=r"recal_scopes must be a list from \['kernels', 'all'\], "
                                         r"got \['bogus'\]"):
        ps.sweep(run, [0.9], scopes=("kernels",), bn_recal=True, recal_scopes=["bogus"],
                 progress=False)
    # an empty recal_scopes means no re-calibrated rows
    rows = ps.sweep(run, [0.9], scopes=("kernels",), bn_recal=True, recal_scopes=[],
                    progress=False)
    assert [r["bn_recal"] for r in rows] == [False]


def test_sweep_resumes_from_cache(run, tmp_path, monkeypatch):
    cache = str(tmp_path / "sweep.json")
    first = ps.sweep(run, [0.0, 0.9], scopes=("kernels",), cache_path=cache, progress=False)
    assert run_folder.read_json(cache)["rows"] == first
    calls = []
    real = run.evaluator.__class__.__call__
    monkeypatch.setattr(run.evaluator.__class__, "__call__",
                        lambda self, *a: calls.append(1) or real(self, *a))
    again = ps.sweep(run, [0.0, 0.9], scopes=("kernels",), cache_path=cache, progress=False)
    assert again == first and calls == []
    more = ps.sweep(run, [0.0, 0.5, 0.9], scopes=("kernels",), cache_path=cache,
                    progress=False)
    assert len(calls) == 2  # only the new level: val + test
    assert [r["target_sparsity"] for r in more] == [0.0, 0.5, 0.9]
    assert more[0] == first[0] and more[2] == first[1]
    # a call for fewer levels returns only those but keeps the other cached rows
    calls.clear()
    one = ps.sweep(run, [0.9], scopes=("kernels",), cache_path=cache, progress=False)
    assert one == [first[1]] and calls == []
    assert run_folder.read_json(cache)["rows"] == [first[1], first[0], more[1]]


def test_cli_writes_csv_and_json(run_dir, tmp_path, capsys):
    out = str(tmp_path / "s.csv")
    assert ps.main([run_dir, "--scope", "kernels", "--sparsities", "0", "90", "--out", out,
                    "--no-progress"]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["target_sparsity"] for r in rows] == ["0.0", "0.9"]
    assert list(rows[0]) == list(ps.CSV_FIELDS)
    data = run_folder.read_json(str(tmp_path / "s.json"))
    assert [r["target_sparsity"] for r in data["rows"]] == [0.0, 0.9]
    assert "dense test acc" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--sparsities", "150"], "percents in \\[0, 100\\]"),
    (["--recal-batches", "0"], "--recal-batches must be >= 1"),
    (["--scope", "bias"], "invalid choice"),
])
def test_cli_bad_args(run_dir, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ps.main([run_dir, *argv])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_folder_that_is_not_a_run(tmp_path, capsys):
    """One line naming the folder and what is missing, exit status 2, no traceback."""
    with pytest.raises(SystemExit) as e:
        ps.main([str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err == (f"python -m experiments.prune_sweep: error: {tmp_path} has no config.json: "
                   f"not a training run folder\n")


def test_argument_errors(run):
    with pytest.raises(ValueError, match="sparsities must hold fractions in \\[0, 1\\]"):
        ps.sweep(run, [0.5, 1.5], progress=False)
    with pytest.raises(ValueError, match="sparsities must not be empty"):
        ps.check_sparsities([])
    with pytest.raises(ValueError, match="scopes must be a non-empty list"):
        ps.sweep(run, [0.5], scopes=("biases",), progress=False)
    with pytest.raises(ValueError, match="recal_batches must be an int >= 1"):
        ps.sweep(run, [0.5], recal_batches=0, progress=False)
    with pytest.raises(ValueError, match="scope must be one of"):
        leaf_scope("layer")
    assert ps.percents_to_fractions([90, 0, 99.5]) == [0.0, 0.9, 0.995]
    assert ps.SPARSITIES[:3] == (0.0, 0.1, 0.2) and ps.SPARSITIES[-1] == 0.99
    assert len(ps.SPARSITIES) == 19


def test_a_run_without_a_validation_split_has_no_nan(run):
    """val_acc / val_loss are None (JSON null, an empty CSV cell) where the run has no
    validation split, and the printed table says n/a instead of nan%."""
    empty = run.dataset.val.take(np.arange(0))
    no_val = dataclasses.replace(run, dataset=dataclasses.replace(run.dataset, val=empty))
    rows = ps.sweep(no_val, [0.0, 0.9], scopes=("kernels",), progress=False)
    assert all(r["val_acc"] is None and r["val_loss"] is None for r in rows)
    assert all(0 < r["test_acc"] <= 1 for r in rows)
    text = ps.format_rows(rows)
    assert "nan" not in text and text.splitlines()[1].split()[-2:] == [
        "n/a", f"{100 * rows[0]['test_acc']:.2f}%"]
