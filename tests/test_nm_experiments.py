"""N:M training and pruning end to end: TrainConfig / CLI ``--nm``, the optimizer's partition of
the N:M leaves, and a tiny digits study (train -> one-shot N:M sweep -> N:M retraining ->
reports), plus the sweep, retrain, study and tuning-table command lines with ``--nm``."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sfw_jax as S
from experiments import _loaded_run
from experiments import prune_sweep as ps
from experiments import retrain as rt
from experiments import study as study_lib
from experiments import study_runner
from experiments import tuning_table
from experiments.study_presets import DIGITS_SMOKE, get_study_preset
from sfw_jax.training import cli
from sfw_jax.training import config as config_lib
from sfw_jax.training import optimizers as opt_lib
from sfw_jax.fw.nm import nm_eligible
from sfw_jax.pruning import apply_mask, nm_mask
from sfw_jax.training import run_folder
from tests.conftest import forbid_calls

# ---------------------------------------------------------------- config and CLI


def test_parse_nm_and_config_validation():
    assert config_lib.parse_nm("2:4") == (2, 4) and config_lib.parse_nm("1:1") == (1, 1)
    for bad in ("5:4", "0:4", "2/4", "2:4:8", "a:4", "", 2, None, "-1:4"):
        with pytest.raises(ValueError, match=r"nm must be an N:M pattern 'N:M' with integers "
                                             r"1 <= N <= M, e.g. '2:4', got " + repr(bad)[:3]):
            config_lib.parse_nm(bad)
    cfg = config_lib.validate(config_lib.TrainConfig(constraint="nm_sparse", nm="1:4"))
    assert (cfg.constraint, cfg.nm) == ("nm_sparse", "1:4")
    with pytest.raises(ValueError, match=r"nm must be an N:M pattern such as '2:4' with "
                                         r"constraint='nm_sparse', got None"):
        config_lib.validate(config_lib.TrainConfig(constraint="nm_sparse"))
    with pytest.raises(ValueError, match=r"nm must be None with constraint='l2'.*got '2:4'"):
        config_lib.validate(config_lib.TrainConfig(constraint="l2", nm="2:4"))
    with pytest.raises(ValueError, match=r"nm must be an N:M pattern .*got '8:4'"):
        config_lib.validate(config_lib.TrainConfig(constraint="nm_sparse", nm="8:4"))
    assert "nm_sparse" in config_lib.CONSTRAINTS and "nm_sparse" in S.KINDS
    # the leaves without groups are trained by SGD, so weight decay is allowed with every scope
    cfg = config_lib.validate(config_lib.TrainConfig(constraint="nm_sparse", nm="2:4",
                                                     weight_decay=5e-4))
    assert (cfg.sfw_scope, cfg.weight_decay) == ("all", 5e-4)


def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_train_cli_nm(capsys):
    assert cli.main(["--constraint", "nm_sparse", "--nm", "2:4", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["constraint"], cfg["nm"]) == ("nm_sparse", "2:4")
    assert "nm must be an N:M pattern 'N:M' with integers 1 <= N <= M, e.g. '2:4', got '4:2'" \
        in _cli_error(capsys, ["--constraint", "nm_sparse", "--nm", "4:2"])
    assert "nm must be an N:M pattern such as '2:4' with constraint='nm_sparse', got None" \
        in _cli_error(capsys, ["--constraint", "nm_sparse"])
    assert "nm must be None with constraint='k_sparse'" in _cli_error(capsys, ["--nm", "2:4"])
    assert "--nm: only meaningful with --optimizer sfw" in _cli_error(
        capsys, ["--optimizer", "sgd", "--nm", "2:4"])


PARAMS = {"conv1": {"kernel": jnp.ones((3, 3, 3, 8))},
          "conv2": {"kernel": jnp.ones((3, 3, 8, 16))},
          "bn": {"scale": jnp.ones(16), "bias": jnp.zeros(16)},
          "fc": {"kernel": jnp.ones((16, 10)), "bias": jnp.zeros(10)}}


@pytest.mark.parametrize("scope", ["all", "kernels"])
def test_optimizer_trains_leaves_without_groups_by_sgd_only(scope):
    """constraint='nm_sparse': N:M polytopes on the grouped kernels; every other leaf is
    Unconstrained and gets exactly the SGD update at rest_lr, never a gradient passed through
    by sfw()."""
    cfg = config_lib.validate(config_lib.TrainConfig(
        constraint="nm_sparse", nm="2:4", mode="radius", tau=0.05, sfw_scope=scope,
        rest_lr=0.3, lr=0.5))
    key = jax.random.key(0)
    params = jax.tree.map(lambda x: jax.random.normal(key, x.shape), PARAMS)
    cons = opt_lib.build_constraints(cfg, params)
    nm_leaves = {("conv2", "kernel"), ("fc", "kernel")}
    for (a, b), c in [((a, b), cons[a][b]) for a in PARAMS for b in PARAMS[a]]:
        if (a, b) in nm_leaves:
            assert c == S.NMSparsePolytope(2, 4, 0.05, size=PARAMS[a][b].size)
        else:
            assert c == S.Unconstrained()
    params = S.make_feasible(params, cons)
    tx = opt_lib.build_optimizer(cfg, cons)
    state = tx.init(params)
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(key, x.size), x.shape),
                         params)
    update = jax.jit(tx.update)
    for _ in range(2):
        updates, state = update(grads, state, params)
        new = jax.tree.map(lambda p, u: p + u, params, updates)
        for a in PARAMS:
            for b in PARAMS[a]:
                if (a, b) in nm_leaves:
                    assert bool(cons[a][b].contains(new[a][b]))
                    assert not np.allclose(np.asarray(updates[a][b]),
                                           -0.3 * np.asarray(grads[a][b]), atol=1e-3)
        params = new
    # second SGD step with momentum 0.9 and a repeated gradient: -lr (g + 0.9 g)
    for a, b in [("conv1", "kernel"), ("bn", "scale"), ("bn", "bias"), ("fc", "bias")]:
        np.testing.assert_allclose(np.asarray(updates[a][b]), -0.3 * 1.9 * np.asarray(grads[a][b]),
                                   rtol=1e-6)


# ---------------------------------------------------------------- a tiny N:M study

NM_SMOKE = dataclasses.replace(
    DIGITS_SMOKE, name="digits-nm-smoke",
    base={**DIGITS_SMOKE.base, "epochs": 1, "max_train_samples": 400},
    # radius mode: the polytopes are known without the initial norms (cheaper to check)
    methods={"sfw_nm24": {"constraint": "nm_sparse", "nm": "2:4", "mode": "radius", "tau": 0.05,
                          "rest_lr": 0.05},
             "sgd": DIGITS_SMOKE.methods["sgd"]},
    optional_methods={}, sparsities=(0.0, 0.5), scopes=("kernels",), bn_recal=False,
    retrain_methods=(), nm_patterns=("2:4", "1:4"), nm_retrain_methods=("sgd",),
    nm_retrain_patterns=("2:4",))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nmstudy") / "digits")
    return out, study_runner.run_study(NM_SMOKE, out, progress=False)


def _grouped_size(params, m: int) -> int:
    return sum(x.size for x in jax.tree.leaves(params) if nm_eligible(x.shape, m))


def test_sweep_rows_are_exact_nm_prunings(study):
    out, summary = study
    for method in ("sfw_nm24", "sgd"):
        rows = summary["methods"][method]["sweep"]
        assert [(r["scope"], r["pattern"], r["bn_recal"], r["target_sparsity"]) for r in rows] == [
            ("kernels", "unstructured", False, 0.0), ("kernels", "unstructured", False, 0.5),
            ("kernels", "2:4", False, 0.5), ("kernels", "1:4", False, 0.75)]
        run = _loaded_run.load_trained(os.path.join(out, "runs", method))
        kernels = sum(x.size for x in jax.tree.leaves(run.params) if x.ndim >= 2)
        grouped = _grouped_size(run.params, 4)
        assert 0 < grouped < kernels                         # conv1 (1 input channel) has no groups
        for r, (n, m) in zip(rows[2:], ((2, 4), (1, 4))):
            assert r["n_scope"] == kernels
            assert r["n_pruned"] == grouped * (m - n) // m
            assert r["sparsity"] == r["n_pruned"] / kernels
            assert r["zero_fraction"] >= r["sparsity"]
            pruned = apply_mask(run.params, nm_mask(run.params, n, m))
            ev = run.evaluator(pruned, run.batch_stats, run.dataset.test)
            assert r["test_acc"] == ev["accuracy"]
        with open(os.path.join(out, "runs", method, "sweep.csv")) as f:
            assert [c["pattern"] for c in csv.DictReader(f)] == [
                "unstructured", "unstructured", "2:4", "1:4"]


def test_sfw_nm_iterate_stays_in_the_polytope(study):
    """The SFW N:M run's final kernels lie in their N:M polytopes, on the boundary of some group;
    the BatchNorm parameters (no groups) were trained by SGD rather than frozen."""
    out, _ = study
    run = _loaded_run.load_trained(os.path.join(out, "runs", "sfw_nm24"))
    cons = opt_lib.build_constraints(run.config, run.params)
    flat_c = jax.tree.leaves(cons, is_leaf=S.is_constraint)
    kinds = [type(c).__name__ for c in flat_c]
    assert kinds.count("NMSparsePolytope") == 5 and "Unconstrained" in kinds
    for c, x in zip(flat_c, jax.tree.leaves(run.params)):
        if isinstance(c, S.NMSparsePolytope):
            assert c.radius == 0.05 and bool(c.contains(x))
            assert float(c.gauge(x)) > 0.5 * c.radius
    for name, init in (("scale", 1.0), ("bias", 0.0)):
        assert not np.allclose(np.asarray(run.params["bn2"][name]), init)


def test_nm_retraining_keeps_the_mask(study):
    _, summary = study
    assert summary["methods"]["sfw_nm24"]["retrain"] == []
    (rec,) = summary["methods"]["sgd"]["retrain"]
    assert (rec["pattern"], rec["sparsity"], rec["epochs"], rec["scope"]) == ("2:4", 0.5, 1,
                                                                              "kernels")
    assert rec["final_sparsity"] == rec["n_pruned"] / rec["n_scope"]
    row = next(r for r in summary["methods"]["sgd"]["sweep"] if r["pattern"] == "2:4")
    assert rec["n_pruned"] == row["n_pruned"] and rec["oneshot_test_acc"] == row["test_acc"]
    assert summary["preset"]["nm_patterns"] == ["2:4", "1:4"]


def test_reports(study):
    out, summary = study
    table = open(os.path.join(out, "table.md")).read()
    assert "## N:M one-shot pruning (test accuracy)" in table
    assert "| pattern | kernel sparsity | SFW N:M 2:4 | SGD | SGD + retrain |" in table
    ms = summary["methods"]
    cells = [f"{100 * ms[m]['sweep'][2]['test_acc']:.2f}" for m in ("sfw_nm24", "sgd")]
    retrained = f"{100 * ms['sgd']['retrain'][0]['test_acc']:.2f}"
    sparsity = f"{100 * ms['sgd']['sweep'][2]['sparsity']:.1f}"
    assert f"| 2:4 | {sparsity}% | {cells[0]} | {cells[1]} | {retrained} |" in table
    assert "- SFW N:M 2:4 one-shot at 2:4: " in table
    assert "- SFW N:M 2:4 vs SGD one-shot at 2:4: " in table
    assert "Validation accuracy, N:M one-shot:" in table
    # the unstructured table is not mixed up with the N:M rows at the same sparsity (50%)
    unstructured = f"{100 * ms['sgd']['sweep'][1]['test_acc']:.2f}"
    assert f"| 50% | {100 * ms['sfw_nm24']['sweep'][1]['test_acc']:.2f} | {unstructured} |" \
        in table
    with open(os.path.join(out, "nm_accuracy.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_second_invocation_redoes_nothing(study, monkeypatch):
    out, first = study
    import sfw_jax.pruning as pruning

    forbid_calls(monkeypatch, (study_runner.loop, "train"), (study_runner.retrain_lib, "retrain"),
                 (pruning, "nm_mask"), (pruning, "masks_for_sweep"))
    again = study_runner.run_study(NM_SMOKE, out, progress=False)
    for m in NM_SMOKE.methods:
        assert again["methods"][m]["sweep"] == first["methods"][m]["sweep"]
        assert again["methods"][m]["retrain"] == first["methods"][m]["retrain"]


def test_command_lines(study, tmp_path, capsys):
    out, summary = study
    run_dir = os.path.join(out, "runs", "sgd")
    csv_path = str(tmp_path / "s.csv")
    assert ps.main([run_dir, "--scope", "kernels", "--sparsities", "0", "--nm", "1:4", "2:4",
                    "--out", csv_path, "--no-progress"]) == 0
    assert "kernels  magnitude 1:4" in capsys.readouterr().out
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["pattern"], r["target_sparsity"]) for r in rows] == [
        ("unstructured", "0.0"), ("1:4", "0.75"), ("2:4", "0.5")]
    by = {r["pattern"]: r for r in summary["methods"]["sgd"]["sweep"]}
    assert float(rows[1]["test_acc"]) == by["1:4"]["test_acc"]
    json_path = str(tmp_path / "r.json")
    assert rt.main([run_dir, "--nm", "1:4", "--epochs", "1", "--out", json_path,
                    "--no-progress"]) == 0
    assert "   1:4  one-shot" in capsys.readouterr().out
    (rec,) = run_folder.read_json(json_path)["records"]
    assert (rec["pattern"], rec["sparsity"]) == ("1:4", 0.75)
    for main, argv, message in [
            (ps.main, [run_dir, "--nm", "5:4"], "--nm must be an N:M pattern 'N:M' with "
                                                "integers 1 <= N <= M, e.g. '2:4', got '5:4'"),
            (rt.main, [run_dir, "--nm", "2:4", "--scope", "all"],
             "--nm prunes kernels only: --scope must be 'kernels', got 'all'"),
            (study_lib.main, ["--preset", "digits-smoke", "--nm", "2-4"],
             "--nm must be an N:M pattern 'N:M'")]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
    md = str(tmp_path / "t.md")
    assert tuning_table.main([out, "--sparsities", "50", "--nm", "2:4", "1:4", "--out", md]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[-3:] == ["val 2:4", "val 1:4", "train s"]
    for line in lines[2:]:
        cells = dict(zip(head, [c.strip() for c in line.strip("|").split("|")]))
        nm_rows = {r["pattern"]: r for r in summary["methods"][cells["method"]]["sweep"]}
        assert cells["val 2:4"] == f"{100 * nm_rows['2:4']['val_acc']:.1f}"


def test_retrain_arguments(study):
    out, _ = study
    run = _loaded_run.load_trained(os.path.join(out, "runs", "sgd"))
    with pytest.raises(ValueError, match="give exactly one of sparsity and nm, got sparsity=None"):
        rt.retrain(run, progress=False)
    with pytest.raises(ValueError, match="give exactly one of sparsity and nm, got sparsity=0.5"):
        rt.retrain(run, 0.5, nm="2:4", progress=False)
    with pytest.raises(ValueError, match="nm must be an N:M pattern .*got '2:x'"):
        rt.retrain(run, nm="2:x", progress=False)


def test_nm_study_preset():
    """cifar10-cpu-nm: the cifar10-cpu-gap grid (same SFW K-sparse and SGD configs) with the two
    SFW N:M methods, one-shot 2:4 and 1:4 and SGD retrained at 2:4."""
    nm, gap = get_study_preset("cifar10-cpu-nm"), get_study_preset("cifar10-cpu-gap")
    assert list(nm.methods) == ["sfw_nm24", "sfw_nm14", "sfw_ksparse", "sgd"]
    for m in ("sfw_ksparse", "sgd"):
        assert nm.method_config(m).to_dict() == gap.method_config(m).to_dict()
    for m, pattern in (("sfw_nm24", "2:4"), ("sfw_nm14", "1:4")):
        cfg = config_lib.validate(nm.method_config(m, "x"))
        assert (cfg.constraint, cfg.nm, cfg.tau) == ("nm_sparse", pattern,
                                                     gap.method_config("sfw_ksparse").tau)
        assert {k for k, v in cfg.to_dict().items()
                if v != config_lib.validate(gap.method_config("sfw_ksparse", "x")).to_dict()[k]
                } == {"constraint", "nm", "k_frac", "rest_lr", "init_norm_rule"}
    assert (nm.nm_patterns, nm.nm_retrain_methods, nm.nm_retrain_patterns) == (
        ("2:4", "1:4"), ("sgd",), ("2:4",))
    assert nm.sparsities == gap.sparsities and nm.retrain_sparsities == gap.retrain_sparsities
    assert "validation" in nm.notes and "tau" in nm.notes
