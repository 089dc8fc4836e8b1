"""The device suite (benchmarks/device_suite.py) at its smallest plan, so it cannot rot between
GPU slots: every section runs and records real values, and a failing or killed section does not
lose the others."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import pytest

from benchmarks import device_suite as ds
from benchmarks.suite import plans, sections
from benchmarks.suite import study as suite_study
from sfw_jax.training import config as config_lib
from sfw_jax.training import presets
from sfw_jax.training import schedules
from sfw_jax.fw.topk import METHODS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ci_report(tmp_path_factory):
    """(report dict, output folder) of ``python -m benchmarks.device_suite --plan ci`` with an
    absent archive (the study then runs on the synthetic image-folder archive)."""
    tmp = tmp_path_factory.mktemp("suite")
    out = tmp / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_suite", "--plan", "ci", "--out", str(out),
         "--data", str(tmp / "absent.tar.gz")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out / plans.REPORT_JSON) as f:
        return json.load(f), out


def test_every_section_ok_and_files_fit(ci_report):
    rep, out = ci_report
    assert list(rep["sections"]) == list(plans.SECTIONS)
    for name, sec in rep["sections"].items():
        assert sec["status"] == "ok", (name, sec.get("error"))
        assert sec["seconds"] > 0
    files = sorted(os.listdir(out))
    assert files == sorted([plans.REPORT_JSON, plans.REPORT_MD, plans.PLOT_FILE, plans.TESTS_LOG])
    assert len(files) <= plans.MAX_FILES
    assert all(0 < os.path.getsize(out / f) < plans.MAX_FILE_BYTES for f in files)
    assert rep["files"] == files
    assert rep["finished"] is not None and rep["plan"] == "ci"
    md = (out / plans.REPORT_MD).read_text()
    for name in plans.SECTIONS:
        assert f"## {name}" in md
        assert f"| {name} | ok |" in md
    assert "(cannot render" not in md           # every section's tables render
    assert "| steps per call | ms per call | ms per step |" in md


def test_env_and_tests_sections(ci_report):
    rep, out = ci_report
    env = rep["sections"]["env"]
    assert env["backend"] == jax.default_backend()
    assert env["jax"] == jax.__version__
    assert env["device_count"] == jax.device_count() >= 1
    tests = rep["sections"]["tests"]
    assert (tests["passed"], tests["failed"], tests["errors"]) == (2, 0, 0)
    assert tests["failing"] == [] and tests["returncode"] == 0 and not tests["timed_out"]
    log = (out / plans.TESTS_LOG).read_text()
    assert "test_counts_pass_exact PASSED" in log and "2 passed" in log


def test_topk_update_and_train_step_values(ci_report):
    rep, _ = ci_report
    topk = rep["sections"]["topk"]
    assert topk["methods"] == list(METHODS)
    for dtype in ("float32", "bfloat16"):
        row = topk["ms"][dtype]["2048"]
        assert row["k"] == 102                      # max(10, floor(0.05 * 2048))
        assert row["ties"] >= 1
        assert all(row[m] > 0 for m in METHODS)
    assert topk["skipped"] == [] and topk["errors"] == []

    upd = rep["sections"]["update"]
    assert set(upd["methods"]) == set(METHODS)
    assert (upd["params"], upd["tensors"]) == (64 * 32 + 32, 2)
    for m, r in upd["methods"].items():
        assert r["sfw_ms"] > 0 and r["sgd_ms"] > 0
        assert r["ratio"] == pytest.approx(r["sfw_ms"] / r["sgd_ms"], abs=1e-4)
    assert upd["op_counts"]["status"] == "skipped"
    assert set(upd["selection"]) == {"segmented_tree", "bisect_batched", "bisect_per_leaf",
                                     "segmented_batched", "segmented_per_leaf"}
    assert all(r["ms"] > 0 and r["ops"] > 0 for r in upd["selection"].values())

    ts = rep["sections"]["train_step"]
    assert set(ts["precisions"]) == {"fp32", "bf16"}
    assert set(ts["steps_per_call"]) == {"1", "8"}
    for s, r in ts["steps_per_call"].items():
        assert r["step_ms"] == pytest.approx(r["call_ms"] / int(s), abs=1e-3) and r["step_ms"] > 0
    for r in ts["precisions"].values():
        assert r["ratio"] == pytest.approx(r["sfw_ms"] / r["sgd_ms"], abs=1e-4)
        assert r["sfw_images_per_s"] == pytest.approx(1e3 * ts["batch"] / r["sfw_ms"], abs=0.1)
        assert r["sgd_images_per_s"] == pytest.approx(1e3 * ts["batch"] / r["sgd_ms"], abs=0.1)


def test_study_accuracy_levels_epochs_and_schedule(ci_report):
    rep, _ = ci_report
    st = rep["sections"]["study"]
    assert st["data"]["source"] == "synthetic"
    assert (st["data"]["train"], st["data"]["test"]) == (80, 40)
    assert 1 <= st["epochs"] <= st["max_epochs"] == 2
    levels = {f"{p:g}" for p in plans.SPARSITY_PERCENTS}
    acc = st["accuracy"]
    assert set(acc) == {"sfw_ksparse", "sgd", f"sgd_retrain_{plans.RETRAIN_EPOCHS}ep"}
    for m in ("sfw_ksparse", "sgd"):
        assert set(acc[m]) == levels
        assert all(0.0 <= a <= 1.0 for a in acc[m].values())
        assert acc[m]["0"] == st["dense_test_acc"][m]        # pruning 0 % changes nothing
        assert set(st["accuracy_by_scope"]["all"][m]) == levels
    assert set(acc[f"sgd_retrain_{plans.RETRAIN_EPOCHS}ep"]) == {f"{p:g}" for p in
                                                             plans.RETRAIN_PERCENTS}
    for r in st["retrain"]["records"]:
        assert r["final_sparsity"] == pytest.approx(r["sparsity"], abs=1e-3)
    for m, p in st["probe"].items():
        assert 0 < p["epoch_s"] <= p["first_epoch_s"]
        assert p["compile_in_first_epoch_s"] > 0
    # The epochs run are those of a fresh E-epoch run, resumed or not: same lr per epoch.
    for m, hist in st["history"].items():
        cfg = config_lib.validate(config_lib.TrainConfig.from_dict(st["configs"][m]))
        assert cfg.epochs == st["epochs"] == len(hist)
        want = schedules.lr_sequence(cfg.lr_schedule, cfg.lr, cfg.epochs,
                                     [h["train_loss"] for h in hist])[:len(hist)]
        assert [h["lr"] for h in hist] == pytest.approx(want, rel=1e-12)


def test_failing_section_recorded_as_error_others_kept(tmp_path, monkeypatch):
    def boom(suite, deadline):
        raise RuntimeError("injected failure")

    monkeypatch.setitem(ds.SECTION_FUNCS, "tests", boom)
    rep = ds.run_suite(str(tmp_path), plans.PLANS["ci"], sections=["topk", "env", "tests"])
    secs = rep["sections"]
    assert list(secs) == ["env", "tests", "topk"]                # the suite's order
    assert secs["env"]["status"] == "ok" and secs["topk"]["status"] == "ok"
    assert secs["tests"]["status"] == "error"
    assert secs["tests"]["error"].startswith("RuntimeError: injected failure")
    assert set(secs["topk"]["ms"]["float32"]["2048"]) >= set(METHODS)
    with open(tmp_path / plans.REPORT_JSON) as f:
        assert json.load(f) == rep
    assert "| tests | error | " in (tmp_path / plans.REPORT_MD).read_text()


def test_killed_section_leaves_earlier_ones_on_disk(tmp_path, monkeypatch):
    def killed(suite, deadline):
        raise KeyboardInterrupt        # not an Exception: as if the command were stopped

    monkeypatch.setitem(ds.SECTION_FUNCS, "update", killed)
    with pytest.raises(KeyboardInterrupt):
        ds.run_suite(str(tmp_path), plans.PLANS["ci"], sections=["env", "update", "train_step"])
    with open(tmp_path / plans.REPORT_JSON) as f:
        rep = json.load(f)
    assert rep["sections"]["env"]["status"] == "ok"
    assert rep["sections"]["update"]["status"] == "error"
    assert "did not finish" in rep["sections"]["update"]["error"]
    assert "train_step" not in rep["sections"] and rep["finished"] is None


def test_fit_epochs():
    def both(m, e):
        return True

    t = {"sfw": 2.0, "sgd": 1.0}
    assert suite_study.fit_epochs(9.0, t, both, 100) == 4                 # 3 more epochs: 9 s
    assert suite_study.fit_epochs(8.9, t, both, 100) == 3
    assert suite_study.fit_epochs(1e6, t, both, 7) == 7                   # capped
    assert suite_study.fit_epochs(-3.0, t, both, 100) == 1                # nothing fits: the probe epoch
    # a run that cannot resume trains all E epochs again
    assert suite_study.fit_epochs(9.0, t, lambda m, e: m == "sgd", 100) == 3     # 2 * 3 + 1 * 2 = 8
    assert suite_study.fit_epochs(1.5, t, lambda m, e: False, 100) == 1


def test_resume_is_exact_follows_the_schedule():
    sgd = presets.from_preset(plans.SGD_PRESET)                  # 'step': lr / 10 at E//3, 2E//3
    got = [suite_study.resume_is_exact(sgd, 4, e) for e in range(1, 10)]
    # epoch 1 is a milestone for E in {2, ..., 5}, as for the probe's 4 epochs
    assert got == [True, True, True, True, True, False, False, False, False]
    cos = sgd.replace(lr_schedule="cosine")
    assert [suite_study.resume_is_exact(cos, 4, e) for e in range(1, 7)] == [True, False, False, True,
                                                                    False, False]
    sfw = presets.from_preset(plans.SFW_PRESET)
    assert [suite_study.resume_is_exact(sfw, plans.PROBE_EPOCHS, e) for e in (1, 3, 6)] == [True, True, False]


def test_parse_pytest_lines():
    lines = ["tests/a.py::test_x PASSED                [ 10%]",
             "tests/a.py::test_y[1-2] FAILED           [ 20%]",
             "tests/a.py::test_z SKIPPED (no gpu)      [ 30%]",
             "tests/b.py::test_w PASSED                [ 40%]",
             "tests/b.py::test_w ERROR                 [ 40%]",   # teardown error
             "collected 5 items", "FAILED tests/a.py::test_y[1-2] - assert 1 == 2"]
    res = sections.parse_pytest_lines(lines)
    assert (res["passed"], res["failed"], res["errors"], res["skipped"]) == (1, 1, 1, 1)
    assert res["failing"] == ["tests/a.py::test_y[1-2]", "tests/b.py::test_w"]


def test_synthetic_archive_loads_as_image_folder(tmp_path):
    from sfw_jax.training.datasets import load_dataset

    path = suite_study.write_synthetic_archive(str(tmp_path / "s.tar.gz"), 3, 2)
    d = load_dataset("cifar10", data_dir=path, val_fraction=0.0, use_cache=False)
    assert d.train.images.shape == (30, 32, 32, 3) and d.test.images.shape == (20, 32, 32, 3)
    assert sorted(set(d.train.labels.tolist())) == list(range(10))
    means = [d.train.images[d.train.labels == c].mean() for c in range(10)]
    assert len({round(float(m)) for m in means}) == 10 and all(math.isfinite(m) for m in means)


def test_op_counts_called_per_method_until_the_deadline(monkeypatch):
    import time
    import types

    calls = []

    def op_counts(methods=None, defaults=True):
        calls.append((methods, defaults))
        if methods == ["radix"]:
            raise RuntimeError("cannot count")
        return {(methods or ["defaults"])[0]: {"sfw": 7, "sgd": 3}}

    fake = types.ModuleType("benchmarks.op_count")
    fake.op_counts = op_counts
    monkeypatch.setitem(sys.modules, "benchmarks.op_count", fake)
    out = sections._op_counts(["sort", "radix", "search"], time.time() + 600)
    assert calls == [([], True), (["sort"], False), (["radix"], False), (["search"], False)]
    assert out["counts"] == {"defaults": {"defaults": {"sfw": 7, "sgd": 3}},
                             "sort": {"sort": {"sfw": 7, "sgd": 3}},
                             "search": {"search": {"sfw": 7, "sgd": 3}}}
    assert out["status"] == "error" and "radix: RuntimeError: cannot count" in out["error"]
    late = sections._op_counts(["sort"], time.time() - 1)
    assert (late["status"], late["counts"], late["skipped"]) == ("ok", {}, ["defaults", "sort"])
    monkeypatch.setitem(sys.modules, "benchmarks.op_count", None)      # import fails
    absent = sections._op_counts(["sort"], time.time() + 600)
    assert absent["status"] == "skipped" and "does not import" in absent["reason"]


def test_tests_section_skips_outside_a_clone(monkeypatch, tmp_path):
    """From an installed wheel (no tests/ beside the packages) the section says why it ran no
    test instead of failing on an empty pytest run."""
    monkeypatch.setattr(sections, "REPO_ROOT", str(tmp_path))
    out = sections.section_tests(None, deadline=0.0)
    assert out["status"] == "skipped" and "from a clone of the repository" in out["reason"]
