"""experiments.study (digits-smoke grid), its presets, reports and plots."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from experiments import plots
from experiments import study as study_lib
from experiments import study_runner
from experiments.study_presets import (DIGITS_SMOKE, STUDY_PRESETS, get_study_preset,
                                       study_preset_names)
from sfw_jax.training import config as config_lib
from sfw_jax.training import run_folder
from tests.conftest import forbid_calls

METHODS = ["sfw_ksparse", "sgd"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: str) -> tuple[int, int]:
    assert os.path.isfile(path) and os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study") / "digits")
    summary = study_runner.run_study(DIGITS_SMOKE, out, methods=METHODS, progress=False)
    return out, summary


def test_runs_sweeps_and_retraining(study):
    out, summary = study
    assert list(summary["methods"]) == METHODS
    for m in METHODS:
        res = summary["methods"][m]
        run_dir = os.path.join(out, "runs", m)
        assert run_folder.is_finished(run_dir)
        assert res["this_invocation"]["train"]["status"] == "trained"
        saved = config_lib.load_json(os.path.join(run_dir, "config.json"))
        assert saved.to_dict() == res["config"]
        assert saved == config_lib.validate(DIGITS_SMOKE.method_config(m, run_dir).replace(
            progress=False))
        rows = res["sweep"]
        # every scope without re-calibration, the main scope ('kernels') also with it
        assert {(r["scope"], r["bn_recal"], r["target_sparsity"]) for r in rows} == {
            (sc, v, s) for sc, v in (("kernels", False), ("all", False), ("kernels", True))
            for s in DIGITS_SMOKE.sparsities}
        dense = [r for r in rows if r["target_sparsity"] == 0.0 and not r["bn_recal"]]
        assert all(r["test_acc"] == res["final"]["test_acc"] for r in dense)
        for r in rows:
            assert r["n_pruned"] == round(r["target_sparsity"] * r["n_scope"])
        assert os.path.isfile(os.path.join(run_dir, "sweep.csv"))
    assert summary["methods"]["sfw_ksparse"]["config"]["optimizer"] == "sfw"
    assert summary["methods"]["sgd"]["config"]["optimizer"] == "sgd"
    assert summary["methods"]["sfw_ksparse"]["retrain"] == []
    (rec,) = summary["methods"]["sgd"]["retrain"]
    assert rec["sparsity"] == 0.9 and rec["epochs"] == 1
    assert rec["final_sparsity"] == rec["n_pruned"] / rec["n_scope"]
    assert rec["n_pruned"] == round(0.9 * rec["n_scope"])


def test_table_lists_every_method_and_sparsity(study):
    out, summary = study
    table = open(os.path.join(out, "table.md")).read()
    for label in ("SFW K-sparse", "SGD", "SGD + retrain"):
        assert f"| {label} |" in table or f" {label} |" in table
    assert "SFW L2" not in table  # not selected
    for s in ("0% (dense)", "50%", "90%", "95%"):
        assert f"| {s} |" in table
    sgd = summary["methods"]["sgd"]
    # the main table's 90% row holds SGD one-shot and retrained test accuracies
    row90 = next(line for line in table.splitlines() if line.startswith("| 90% |"))
    oneshot = next(r for r in sgd["sweep"] if r["scope"] == "kernels" and not r["bn_recal"]
                   and r["target_sparsity"] == 0.9)
    assert f"{100 * oneshot['test_acc']:.2f}" in row90
    assert f"{100 * sgd['retrain'][0]['test_acc']:.2f}" in row90
    assert f"| SGD | {100 * sgd['final']['test_acc']:.2f} |" in table
    assert "## Retraining cost" in table and "## Targets (issue)" in table
    assert "re-calibration (extra, not in the paper)" in table
    # the targets are also checked on the BatchNorm re-calibrated one-shot rows
    recal = {m: next(r for r in summary["methods"][m]["sweep"] if r["scope"] == "kernels"
                     and r["bn_recal"] and r["target_sparsity"] == 0.9)
             for m in ("sfw_ksparse", "sgd")}
    a, b = (100 * recal[m]["test_acc"] for m in ("sfw_ksparse", "sgd"))
    assert (f"- SFW K-sparse vs SGD one-shot + BN re-cal at 90%: {a:.2f}% vs {b:.2f}% "
            f"({a - b:+.2f} points; target >= +20)") in table
    # ... and the drop is measured from the better of the dense accuracies without / with re-cal
    sfw = summary["methods"]["sfw_ksparse"]
    dense_recal = next(r["test_acc"] for r in sfw["sweep"] if r["scope"] == "kernels"
                       and r["bn_recal"] and r["target_sparsity"] == 0.0)
    best = 100 * max(sfw["final"]["test_acc"], dense_recal)
    assert (f"- SFW K-sparse one-shot + BN re-cal at 90%: {a:.2f}% vs its better dense "
            f"{best:.2f}% (drop {best - a:.2f} points") in table
    above = open(os.path.join(out, "weights_above.md")).read()
    assert "| 1e-10 |" in above and "| SFW K-sparse | SGD |" in above
    n = summary["methods"]["sgd"]["weights"]["above"]["size"]
    assert f"| size | {n} | {n} |" in above


def test_outputs_exist(study):
    out, summary = study
    w, h = _check_png(os.path.join(out, "accuracy_vs_sparsity.png"))
    assert w > 600 and h > 300
    for m in METHODS:
        _check_png(os.path.join(out, f"weights_{m}.png"))
    _check_png(os.path.join(out, "weights_cdf.png"))
    with open(os.path.join(out, "summary.json")) as f:
        saved = json.load(f)
    assert saved["study"] == "digits-smoke" and list(saved["methods"]) == METHODS
    configs = run_folder.read_json(os.path.join(out, "configs.json"))
    assert set(configs) == set(METHODS)
    assert configs["sgd"]["weight_decay"] == 5e-4


def test_second_invocation_redoes_nothing(study, monkeypatch):
    out, first = study
    import sfw_jax.pruning as pruning

    forbid_calls(monkeypatch, (study_runner.loop, "train"), (study_runner.retrain_lib, "retrain"),
                 (pruning, "masks_for_sweep"))
    again = study_runner.run_study(DIGITS_SMOKE, out, methods=METHODS, progress=False)
    for m in METHODS:
        assert again["methods"][m]["this_invocation"]["train"]["status"] == "skipped"
        assert again["methods"][m]["sweep"] == first["methods"][m]["sweep"]
        assert again["methods"][m]["retrain"] == first["methods"][m]["retrain"]


def test_reports_rebuild_from_cached_results_without_checkpoints(study, tmp_path, capsys):
    """A study folder whose runs have no checkpoints (as committed results) rebuilds the same
    summary from the cached sweep, retraining and weight statistics."""
    out, first = study
    bare = str(tmp_path / "digits")
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns(run_folder.CHECKPOINT_DIR))
    again = study_runner.run_study(DIGITS_SMOKE, bare, methods=METHODS, progress=False)
    assert capsys.readouterr().err.count("has no checkpoint; only its cached results") == 2
    as_json = lambda x: json.loads(json.dumps(x))  # noqa: E731
    for m in METHODS:
        for key in ("sweep", "retrain", "weights", "final", "history"):
            assert as_json(again["methods"][m][key]) == as_json(first["methods"][m][key]), (m, key)
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")     # when each report was made
    for name in ("weights_above.md", "table.md"):
        with open(os.path.join(out, name)) as a, open(os.path.join(bare, name)) as b:
            assert stamp.sub("", a.read()) == stamp.sub("", b.read()), name


def test_unfinished_run_is_resumed(study, monkeypatch):
    out, first = study
    calls = []
    real = study_runner.loop.train

    def spy(cfg, dataset=None, **kw):
        calls.append((os.path.basename(cfg.out_dir), cfg.resume))
        return real(cfg, dataset, **kw)

    monkeypatch.setattr(study_runner.loop, "train", spy)
    os.remove(os.path.join(out, "runs", "sgd", "final.json"))
    again = study_runner.run_study(DIGITS_SMOKE, out, methods=METHODS, progress=False)
    assert calls == [("sgd", True)]
    assert again["methods"]["sgd"]["this_invocation"]["train"]["status"] == "resumed"
    # resumed after its last epoch: same weights, so the same accuracy
    assert again["methods"]["sgd"]["final"]["test_acc"] == first["methods"]["sgd"]["final"]["test_acc"]


def test_stale_run_folder_is_reported(study):
    out, _ = study
    changed = dataclasses.replace(DIGITS_SMOKE, methods={
        **DIGITS_SMOKE.methods, "sgd": {**DIGITS_SMOKE.methods["sgd"], "lr": 0.02}})
    with pytest.raises(ValueError, match="different config.*lr: saved 0.05 vs now 0.02"):
        study_runner.run_study(changed, out, methods=["sgd"], progress=False)


def test_presets_and_method_errors():
    assert study_preset_names() == ["cifar10-cpu", "cifar10-cpu-gap", "cifar10-cpu-nm",
                                    "digits-smoke", "paper-resnet18-cifar10", "text-cpu"]
    for name, preset in STUDY_PRESETS.items():
        if preset.metric != "test_acc":   # the language-model grid: tests/test_lm_study.py
            continue
        assert set(preset.all_methods()) >= {"sfw_ksparse", "sfw_l2", "sgd"}
        assert "sfw_init" in preset.optional_methods
        assert "sgd" in preset.retrain_methods
        for m in preset.methods:
            cfg = config_lib.validate(preset.method_config(m, "x"))
            assert cfg.keep_checkpoints >= 1
        assert preset.method_config("sfw_l2").constraint == "l2"
        assert preset.method_config("sgd").optimizer == "sgd"
    cpu = get_study_preset("cifar10-cpu")
    assert cpu.base_config().data_dir == "../shared/data/cifar10-jpeg.tar.gz"
    # the GAP-head grid: same methods and hyperparameters, only the model and epochs differ,
    # and SFW K-sparse's k_frac (re-tuned for this head)
    gap = get_study_preset("cifar10-cpu-gap")
    for m in cpu.all_methods():
        a, b = cpu.method_config(m).to_dict(), gap.method_config(m).to_dict()
        diff = {k for k in a if a[k] != b[k]}
        assert diff == {"model_kwargs", "epochs"} | (
            {"k_frac", "init_norm_rule"} if m == "sfw_ksparse" else set()), (m, diff)
        assert b["model_kwargs"] == {"width": 1.0, "use_bn": True, "head": "gap"}
    assert (gap.method_config("sfw_ksparse").k_frac, gap.method_config("sfw_ksparse").tau) == \
        (0.01, 7.0)
    paper = get_study_preset("paper-resnet18-cifar10")
    sgd = paper.method_config("sgd")
    assert (sgd.arch, sgd.epochs, sgd.lr, sgd.momentum, sgd.weight_decay, sgd.lr_schedule) == \
        ("resnet18", 180, 0.1, 0.9, 5e-4, "step")
    assert paper.retrain_sparsities == (0.9, 0.95, 0.98)
    with pytest.raises(ValueError, match="preset must be one of"):
        get_study_preset("mnist")
    with pytest.raises(ValueError, match="methods must be a non-empty list from"):
        study_runner.check_methods(DIGITS_SMOKE, ["adam"])
    with pytest.raises(ValueError, match="method must be one of"):
        DIGITS_SMOKE.method_config("adam")
    # the optional SFW + init row: a config with sfw_init=True once TrainConfig has the field
    if "sfw_init" in config_lib.field_names():
        assert DIGITS_SMOKE.method_config("sfw_init").sfw_init is True
    else:
        with pytest.raises(ValueError, match="method 'sfw_init'.*sfw_init"):
            DIGITS_SMOKE.method_config("sfw_init")
    with pytest.raises(ValueError, match="scopes must include the preset's main scope"):
        study_runner.run_study(DIGITS_SMOKE, "unused", scopes=["all"], progress=False)


def test_set_overrides_win_over_method_values():
    """``--set tau=T`` must reach a method whose preset entry sets tau itself (cifar10-cpu's
    SFW K-sparse sets its own k_frac and tau)."""
    preset = get_study_preset("cifar10-cpu")
    assert "tau" in preset.methods["sfw_ksparse"]
    tau = preset.method_config("sfw_ksparse").tau + 2.5          # differs from every preset value
    over = study_lib.apply_overrides(preset, study_lib.parse_overrides([f"tau={tau}",
                                                                        "epochs=3"]))
    for m in ("sfw_ksparse", "sfw_l2", "sgd", "sfw_init"):
        cfg = over.method_config(m)
        assert (cfg.tau, cfg.epochs) == (tau, 3)
    assert over.method_config("sfw_ksparse").k_frac == 0.02      # untouched fields kept
    assert over.method_config("sgd").optimizer == "sgd"
    assert study_lib.apply_overrides(preset, {}) is preset


def test_cli_errors(capsys):
    with pytest.raises(SystemExit) as e:
        study_lib.main(["--preset", "nope"])
    assert e.value.code == 2 and "preset must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_lib.main(["--preset", "digits-smoke", "--methods", "adam"])
    assert "methods must be a non-empty list" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_lib.main([])
    assert "--preset is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_lib.main(["--preset", "digits-smoke", "--set", "epoch=3"])
    assert "'epoch' is not a TrainConfig field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_lib.main(["--preset", "digits-smoke", "--set", "epochs"])
    assert "--set takes KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a bad value is reported before any work
        study_lib.main(["--preset", "digits-smoke", "--set", "epochs=0"])
    assert "epochs must be an int >= 1, got 0" in capsys.readouterr().err
    assert study_lib.parse_overrides(["epochs=6", "model-kwargs={\"width\": 1.0}",
                                      "dataset=cifar10"]) == {
        "epochs": 6, "model_kwargs": {"width": 1.0}, "dataset": "cifar10"}
    assert study_lib.main(["--list-presets"]) == 0
    assert "cifar10-cpu" in capsys.readouterr().out


def test_plots_from_plain_data(tmp_path, monkeypatch):
    drawn = {}
    save = plots._save

    def record(fig, path):          # the lines of the left panel, by legend label
        drawn.update({ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()), ln.get_ls())
                      for ln in fig.axes[0].get_lines()})
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", record)
    path = plots.plot_accuracy_vs_sparsity(
        str(tmp_path / "a.png"), {"A": ([0, 0.5, 0.9, 0.99], [0.9, 0.9, 0.85, 0.3]),
                                  "B": ([0, 0.5, 0.9, 0.99], [0.92, 0.6, 0.1, 0.1])},
        retrained={"B": ([0.9, 0.95], [0.8, 0.7])}, dense={"A": 0.9, "B": 0.92}, title="t",
        recalibrated={"B": ([0.9, 0.5], [0.4, 0.7])})
    _check_png(path)
    assert drawn["B one-shot + BN re-cal"] == ([50.0, 90.0], [70.0, 40.0], "-.")
    assert drawn["B pruned + retrained"] == ([90.0, 95.0], [80.0, 70.0], "--")
    assert drawn["A one-shot"][1] == [90.0, 90.0, 85.0, 30.0]
    assert "A one-shot + BN re-cal" not in drawn
    with pytest.raises(ValueError, match=r"recalibrated\['B'\] must be"):
        plots.plot_accuracy_vs_sparsity(str(tmp_path / "x.png"), {"A": ([0], [0.9])},
                                        recalibrated={"B": ([0.9], [])})
    mags = {"w": np.concatenate([np.zeros(10), 10.0 ** np.linspace(-6, 0, 990)])}
    from sfw_jax.pruning import weight_stats
    hist = weight_stats.magnitude_histogram(mags, list(study_runner.HIST_EDGES))
    cdf = weight_stats.magnitude_cdf(mags)
    _check_png(plots.plot_weight_distribution(str(tmp_path / "w.png"), hist, cdf, title="A"))
    _check_png(plots.plot_cdf_comparison(str(tmp_path / "c.png"), {"A": cdf, "B": cdf}))
    with pytest.raises(ValueError, match="oneshot must hold at least one"):
        plots.plot_accuracy_vs_sparsity(str(tmp_path / "x.png"), {})
    with pytest.raises(ValueError, match="equal non-zero length"):
        plots.plot_accuracy_vs_sparsity(str(tmp_path / "x.png"), {"A": ([0, 0.5], [0.9])})
    with pytest.raises(ValueError, match="log10 histogram"):
        plots.plot_weight_distribution(str(tmp_path / "x.png"), {**hist, "log": False}, cdf)
    assert not os.path.exists(tmp_path / "x.png")


def test_tuning_table_reads_validation_numbers(study, tmp_path, capsys):
    from experiments import tuning_table

    out, summary = study
    md = tmp_path / "tuning.md"
    assert tuning_table.main([out, "--sparsities", "50", "90", "--out", str(md)]) == 0
    text = md.read_text()
    assert text == capsys.readouterr().out
    lines = text.strip().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    # varied config fields between the two methods appear as columns (optimizer differs)
    assert "optimizer" in head and "val dense" in head and "drop 90%" in head
    assert "test" not in " ".join(head)
    rows = {r.split("|")[2].strip(): [c.strip() for c in r.strip("|").split("|")]
            for r in lines[2:]}
    assert set(rows) == set(METHODS)
    for m in METHODS:
        res = summary["methods"][m]
        v90 = next(r["val_acc"] for r in res["sweep"] if r["scope"] == "kernels"
                   and not r["bn_recal"] and r["target_sparsity"] == 0.9)
        cells = dict(zip(head, rows[m]))
        assert cells["val dense"] == f"{100 * res['dense_val_acc']:.1f}"
        assert cells["val 90%"] == f"{100 * v90:.1f}"
        assert cells["drop 90%"] == f"{100 * (res['dense_val_acc'] - v90):.1f}"
    # --bn-recal adds the re-calibrated validation accuracy per level
    assert tuning_table.main([out, "--sparsities", "90", "--bn-recal"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[-2:] == ["val 90% re-cal", "train s"]
    for line in lines[2:]:
        cells = dict(zip(head, [c.strip() for c in line.strip("|").split("|")]))
        res = summary["methods"][cells["method"]]
        v = next(r["val_acc"] for r in res["sweep"] if r["scope"] == "kernels"
                 and r["bn_recal"] and r["target_sparsity"] == 0.9)
        assert cells["val 90% re-cal"] == f"{100 * v:.1f}"
    with pytest.raises(SystemExit):
        tuning_table.main([str(tmp_path / "missing")])
    assert "has no summary.json" in capsys.readouterr().err
