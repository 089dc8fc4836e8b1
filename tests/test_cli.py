"""The `sfw-train` command line (sfw_jax.training.cli): flag errors before any work, presets and overrides, a run."""

import json
import os

import pytest

from sfw_jax.training import cli
from sfw_jax.training import config as config_lib
from sfw_jax.training import presets
from sfw_jax.training.optimizers import OPTIMIZER_DEFAULTS


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def _printed_config(capsys, argv) -> dict:
    assert cli.main(argv + ["--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_packaging_installs_the_library_and_its_commands():
    """pyproject.toml installs ``sfw_jax``, the ``python -m experiments.X`` / ``benchmarks.X``
    command lines the docs call, and the ``sfw-train`` script, whose target is this command
    line (the wheel itself: tests/test_wheel.py)."""
    import importlib
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml")) as f:
        text = f.read()

    def section(name: str) -> list[str]:
        body = text.split(f"[{name}]\n", 1)[1].split("\n[", 1)[0]
        return [ln.strip() for ln in body.splitlines() if ln.strip() and ln[0] != "#"]

    assert section("tool.setuptools.packages.find") == [
        'include = ["sfw_jax*", "experiments*", "benchmarks*"]']
    scripts = dict(re.fullmatch(r'([\w-]+) = "(.+)"', ln).groups()
                   for ln in section("project.scripts"))
    assert set(scripts) == {"sfw-train"}
    module, name = scripts["sfw-train"].split(":")
    assert getattr(importlib.import_module(module), name) is cli.main


def test_unknown_flag_and_abbreviation_are_errors(capsys):
    assert "unrecognized arguments: --bogus" in _error(capsys, ["--bogus", "1"])
    assert "unrecognized arguments: --epo" in _error(capsys, ["--epo", "3"])


def test_unknown_preset_lists_names(capsys):
    err = _error(capsys, ["--preset", "nope"])
    assert "invalid choice: 'nope'" in err and "paper-resnet18-cifar10" in err


def test_bad_values_name_the_option(capsys):
    assert "k_frac must be a finite number >= 0.0 and <= 1.0, got 2.0" in _error(
        capsys, ["--k-frac", "2"])
    assert "batch_size must be an int >= 1, got 0" in _error(capsys, ["--batch-size", "0"])
    assert "invalid choice: 'adam'" in _error(capsys, ["--optimizer", "adam"])
    assert "argument --epochs: invalid int value: 'x'" in _error(capsys, ["--epochs", "x"])


def test_conflicting_flags(capsys):
    err = _error(capsys, ["--optimizer", "sgd", "--constraint", "l2", "--tau", "3"])
    assert "--constraint, --tau: only meaningful with --optimizer sfw" in err
    assert "weight_decay=0.1 conflicts with optimizer='sfw'" in _error(
        capsys, ["--weight-decay", "0.1"])
    assert ("coordinator_address/num_processes/process_id are only used with distributed=True"
            in _error(capsys, ["--process-id", "1"]))
    assert "resume must be False when out_dir is None" in _error(capsys, ["--resume"])


def test_resume_without_checkpoint_is_an_error(capsys, tmp_path):
    err = _error(capsys, ["--resume", "--out-dir", str(tmp_path / "none")])
    assert "resume=True but out_dir" in err and "holds no checkpoint" in err


def test_preset_values_and_explicit_overrides(capsys):
    cfg = _printed_config(capsys, ["--preset", "paper-vgg16-cifar10"])
    expected = {**config_lib.TrainConfig().to_dict(),
                "rest_lr": OPTIMIZER_DEFAULTS["sfw"]["rest_lr"],
                **presets.PRESETS["paper-vgg16-cifar10"]}
    assert cfg == json.loads(json.dumps(expected))
    assert (cfg["arch"], cfg["epochs"], cfg["lr"], cfg["k"], cfg["tau"]) == ("vgg16", 180, 1.0,
                                                                           10, 15.0)
    cfg = _printed_config(capsys, ["--preset", "paper-resnet18-cifar10", "--epochs", "3",
                                   "--tau", "5", "--model-kw", "width=0.25"])
    assert (cfg["arch"], cfg["epochs"], cfg["tau"], cfg["lr_schedule"]) == (
        "resnet18", 3, 5.0, "dynamic_change")
    assert cfg["model_kwargs"] == {"width": 0.25}
    # Switching the preset's optimizer is allowed (its SFW values are not explicit flags)
    # and picks up the SGD defaults for unset fields.
    cfg = _printed_config(capsys, ["--preset", "quickstart-digits", "--optimizer", "sgd",
                                   "--lr", "0.05", "--weight-decay", "0.001"])
    assert (cfg["optimizer"], cfg["lr"], cfg["weight_decay"]) == ("sgd", 0.05, 0.001)
    cfg = _printed_config(capsys, ["--optimizer", "sgd"])
    assert (cfg["lr"], cfg["weight_decay"], cfg["lr_schedule"]) == (0.1, 5e-4, "step")


def test_cpu_kernel_flag(capsys):
    """--cpu-kernel {auto,on,off} sets TrainConfig.cpu_kernel None / True / False; other values
    and the flag with --optimizer sgd are errors."""
    assert _printed_config(capsys, [])["cpu_kernel"] is None
    for value, field in (("auto", None), ("on", True), ("off", False)):
        assert _printed_config(capsys, ["--cpu-kernel", value])["cpu_kernel"] is field
    assert _printed_config(capsys, ["--preset", "quickstart-digits"])["cpu_kernel"] is False
    assert _printed_config(capsys, ["--preset", "quickstart-digits", "--cpu-kernel",
                                    "auto"])["cpu_kernel"] is None
    err = _error(capsys, ["--cpu-kernel", "yes"])
    assert "argument --cpu-kernel: must be one of auto, on, off, got 'yes'" in err
    assert "--cpu-kernel: only meaningful with --optimizer sfw" in _error(
        capsys, ["--optimizer", "sgd", "--cpu-kernel", "off"])


def test_list_presets(capsys):
    assert cli.main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    for name in ("paper-resnet18-cifar10", "paper-vgg16-cifar10", "quickstart-digits"):
        assert name in out


def test_cli_run_writes_logs_and_resumes(capsys, tmp_path):
    out = str(tmp_path / "run")
    argv = ["--dataset", "digits", "--arch", "mlp", "--model-kw", "hidden=[32]",
            "--max-train-samples", "256", "--batch-size", "64", "--init-norm-samples", "2",
            "--lr-schedule", "constant", "--no-progress", "--out-dir", out]
    assert cli.main(argv + ["--epochs", "1"]) == 0
    assert cli.main(argv + ["--epochs", "2", "--resume"]) == 0
    lines = [json.loads(s) for s in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    text = capsys.readouterr().out
    assert "epoch   2/2" in text and "test_acc" in text
    # A second fresh run into the same directory is refused.
    assert "already holds checkpoints" in _error(capsys, argv + ["--epochs", "1"])


def test_quickstart_helpers(tmp_path):
    from experiments import quickstart as qs

    assert qs.SPARSITIES[:3] == (0.0, 0.1, 0.2) and qs.SPARSITIES[-1] == 0.99
    assert len(qs.SPARSITIES) == 19
    table = qs.format_table([0.0, 0.95], {"SFW": [0.981, 0.9], "SGD": [0.99, 0.25]})
    assert table.splitlines() == [
        "sparsity  SFW test acc  SGD test acc",
        "      0%         98.1%         99.0%",
        "     95%         90.0%         25.0%",
    ]
    path = str(tmp_path / "p.png")
    qs.save_plot(path, [0.0, 0.5], {"SFW": [0.9, 0.8], "SGD": [0.95, 0.5]}, "t")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    args = qs.build_parser().parse_args(["--out-dir", str(tmp_path), "--epochs", "2",
                                         "--k-frac", "0.02", "--tau", "10", "--sfw-lr", "1.0"])
    cfgs = qs.build_configs(args)
    assert (cfgs["SFW"].optimizer, cfgs["SFW"].tau, cfgs["SFW"].epochs) == ("sfw", 10.0, 2)
    assert (cfgs["SGD"].optimizer, cfgs["SGD"].lr, cfgs["SGD"].weight_decay) == ("sgd", 0.05,
                                                                               5e-4)


def test_rescale_and_constraint_schedule_flags(capsys):
    cfg = _printed_config(capsys, ["--preset", "quickstart-digits", "--rescale", "fast_gradient",
                                   "--delay-lmo", "0.25"])
    assert (cfg["rescale"], cfg["delay_lmo"], cfg["tau_start"]) == ("fast_gradient", 0.25, None)
    cfg = _printed_config(capsys, ["--tau-start", "20", "--k-frac-start", "0.1",
                                   "--schedule-phases", "3", "--schedule-end", "0.6"])
    assert (cfg["tau_start"], cfg["k_frac_start"], cfg["schedule_phases"],
            cfg["schedule_end"]) == (20.0, 0.1, 3, 0.6)
    cfg = _printed_config(capsys, ["--preset", "quickstart-digits", "--delay-lmo", "none"])
    assert cfg["delay_lmo"] is None
    assert (config_lib.TrainConfig().schedule_phases, config_lib.TrainConfig().schedule_end) == (
        4, 0.5)


def test_constraint_schedule_errors_name_the_option(capsys):
    assert "delay_lmo must be a fraction in (0, 1) or None, got 1.0" in _error(
        capsys, ["--delay-lmo", "1"])
    assert ("delay_lmo must be None with constraint='l2' (it needs one of ['k_sparse', "
            "'k_support']), got 0.3") in _error(capsys, ["--constraint", "l2", "--delay-lmo", "0.3"])
    assert "k_frac_start must be None with constraint='linf'" in _error(
        capsys, ["--constraint", "linf", "--k-frac-start", "0.1"])
    assert "tau_start must be a finite number > 0.0 or None, got 0.0" in _error(
        capsys, ["--tau-start", "0"])
    assert "k_frac_start must be a finite number > 0.0 and <= 1.0 or None, got 1.5" in _error(
        capsys, ["--k-frac-start", "1.5"])
    assert "schedule_phases must be an int >= 2, got 1" in _error(
        capsys, ["--schedule-phases", "1"])
    assert "schedule_end must be a finite number > 0.0 and <= 1.0, got 0.0" in _error(
        capsys, ["--schedule-end", "0"])
    assert "delay_lmo=0.3 conflicts with tau_start=15.0" in _error(
        capsys, ["--delay-lmo", "0.3", "--tau-start", "15"])
    assert "sfw_init=True conflicts with tau_start=15.0" in _error(
        capsys, ["--sfw-init", "--tau-start", "15"])
    assert "--delay-lmo: only meaningful with --optimizer sfw" in _error(
        capsys, ["--optimizer", "sgd", "--delay-lmo", "0.3"])
    assert "invalid choice: 'fast'" in _error(capsys, ["--rescale", "fast"])


def test_study_set_reaches_the_new_options(capsys):
    """``python -m experiments.study --set KEY=VALUE`` parses the new fields' values (JSON, else
    a string) and validates them before any work."""
    from experiments import study as study_lib
    from experiments.study_presets import get_study_preset

    preset = get_study_preset("cifar10-cpu-gap")
    sets = {"fg": ["rescale=fast_gradient", "lr=0.1"], "delay": ["delay_lmo=0.3333"],
            "tau": ["tau_start=15", "schedule_phases=4", "schedule_end=0.5"],
            "kf": ["k_frac_start=0.05", "init_norm_rule=reference"]}
    got = {name: config_lib.validate(study_lib.apply_overrides(
        preset, study_lib.parse_overrides(items)).method_config("sfw_ksparse"))
        for name, items in sets.items()}
    assert (got["fg"].rescale, got["fg"].lr) == ("fast_gradient", 0.1)
    assert got["delay"].delay_lmo == 0.3333 and got["delay"].k_frac == 0.01
    assert (got["tau"].tau_start, got["tau"].tau, got["tau"].schedule_phases) == (15, 7.0, 4)
    assert (got["kf"].k_frac_start, got["kf"].init_norm_rule) == (0.05, "reference")
    with pytest.raises(SystemExit) as exc:
        study_lib.main(["--preset", "cifar10-cpu-gap", "--methods", "sfw_ksparse",
                        "--set", "delay_lmo=2"])
    assert exc.value.code == 2
    assert "delay_lmo must be a fraction in (0, 1) or None, got 2" in capsys.readouterr().err


def test_lp_order_flag(capsys):
    """--lp-order P sets the order of --constraint lp; below 1 or with SGD it is refused."""
    assert _printed_config(capsys, [])["lp_order"] == 2.0
    cfg = _printed_config(capsys, ["--constraint", "lp", "--lp-order", "1.5"])
    assert (cfg["constraint"], cfg["lp_order"]) == ("lp", 1.5)
    assert "lp_order must be a finite number >= 1.0, got 0.5" in _error(
        capsys, ["--constraint", "lp", "--lp-order", "0.5"])
    assert "--lp-order: only meaningful with --optimizer sfw" in _error(
        capsys, ["--optimizer", "sgd", "--lp-order", "3"])
