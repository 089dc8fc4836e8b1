"""The device job (benchmarks/device_job.py) at its smallest plan, so it cannot rot between GPU
slots: one SGD job runs end to end and records real values, a job over its budget stops after
epoch 1 with the estimate, and every real (full-size) job builds its config, model and steps."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import jax
import pytest

from benchmarks.suite import job as job_lib
from benchmarks.suite.job_check import check_job
from benchmarks.suite.plans import JOB_PLANS, MAX_FILE_BYTES, MAX_FILES
from experiments import paper_jobs
from experiments.paper_jobs import (CURVE_PLOT, JOBS, METRICS_FILE, QUEUE, REPORT_FILE,
                                    RETRAIN_PERCENTS, SPARSITY_PERCENTS, SUMMARY_FILE)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI = JOB_PLANS["ci"]
N_TEST = 10 * CI.synthetic_data[1]            # synthetic test images (all classes)


def _job(tmp, *args):
    """(return code, summary, output folder) of ``python -m benchmarks.device_job ... --plan ci``
    on an absent archive (the synthetic one is used)."""
    out = tmp / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_job", *args, "--plan", "ci", "--out", str(out),
         "--data", str(tmp / "absent.tar.gz")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    with open(out / SUMMARY_FILE) as f:
        return proc.returncode, json.load(f), out, proc


@pytest.fixture(scope="module")
def sgd_job(tmp_path_factory):
    rc, summary, out, proc = _job(tmp_path_factory.mktemp("job"), "r18-sgd")
    assert rc == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return summary, out


def _metrics(out):
    with open(out / METRICS_FILE) as f:
        return [json.loads(line) for line in f]


def test_files_and_summary_keys(sgd_job):
    s, out = sgd_job
    files = sorted(os.listdir(out))
    assert files == sorted([SUMMARY_FILE, METRICS_FILE, REPORT_FILE, CURVE_PLOT])
    assert len(files) <= MAX_FILES
    assert all(0 < os.path.getsize(out / f) < MAX_FILE_BYTES for f in files)
    for key in ("job", "preset", "epochs", "seconds_per_epoch", "device", "git", "accuracy",
                "accuracy_bn_recal", "retrain", "status"):
        assert key in s, key
    assert (s["job"], s["preset"], s["status"], s["plan"]) == (
        "r18-sgd", JOBS["r18-sgd"].preset, "ok", "ci")
    assert s["device"].startswith(jax.devices()[0].device_kind) and "plot_error" not in s
    assert s["config"]["val_fraction"] == 0.0 and s["config"]["optimizer"] == "sgd"
    assert s["data"]["source"] == "synthetic"
    assert (s["data"]["trained_on"], s["data"]["test"]) == (10 * CI.synthetic_data[0], N_TEST)
    report = (out / REPORT_FILE).read_text()
    assert "status: **ok**" in report and "| 95 | " in report and "2:4 (N:M)" in report
    with open(out / CURVE_PLOT, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_epochs_and_timing_from_the_run(sgd_job):
    s, out = sgd_job
    hist = _metrics(out)
    assert s["epochs"] == CI.epochs == len(hist) == s["config"]["epochs"]
    assert [h["epoch"] for h in hist] == list(range(1, CI.epochs + 1))
    assert hist[0]["lr"] == pytest.approx(0.1)              # the SGD preset's base lr
    assert s["seconds_per_epoch"] == pytest.approx(
        statistics.median(h["epoch_time"] for h in hist[1:]), abs=1e-3)
    first = s["first_epoch"]
    assert first["first_epoch_s"] == pytest.approx(hist[0]["epoch_time"], abs=1e-3)
    assert 0 < first["epoch_s"] <= first["first_epoch_s"]
    assert first["compile_in_first_epoch_s"] > 0
    est = s["estimate"]
    assert est["epoch_s"] == first["epoch_s"]
    assert est["training_s"] == pytest.approx((CI.epochs - 1) * first["epoch_s"], abs=0.1)
    assert est["total_s"] > est["elapsed_s"] + est["training_s"]
    assert est["retraining_s"] > 0 and est["total_s"] <= s["budget_s"]


def test_accuracies_are_percent_of_the_test_split(sgd_job):
    s, _ = sgd_job
    levels = {f"{p:g}" for p in SPARSITY_PERCENTS}
    assert set(s["accuracy"]) == levels == set(s["accuracy_bn_recal"])
    for acc in (s["accuracy"], s["accuracy_bn_recal"]):
        for a in acc.values():
            assert 0.0 <= a <= 100.0
            assert a * N_TEST / 100 == pytest.approx(round(a * N_TEST / 100), abs=1e-6)
    assert s["accuracy"]["0"] == s["dense_test_acc"]          # pruning 0 % changes nothing
    assert s["scope"] == "kernels"
    nm = s["nm"]
    assert nm["pattern"] == "2:4" and 0 <= nm["accuracy"] <= 100
    assert 0.4 < nm["sparsity"] <= 0.5               # conv1 (3 input channels) stays dense
    lw = s["layerwise_sparsity"]
    assert lw["percent"] == 90
    size = sum(r["size"] for r in lw["layers"])
    pruned = sum(r["pruned"] for r in lw["layers"])
    assert all(r["sparsity"] == r["pruned"] / r["size"] for r in lw["layers"])
    assert pruned == round(0.9 * size) and lw["total"] == pytest.approx(pruned / size)


def test_sgd_job_retrains_at_each_level(sgd_job):
    s, _ = sgd_job
    assert set(s["retrain"]) == {f"{p}" for p in RETRAIN_PERCENTS}
    assert s["retrain_epochs"] == CI.retrain_max_epochs and s["retrain_skipped"] == []
    for r in s["retrain_records"]:
        assert r["epochs"] == s["retrain_epochs"] and r["lr"] == s["retrain_lr"]
        assert r["final_sparsity"] == pytest.approx(r["sparsity"], abs=1e-3)
        assert s["retrain"][f"{100 * r['sparsity']:g}"] == pytest.approx(100 * r["test_acc"])
        assert r["oneshot_test_acc"] * 100 == pytest.approx(
            s["accuracy"][f"{100 * r['sparsity']:g}"])


def test_over_budget_stops_after_epoch_one_with_the_estimate(tmp_path):
    rc, s, out, proc = _job(tmp_path, "r18-sfw", "--budget-s", "1")
    assert rc == 3, proc.stderr[-3000:]
    assert s["status"] == "stopped" and s["epochs"] == 1 and len(_metrics(out)) == 1
    est = s["estimate"]
    assert est["total_s"] > 1.0
    assert f"estimated {est['total_s']:.0f} s" in s["reason"]
    assert "budget of 1 s" in s["reason"] and "does not fit" in s["reason"]
    assert s["accuracy"] == {} and "retrain" not in s and "dense_test_acc" not in s
    assert "stopped: the full length (2 epochs) does not fit" in proc.stderr
    assert "status: **stopped**" in (out / REPORT_FILE).read_text()


def test_a_pair_runs_its_jobs_in_turn_on_shares_of_the_budget(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_job", "r18-pair", "--plan", "ci", "--out",
         str(out), "--data", str(tmp_path / "absent.tar.gz"), "--budget-s", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    summaries = {}
    for name in paper_jobs.PAIRS["r18-pair"]:
        with open(out / name / SUMMARY_FILE) as f:
            summaries[name] = json.load(f)
        assert summaries[name]["job"] == name and summaries[name]["status"] == "stopped"
        assert f"{name}: stopped" in proc.stderr
    assert summaries["r18-sfw"]["budget_s"] == 0.5      # half of the budget, the first job
    assert summaries["r18-sgd"]["budget_s"] < 0.5       # what was left, all to the last one
    assert not (out / SUMMARY_FILE).exists()
    assert [j.name for j in paper_jobs.pair_members("r18-pair")] == ["r18-sfw", "r18-sgd"]
    assert [j.name for j in paper_jobs.pair_members("r18-sgd")] == ["r18-sgd"]
    with pytest.raises(ValueError, match="r18-pair"):
        paper_jobs.pair_members("r50-pair")


def test_estimate_and_retrain_epochs():
    first = {"epoch_s": 2.0, "compile_in_first_epoch_s": 10.0}
    est = job_lib.estimate_seconds(elapsed_s=50.0, epochs=180, first=first, n_train=50_000,
                                   n_test=10_000, evaluations=41, recal_passes=20,
                                   recal_images=6400, retrain_levels=3, retrain_epochs=5)
    ev = 2.0 * 10_000 / 50_000 / 3 + job_lib.EVAL_HOST_S
    evaluation = 41 * ev + 20 * 2.0 * 6400 / 50_000 / 3 + 2 * 0.3 * 10.0
    retrain = 3 * (5 * 2.0 + 2 * ev) + 10.0
    f = job_lib.POST_FACTOR
    assert est["training_s"] == 179 * 2.0
    assert est["total_s"] == pytest.approx(50 + 358 + f * (evaluation + retrain) + 5, abs=0.06)
    # retraining epochs: the most that fit, within the bounds
    per = f * 3 * 2.0
    spare = 200.0 - f * (10.0 + 6 * 0.5)
    assert job_lib.retrain_epochs(200.0, 2.0, 0.5, 10.0, 3, 5, 100) == math.floor(spare / per)
    assert job_lib.retrain_epochs(200.0, 2.0, 0.5, 10.0, 3, 5, 18) == 18
    assert job_lib.retrain_epochs(20.0, 2.0, 0.5, 10.0, 3, 5, 18) == 5
    assert job_lib.min_retrain_epochs(JOB_PLANS["full"]) == paper_jobs.RETRAIN_MIN_EPOCHS == 5
    assert job_lib.min_retrain_epochs(JOB_PLANS["rehearse"]) >= 1


def test_job_table():
    assert QUEUE == ("r18-sfw", "r18-sgd", "vgg16-sfw", "vgg16-sgd", "r18-sfw-seed1", "r18-nm24")
    assert [j for j in QUEUE if JOBS[j].retrain] == ["r18-sgd", "vgg16-sgd"]
    with pytest.raises(ValueError, match="job must be one of"):
        paper_jobs.get_job("r50-sfw")


@pytest.mark.parametrize("name", QUEUE)
def test_dry_run_builds_every_full_job(name):
    got = check_job(JOBS[name])
    r18 = name.startswith("r18")
    assert (got["arch"], got["epochs"], got["val_fraction"]) == (
        "resnet18" if r18 else "vgg16", 180, 0.0)
    assert got["params"] == (11_173_962 if r18 else 14_728_266)
    assert got["batch_norm"] and got["steps_per_epoch"] == 50_000 // 128
    sfw = got["optimizer"] == "sfw"
    assert sfw == (not JOBS[name].retrain)
    if name == "r18-nm24":       # the 20 kernels with 4 | input channels; conv1 and the rest SGD
        assert got["constraints"] == {"NMSparsePolytope": 20, "Unconstrained": 42}
    elif sfw:
        assert got["constraints"] == {"KSparsePolytope": got["tensors"]}
    else:
        assert got["constraints"] == {}
    assert got["train_metrics"] == {"correct": "int32", "loss": "float32"}
