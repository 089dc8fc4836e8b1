"""One-shot pruning of a language-model run (``experiments.prune_sweep`` by criterion, bits per
byte) and the ``text-cpu`` study on a tiny Transformer and corpus (its reports, the compact
summary.json, Wanda reusing the AdamW run, resuming)."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from experiments import lm_report
from experiments import prune_sweep as ps
from experiments import study_runner, tuning_table
from experiments._loaded_run import load_trained
from experiments.study import apply_overrides
from experiments.study_presets import TEXT_CORPUS, TEXT_CPU
from sfw_jax.training.config import validate
from sfw_jax.training import run_folder
from tests.conftest import TINY_LM, forbid_calls


@pytest.fixture(scope="module")
def lm_run(tiny_lm_run):
    return load_trained(tiny_lm_run)


def test_sweep_by_criterion_reports_bits_per_byte(lm_run):
    rows = ps.sweep(lm_run, [0.0, 0.5], scopes=["kernels"], nm=["2:4"],
                    criteria=["magnitude", "row", "wanda"], calib_batches=2, progress=False)
    keys = [(r["criterion"], r["pattern"], r["target_sparsity"]) for r in rows]
    assert keys == [("magnitude", "unstructured", 0.0), ("magnitude", "unstructured", 0.5),
                    ("row", "unstructured", 0.0), ("row", "unstructured", 0.5),
                    ("wanda", "unstructured", 0.0), ("wanda", "unstructured", 0.5),
                    ("magnitude", "2:4", 0.5), ("wanda", "2:4", 0.5)]
    final = lm_run.final
    for r in rows:
        assert r["test_bits_per_byte"] == pytest.approx(r["test_loss"] / math.log(2))
        assert r["n_scope"] == 4 * 32 * 32 + 2 * 32 * 128
        if r["target_sparsity"] == 0.0:
            assert r["test_bits_per_byte"] == pytest.approx(final["test_bits_per_byte"],
                                                            rel=1e-9)
        else:
            assert r["n_pruned"] == r["n_scope"] // 2
            assert r["test_bits_per_byte"] > final["test_bits_per_byte"]
    by = {k: r for k, r in zip(keys, rows)}
    # three different masks at 50 %: the criteria do not coincide
    assert len({by[(c, "unstructured", 0.5)]["test_loss"]
                for c in ("magnitude", "row", "wanda")}) == 3


def test_sweep_cli_on_a_language_model_run(tiny_lm_run, tmp_path, capsys):
    out = str(tmp_path / "s.csv")
    assert ps.main([tiny_lm_run, "--scope", "kernels", "--sparsities", "0", "70",
                    "--criteria", "wanda", "--calib-batches", "2", "--out", out,
                    "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "val bpb" in text and "dense test bits per byte" in text
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["criterion"] for r in rows] == ["wanda", "wanda"]
    assert list(rows[0])[-2:] == list(ps.LM_FIELDS)


def test_criteria_errors(lm_run):
    with pytest.raises(ValueError, match=r"criteria must be a non-empty list from "
                                         r"\['magnitude', 'row', 'wanda'\], got \['obd'\]"):
        ps.sweep(lm_run, [0.5], criteria=["obd"], progress=False)
    with pytest.raises(ValueError, match="calib_batches must be an int >= 1"):
        ps.sweep(lm_run, [0.5], criteria=["wanda"], calib_batches=0, progress=False)


def test_text_cpu_preset():
    assert TEXT_CPU.default_methods() == ["adamw", "sfw", "adam_sfw", "adamw_wanda"]
    assert TEXT_CPU.trained_as("adamw_wanda") == ("adamw", "wanda")
    assert TEXT_CPU.trained_as("adam_sfw") == ("adam_sfw", "magnitude")
    cfgs = {m: validate(TEXT_CPU.method_config(m, "x")) for m in TEXT_CPU.default_methods()}
    assert cfgs["adamw_wanda"] == cfgs["adamw"]
    assert {c.optimizer for c in cfgs.values()} == {"adamw", "sfw", "adam_sfw"}
    # equal steps: every method trains on the same windows for the same epochs and batch
    assert len({(c.max_train_samples, c.epochs, c.batch_size) for c in cfgs.values()}) == 1
    assert all(c.sfw_scope == "kernels" and c.data_dir == TEXT_CORPUS for c in cfgs.values())
    assert TEXT_CPU.metric == "test_bits_per_byte" and TEXT_CPU.nm_patterns == ("2:4",)


def tiny_text_preset(corpus: str):
    return apply_overrides(TEXT_CPU, {
        "model_kwargs": TINY_LM["model_kwargs"], "data_dir": corpus, "max_train_samples": 96,
        "epochs": 1, "batch_size": 16, "eval_batch_size": 64, "init_norm_samples": 2,
        "progress": False})


@pytest.fixture(scope="module")
def text_study(tmp_path_factory, text_corpus):
    out = str(tmp_path_factory.mktemp("study") / "text")
    preset = tiny_text_preset(text_corpus)
    return out, preset, study_runner.run_study(preset, out, progress=False)


def test_text_study_writes_the_compact_summary_and_reports(text_study):
    out, preset, record = text_study
    assert list(record["methods"]) == ["adamw", "sfw", "adam_sfw", "adamw_wanda"]
    # adamw_wanda is the adamw run pruned by Wanda: no run of its own
    assert sorted(os.listdir(os.path.join(out, "runs"))) == ["adam_sfw", "adamw", "sfw"]
    assert record["methods"]["adamw_wanda"]["trained_as"] == "adamw"
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["metric"] == "test_bits_per_byte"
    assert set(summary["methods"]) == {"adamw", "sfw", "adam_sfw", "adamw_wanda"}
    for m, levels in summary["methods"].items():
        assert list(levels) == ["0", "50", "70", "90", "2:4"], m
        assert all(v > 0 for v in levels.values())
    assert summary["methods"]["adamw_wanda"]["0"] == summary["methods"]["adamw"]["0"]
    assert summary["methods"]["adamw_wanda"]["50"] != summary["methods"]["adamw"]["50"]
    final = record["methods"]["adam_sfw"]["final"]
    assert summary["methods"]["adam_sfw"]["0"] == pytest.approx(final["test_bits_per_byte"])
    with open(os.path.join(out, "study.json")) as f:
        assert json.load(f)["methods"]["sfw"]["criterion"] == "magnitude"
    table = open(os.path.join(out, "table.md")).read()
    for label in ("AdamW", "SFW (momentum)", "Adam-SFW", "AdamW + Wanda"):
        assert f"| {label} |" in table
    assert "Adam-SFW dense vs AdamW dense" in table and "At 2:4: Adam-SFW" in table
    assert os.path.getsize(os.path.join(out, "bits_per_byte_vs_sparsity.png")) > 1000
    wanda = os.path.join(out, "runs", "adamw", "sweep.csv")
    with open(wanda) as f:
        crit = {r["criterion"] for r in csv.DictReader(f)}
    assert crit == {"magnitude", "wanda"}


def test_text_study_second_invocation_redoes_nothing(text_study, monkeypatch):
    out, preset, first = text_study
    import sfw_jax.pruning as pruning
    import sfw_jax.pruning.wanda as wanda

    forbid_calls(monkeypatch, (study_runner.loop, "train"), (pruning, "masks_for_sweep"),
                 (wanda, "input_norms"))
    again = study_runner.run_study(preset, out, progress=False)
    for m in first["methods"]:
        assert again["methods"][m]["sweep"] == first["methods"][m]["sweep"]


def test_tuning_table_shows_validation_bits_per_byte(text_study, capsys):
    out, _, record = text_study
    assert tuning_table.main([out, "--metric", "bits_per_byte", "--sparsities", "50",
                              "--nm", "2:4"]) == 0
    text = capsys.readouterr().out
    assert "val bpb dense" in text and "val bpb 2:4" in text and "test" not in text
    dense = record["methods"]["adamw"]["dense_val_bits_per_byte"]
    assert f"{dense:.3f}" in text
    row = next(line for line in text.splitlines() if "| adamw_wanda |" in line)
    wanda50 = lm_report.levels(record["methods"]["adamw_wanda"], "val")["50"]
    assert f"{wanda50:.3f}" in row
