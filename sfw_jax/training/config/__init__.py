"""``TrainConfig``: every option of a training run, declared by concern, and its validation.

The options are declared once, as fields of six small frozen dataclasses, one per concern,
each in its (private) module ``_<concern>.py`` with the checks of its own fields (its
``validate``); they are exported here:

* ``cfg.data``: :class:`DataConfig`, the dataset, where it is, its split and augmentation;
* ``cfg.model``: :class:`ModelConfig`, the architecture, its attributes, compute precision;
* ``cfg.optim``: :class:`OptimConfig`, the optimizer, SFW's sets and steps, learning rates;
* ``cfg.schedule``: :class:`ScheduleConfig`, the learning-rate and constraint schedules;
* ``cfg.loop``: :class:`LoopConfig`, epochs, batches, seed, run folder and checkpoints;
* ``cfg.devices``: :class:`DeviceConfig`, data parallelism and multi-host.

A field is declared with :func:`option`: its default, its ``--help`` text, its range or choices
(the choice tuples and registries are imported from the modules that implement them), and
whether it only applies to SFW (``sfw_only``), may change when a run is resumed
(``resume_may_differ``) or differ between the processes of one run (``per_process``). The
command line (:mod:`sfw_jax.training.cli`) is generated from these declarations: adding an
option is one field plus the code that reads it.

Option names are unique across concerns, and the flat name is the option's one public name:
the flag (``--k-frac`` = ``k_frac``), the key of ``config.json``, of presets and of
``replace``. New code reads and writes options flat: ``cfg.tau``,
``TrainConfig(arch="mlp", tau=5.0)``, ``cfg.replace(tau=5.0)``; a concern (``cfg.data``) is
handed whole to code that needs only that concern. ``config.json`` holds the flat dict of
:meth:`TrainConfig.to_dict`, so the run folders written before the split load unchanged.

Fields left None take an optimizer-dependent default in :func:`resolve`
(:data:`sfw_jax.training.optimizers.OPTIMIZER_DEFAULTS`):

================  ==================  ==============  ==========  ==================
field             optimizer='sfw'     'sgd'           'adamw'     'adam_sfw'
================  ==================  ==============  ==========  ==================
``lr``            1.0 (a factor)      0.1             1e-3        0.01 (a factor)
``weight_decay``  0.0                 5e-4            0.1         0.0
``lr_schedule``   'dynamic_change'    'step'          'cosine'    'cosine'
``rest_lr``       0.1                 0.1 (unused)    0.1 (unused)  1e-3
================  ==================  ==============  ==========  ==================

Named configs: :mod:`sfw_jax.training.presets`.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from typing import Any, Mapping

from sfw_jax import KINDS
from sfw_jax.training.datasets import TEXT_DATASETS
from sfw_jax.training.models import model_context
from sfw_jax.training.config._option import Option, bad, declared_options, option
from sfw_jax.training.config._data import DataConfig
from sfw_jax.training.config._devices import DeviceConfig
from sfw_jax.training.config._loop import LoopConfig
from sfw_jax.training.config._model import PRECISIONS, ModelConfig
from sfw_jax.training.config._optim import OptimConfig
from sfw_jax.training.config._schedule import CONSTRAINT_SCHEDULE_FIELDS, ScheduleConfig
from sfw_jax.training.optimizers import OPTIMIZER_DEFAULTS

__all__ = [
    "TrainConfig", "DataConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "LoopConfig",
    "DeviceConfig", "CONCERNS", "OPTIONS", "CONCERN_OF", "Option", "option", "field_names",
    "options_where", "resolve", "validate", "save_json", "load_json", "SFW_ONLY_FIELDS",
    "CONSTRAINT_SCHEDULE_FIELDS", "PRECISIONS",
]


@dataclasses.dataclass(frozen=True, init=False)
class TrainConfig:
    """All options of one training run: one frozen dataclass per concern (see the module
    docstring), every option also readable flat (``cfg.tau`` is ``cfg.optim.tau``).

    ``TrainConfig(**options)`` takes flat option names, and concerns by attribute (a flat name
    overrides the value of a concern given with it); an unknown name is a TypeError.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    devices: DeviceConfig = dataclasses.field(default_factory=DeviceConfig)

    def __init__(self, data: DataConfig | None = None, model: ModelConfig | None = None,
                 optim: OptimConfig | None = None, schedule: ScheduleConfig | None = None,
                 loop: LoopConfig | None = None, devices: DeviceConfig | None = None,
                 **options: Any) -> None:
        unknown = sorted(set(options) - set(CONCERN_OF))
        if unknown:
            raise TypeError(f"unknown TrainConfig option(s) {unknown}; allowed: "
                            f"{field_names()}")
        given = dict(data=data, model=model, optim=optim, schedule=schedule, loop=loop,
                     devices=devices)
        for concern, cls in CONCERNS.items():
            value = given[concern] if given[concern] is not None else cls()
            mine = {k: v for k, v in options.items() if CONCERN_OF[k] == concern}
            object.__setattr__(self, concern, dataclasses.replace(value, **mine) if mine
                               else value)

    def replace(self, **changes: Any) -> "TrainConfig":
        """Copy with ``changes`` (flat option names or concerns); an unknown name raises
        ValueError listing the options."""
        unknown = sorted(set(changes) - set(CONCERN_OF) - set(CONCERNS))
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; allowed: "
                             f"{field_names()}")
        concerns = {c: changes.pop(c, getattr(self, c)) for c in CONCERNS}
        return TrainConfig(**concerns, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON-able dict of all options, in JSON-normal form (tuples become lists),
        so that ``to_dict`` of a config and of its ``config.json`` round trip compare equal."""
        d = {name: getattr(self, name) for name in CONCERN_OF}
        d["model_kwargs"] = dict(self.model_kwargs)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (a flat dict; missing options take their defaults);
        unknown keys raise ValueError."""
        return cls().replace(**dict(d))


CONCERNS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}
"""The concerns of a config by attribute name (``{"data": DataConfig, ...}``), in order."""

