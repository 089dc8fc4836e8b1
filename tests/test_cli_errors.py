"""Every command line: a user's error is one line naming the file or value, exit status 2, no
traceback (``--debug`` re-raises it); progress bars only on a terminal, one line per epoch in a
log."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments import fidelity, quickstart, retrain, study, tuning_table
from experiments import prune_sweep
from sfw_jax import _progress
from sfw_jax.training import cli
from sfw_jax.training import config as config_lib
from sfw_jax.training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_missing_data_is_one_line_exit_2_without_traceback(tmp_path):
    """The issue's example, as a process: ``python -m experiments.train --dataset idx
    --data-dir /nonexistent``."""
    missing = str(tmp_path / "nonexistent")
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--dataset", "idx",
                           "--data-dir", missing, "--epochs", "1"], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"sfw-train: error: data_dir {missing} does not exist. ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_corrupt_data_names_the_file_and_debug_shows_the_traceback(tmp_path, capsys):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"not an idx file")
    argv = ["--dataset", "idx", "--data-dir", str(tmp_path), "--epochs", "1", "--no-progress"]
    err = _one_line_error(capsys, cli.main, argv)
    assert err.startswith(f"sfw-train: error: {tmp_path}") and "ubyte" in err
    from sfw_jax.training.datasets import DataFormatError
    with pytest.raises(DataFormatError):
        cli.main(argv + ["--debug"])


def test_bad_values_and_presets_are_one_line(capsys):
    assert "k_frac must be a finite number" in _one_line_error(capsys, cli.main,
                                                                ["--k-frac", "2"])
    assert "invalid choice: 'nope'" in _one_line_error(capsys, cli.main, ["--preset", "nope"])
    assert "steps_per_call must be an int >= 1 or None, got 0" in _one_line_error(
        capsys, cli.main, ["--steps-per-call", "0"])
    assert "preset must be one of" in _one_line_error(capsys, study.main, ["--preset", "nope"])
    assert "epochs must be an int >= 1, got 0" in _one_line_error(capsys, quickstart.main,
                                                                  ["--epochs", "0"])
    assert "--samples must be >= 1" in _one_line_error(
        capsys, fidelity.main, ["--data-dir", "x", "--samples", "0"])


def test_folders_that_are_not_runs_are_one_line(tmp_path, capsys):
    for main in (prune_sweep.main, retrain.main):
        err = _one_line_error(capsys, main, [str(tmp_path)])
        assert f"{tmp_path} has no config.json: not a training run folder" in err
        err = _one_line_error(capsys, main, [str(tmp_path / "nothing")])
        assert "nothing' is not a folder" in err
    (tmp_path / "bare").mkdir()             # finished, but trained without checkpoints
    config_lib.save_json(TrainConfig(dataset="digits"), str(tmp_path / "bare" / "config.json"))
    (tmp_path / "bare" / "final.json").write_text("{}")
    for main in (prune_sweep.main, retrain.main):
        err = _one_line_error(capsys, main, [str(tmp_path / "bare")])
        assert f"{tmp_path / 'bare'} holds no checkpoint" in err
    err = _one_line_error(capsys, tuning_table.main, [str(tmp_path)])
    assert f"{tmp_path} has no summary.json" in err
    err = _one_line_error(capsys, fidelity.main, ["--data-dir", str(tmp_path / "none")])
    assert f"data_dir {tmp_path / 'none'} does not exist" in err


def test_progress_bars_only_on_a_terminal(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, text):
            pass

        def flush(self):
            pass

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert _progress.progress_bar(10, "x").disable
    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert not _progress.progress_bar(10, "x").disable
    assert _progress.progress_bar(10, "x", enabled=False).disable


def test_a_logged_run_has_one_line_per_epoch_and_no_bar_frames(tmp_path, capsys):
    """With stderr not a terminal (a log file), training writes one line per epoch to stdout and
    no carriage-return frames anywhere, even with --progress (and three steps per call)."""
    argv = ["--dataset", "digits", "--arch", "mlp", "--model-kw", "hidden=[16]",
            "--max-train-samples", "128", "--batch-size", "32", "--init-norm-samples", "2",
            "--lr-schedule", "constant", "--epochs", "2", "--log-every", "1", "--progress",
            "--steps-per-call", "3"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("epoch")] == ["1/2", "2/2"]
