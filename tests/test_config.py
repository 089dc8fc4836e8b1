"""TrainConfig by concern: flat names reach their concern, each concern checks its own options,
the saved configs of the repository's run folders load, and the command line is generated from
the declarations."""

from __future__ import annotations

import ast
import dataclasses
import glob
import json
import math
import os

import pytest

from sfw_jax.training import cli
from sfw_jax.training.config import (CONCERN_OF, CONCERNS, OPTIONS, DataConfig, DeviceConfig,
                                     LoopConfig, ModelConfig, OptimConfig, ScheduleConfig,
                                     TrainConfig, load_json, validate)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flat_names_reach_their_concern():
    cfg = TrainConfig(arch="mlp", tau=3.0, epochs=2, delay_lmo=0.5)
    assert (cfg.model.arch, cfg.optim.tau, cfg.loop.epochs, cfg.schedule.delay_lmo) == (
        "mlp", 3.0, 2, 0.5)
    for name in OPTIONS:
        assert getattr(cfg, name) == getattr(getattr(cfg, CONCERN_OF[name]), name)
    assert len(OPTIONS) == sum(len(dataclasses.fields(c)) for c in CONCERNS.values())
    changed = cfg.replace(tau=4.0, seed=3)
    assert changed.optim == dataclasses.replace(cfg.optim, tau=4.0)
    assert changed.loop == dataclasses.replace(cfg.loop, seed=3)
    assert changed.data is cfg.data and changed.model is cfg.model
    # a concern replaces all its options; a flat name given with it wins
    assert cfg.replace(optim=OptimConfig(tau=5.0)).optim == OptimConfig(tau=5.0)
    assert TrainConfig(optim=OptimConfig(tau=5.0), k=3).optim == OptimConfig(tau=5.0, k=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError, match=r"unknown TrainConfig option\(s\) \['bogus'\]"):
        TrainConfig(bogus=1)
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['bogus'\]"):
        cfg.replace(bogus=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tau = 1.0


def _wrong_value(opt):
    """A value of the wrong type or out of range for ``opt``."""
    if opt.choices is not None:
        return "no-such-choice"
    if opt.kind is bool:
        return "yes"
    if opt.kind is int:
        return opt.lo - 1
    if opt.kind is float:
        return math.nan
    if opt.kind is str:
        return 3
    return ["not", "a", "dict"]


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_rejects_a_wrong_value_by_name(name):
    opt = OPTIONS[name]
    concern = CONCERNS[CONCERN_OF[name]]
    with pytest.raises(ValueError, match=f"^{name} must be .*, got "):
        dataclasses.replace(concern(), **{name: _wrong_value(opt)}).validate()
    with pytest.raises(ValueError, match=f"^{name} must be "):
        validate(TrainConfig(**{name: _wrong_value(opt)}))


def test_each_concern_checks_its_own_rules():
    for concern, text in [
            (DataConfig(val_fraction=1.0), "val_fraction must be in [0, 1), got 1.0"),
            (DataConfig(dataset=""), "dataset must be a non-empty dataset name"),
            (ModelConfig(model_kwargs={"dtype": "bf16"}), "model_kwargs must be free of 'dtype'"),
            (OptimConfig(nm="2:4"), "nm must be None with constraint='k_sparse'"),
            (OptimConfig(optimizer="sgd", sfw_init=True), "sfw_init must be False with "
                                                         "optimizer='sgd'"),
            (ScheduleConfig(delay_lmo=0.3, tau_start=2.0), "delay_lmo=0.3 conflicts with "
                                                           "tau_start=2.0"),
            (LoopConfig(resume=True), "resume must be False when out_dir is None"),
            (LoopConfig(resume=True, out_dir="x", keep_checkpoints=0),
             "keep_checkpoints must be >= 1 when resume=True"),
            (DeviceConfig(process_id=1), "coordinator_address/num_processes/process_id are "
                                         "only used with distributed=True")]:
        with pytest.raises(ValueError) as err:
            concern.validate()
        assert text in str(err.value)
    for concern in CONCERNS.values():
        concern().validate()
    # a rule across concerns: the constraint schedule needs a set with a K
    with pytest.raises(ValueError, match="delay_lmo must be None with constraint='l2'"):
        validate(TrainConfig(constraint="l2", delay_lmo=0.3))


def _saved_configs() -> list[tuple[str, dict]]:
    out = []
    for file in sorted(glob.glob(os.path.join(REPO, "results", "*", "runs", "*",
                                              "config.json"))):
        out.append((file, json.load(open(file))))
    for file in sorted(glob.glob(os.path.join(REPO, "results", "*", "configs.json"))):
        out += [(f"{file}:{m}", d) for m, d in json.load(open(file)).items()]
    return out


def test_saved_configs_of_the_repository_load_unchanged():
    """The flat ``config.json`` of every run folder in results/ (and every study's
    ``configs.json``) loads, validates, and gives back its values."""
    saved = _saved_configs()
    assert sum(f.endswith("config.json") for f, _ in saved) >= 11, [f for f, _ in saved]
    for file, d in saved:
        cfg = validate(TrainConfig.from_dict(d))
        got = cfg.to_dict()
        assert {k: got[k] for k in d} == d, file
        if file.endswith("config.json"):
            assert load_json(file) == TrainConfig.from_dict(d)


def test_the_command_line_is_generated_from_the_declarations():
    parser = cli.build_parser()
    actions = {a.dest: a for a in parser._actions}
    groups = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    for name, opt in OPTIONS.items():
        assert cli._flag(opt) in actions[name].option_strings, name
        assert groups[name] == CONCERNS[CONCERN_OF[name]].GROUP
        assert actions[name].help.startswith(opt.help.replace("%", "%%"))
    with open(os.path.join(REPO, "sfw_jax", "training", "cli.py")) as f:
        calls = [n for n in ast.walk(ast.parse(f.read())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr == "add_argument"]
    assert len(calls) <= 12