OPTIONS: dict[str, Option] = {o.name: o for cls in CONCERNS.values()
                              for o in declared_options(cls)}
"""Every option by flat name, in declaration order (concern by concern)."""

CONCERN_OF: dict[str, str] = {o.name: c for c, cls in CONCERNS.items()
                              for o in declared_options(cls)}
"""The concern attribute holding each option (``CONCERN_OF["tau"] == "optim"``)."""

for _name, _concern in CONCERN_OF.items():
    setattr(TrainConfig, _name, property(operator.attrgetter(f"{_concern}.{_name}"),
                                         doc=OPTIONS[_name].help))
del _name, _concern


def field_names() -> list[str]:
    """The flat option names, in declaration order."""
    return list(OPTIONS)


def options_where(key: str) -> tuple[str, ...]:
    """The names of the options whose metadata ``key`` is true (e.g. ``'sfw_only'``)."""
    return tuple(name for name, o in OPTIONS.items() if o.metadata[key])


SFW_ONLY_FIELDS = options_where("sfw_only")
"""Options that only mean something with an optimizer of
:data:`sfw_jax.training.optimizers.SFW_OPTIMIZERS` (explicitly setting one for SGD or AdamW is a
conflict the command line reports)."""


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the ``None`` defaults: the optimizer's (lr, weight_decay, lr_schedule), the
    dataset's (augment); ``model_kwargs`` lists (from JSON) become tuples."""
    if cfg.optimizer not in OPTIMIZER_DEFAULTS:
        raise bad("optimizer", cfg.optimizer, f"one of {list(OPTIMIZER_DEFAULTS)}")
    defaults = {k: v for k, v in OPTIMIZER_DEFAULTS[cfg.optimizer].items()
                if getattr(cfg, k) is None}
    return cfg.replace(data=cfg.data.resolve(), model=cfg.model.resolve()).replace(**defaults)


def _check_language_model(cfg: TrainConfig) -> None:
    """A sequence model (one with a ``context``) trains on a text dataset and only there."""
    text = cfg.dataset.lower() in TEXT_DATASETS
    sequence = model_context(cfg.arch, cfg.model_kwargs) is not None
    if text and not sequence:
        raise bad("arch", cfg.arch, f"a sequence model with dataset={cfg.dataset!r}: one of "
                  f"{[a for a in OPTIONS['arch'].choices if model_context(a) is not None]}")
    if sequence and not text:
        raise bad("dataset", cfg.dataset, f"one of {list(TEXT_DATASETS)} with arch={cfg.arch!r}")
    if text and (cfg.augment or cfg.image_size is not None or cfg.sfw_init):
        raise ValueError(f"augment={cfg.augment!r}, image_size={cfg.image_size!r}, sfw_init="
                         f"{cfg.sfw_init!r}: image options, not for dataset={cfg.dataset!r} "
                         f"(use None / False)")


def _check_across(cfg: TrainConfig) -> None:
    """The rules that tie options of two concerns: a sequence model and a text dataset go
    together; the constraint schedule needs sets it can change and an optimizer that follows it
    (not 'adam_sfw'), and SFW-Init tunes the init for one set, not a schedule."""
    _check_language_model(cfg)
    k_kinds = [name for name, kind in KINDS.items() if kind.uses_k]
    for name in ("delay_lmo", "k_frac_start"):
        if getattr(cfg, name) is not None and cfg.constraint not in k_kinds:
            raise bad(name, getattr(cfg, name), f"None with constraint={cfg.constraint!r} (it "
                      f"needs one of {k_kinds})")
    if cfg.tau_start is not None and cfg.constraint == "unconstrained":
        raise bad("tau_start", cfg.tau_start, "None with constraint='unconstrained'")
    if cfg.optimizer == "adam_sfw" and cfg.schedule.has_constraint_schedule:
        raise ValueError("optimizer='adam_sfw' takes no constraint schedule (delay_lmo, "
                         "tau_start, k_frac_start): use optimizer='sfw' for one")
    active = [f for f in CONSTRAINT_SCHEDULE_FIELDS if getattr(cfg, f) is not None]
    if active and cfg.sfw_init is True:
        raise ValueError(f"sfw_init=True conflicts with {active[0]}={getattr(cfg, active[0])!r}: "
                         f"SFW-Init tunes the init for one constraint set, not a schedule")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every option (each concern's ``validate``, then the rules across concerns); return
    ``resolve(cfg)``.

    Raises ValueError naming the option, its value and what is allowed. Device-dependent checks
    (batch size divisible by the device count) and file checks (``resume``) happen in
    :func:`sfw_jax.training.loop.check_run_preconditions`.
    """
    for concern in CONCERNS:
        getattr(cfg, concern).validate()
    _check_across(cfg)
    return resolve(cfg)


def save_json(cfg: TrainConfig, path: str) -> None:
    """Write ``cfg.to_dict()`` as indented JSON to ``path``."""
    with open(path, "w") as f:
        json.dump(cfg.to_dict(), f, indent=2, sort_keys=True)


def load_json(path: str) -> TrainConfig:
    """Read a config written by :func:`save_json`."""
    with open(path) as f:
        return TrainConfig.from_dict(json.load(f))
