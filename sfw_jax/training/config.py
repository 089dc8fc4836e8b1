"""``TrainConfig``: every option of a training run, and its validation.

A config is a frozen dataclass of plain JSON-able values (it is written to ``out_dir/config.json``).
Fields left ``None`` take an optimizer-dependent default in :func:`resolve`:

========================  =========================  ===============  ==========  ============
field                     optimizer='sfw'            'sgd'            'adamw'     'adam_sfw'
========================  =========================  ===============  ==========  ============
``lr``                    1.0 (a step-size factor)   0.1              1e-3        0.01 (factor)
``weight_decay``          0.0                        5e-4             0.1         0.0
``lr_schedule``           'dynamic_change'           'step'           'cosine'    'cosine'
``rest_lr``               0.1                        0.1 (unused)     0.1 (unused)  1e-3
========================  =========================  ===============  ==========  ============

``optimizer='adamw'`` and ``'adam_sfw'`` (language models; :mod:`sfw_jax.training.optimizers`):
AdamW (decay on the leaves of rank >= 2), and Adam-preconditioned SFW on the constrained leaves
with AdamW at ``rest_lr`` on the others (``sfw_scope='kernels'`` routes embeddings, norms and
biases there). ``'adam_sfw'`` reads the SFW fields as ``'sfw'`` does (no ``momentum``: Adam's
moments are its direction; no constraint schedule).

SFW semantics follow the reference (Lu et al., ICLR 2022): every tensor of the model is
constrained (``sfw_scope='all'``) to a ``constraint`` polytope with per-tensor
``K = min(max(k, floor(k_frac * n)), n)`` and, in ``mode='initialization'``, diameter
``D = 2 * tau * E||W_init||_2`` (the expectation over ``init_norm_samples`` fresh
initialisations). ``sfw_scope='kernels'`` constrains only conv/dense kernels and trains the other
leaves (biases, BatchNorm scale/bias) with SGD at ``rest_lr`` (momentum ``momentum``, decay
``weight_decay``). ``constraint='nm_sparse'`` with ``nm='N:M'`` constrains the kernels with N:M
groups along their input-feature axis to the N:M polytope (``K = N * n / M``) and trains every
other leaf with that SGD.

A constraint schedule (:mod:`sfw_jax.fw.constraint_schedule`; at most one kind per run) changes the
sets during training, over T = (steps per epoch) x ``epochs`` steps: ``delay_lmo = f`` trains
with K = n at the same L2 diameters (the L_inf ball for K-sparse) for the first
round(f T) steps, then with the target sets; ``tau_start`` and/or ``k_frac_start`` start from
those values and move linearly to ``tau`` / ``k_frac`` in ``schedule_phases`` piecewise constant
phases, the last starting at step round(``schedule_end`` T). Every phase is built by
``make_constraints`` with the same E||W_init||.

The option names of every choice field are defined where the option is implemented and imported
here (constraint kinds: the registry of :mod:`sfw_jax.fw.registry`; modes and init-norm rules:
:mod:`sfw_jax.fw.constraints`; rescales: :mod:`sfw_jax.fw.sfw`; schedules and trend losses:
:mod:`sfw_jax.training.schedules`; scopes: :mod:`sfw_jax.selectors`; architectures:
:mod:`sfw_jax.training.models`). Named configs: :mod:`sfw_jax.training.presets`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

from sfw_jax.fw.constraints import INIT_NORM_RULES, MODES
from sfw_jax.fw.nm import format_nm, parse_nm
from sfw_jax.fw.registry import KINDS as CONSTRAINTS, k_kinds
from sfw_jax.fw.sfw import RESCALES
from sfw_jax.selectors import LEAF_SCOPES as SFW_SCOPES
from sfw_jax.training.datasets.text import TEXT_DATASETS
from sfw_jax.training.models import MODELS, model_context
from sfw_jax.training.schedules import SCHEDULES as LR_SCHEDULES, TREND_LOSSES

OPTIMIZERS = ("sfw", "sgd", "adamw", "adam_sfw")
SFW_OPTIMIZERS = ("sfw", "adam_sfw")
"""The optimizers that train constrained leaves by Frank-Wolfe steps (the SFW fields apply)."""
CONSTRAINT_SCHEDULE_FIELDS = ("delay_lmo", "tau_start", "k_frac_start")
"""Fields that switch a constraint schedule on (:mod:`sfw_jax.fw.constraint_schedule`) when not
None."""
PRECISIONS = ("fp32", "bf16")
ARCHS = tuple(MODELS)

__all__ = [
    "TrainConfig", "field_names", "resolve", "validate", "has_constraint_schedule", "save_json",
    "load_json", "parse_nm", "format_nm", "OPTIMIZERS", "SFW_OPTIMIZERS", "DEFAULT_REST_LR", "CONSTRAINTS", "MODES", "RESCALES",
    "SFW_SCOPES", "INIT_NORM_RULES", "LR_SCHEDULES", "TREND_LOSSES", "PRECISIONS", "ARCHS",
    "CONSTRAINT_SCHEDULE_FIELDS", "SFW_ONLY_FIELDS", "DEFAULT_LR", "DEFAULT_WEIGHT_DECAY",
    "DEFAULT_SCHEDULE",
]

SFW_ONLY_FIELDS = ("constraint", "k", "k_frac", "nm", "tau", "mode", "rescale", "sfw_scope",
                   "init_norm_samples", "init_norm_rule", "rest_lr", "sfw_init",
                   "sfw_init_steps", "sfw_init_lr", "cpu_kernel", *CONSTRAINT_SCHEDULE_FIELDS,
                   "schedule_phases", "schedule_end")
"""Fields that only mean something with an optimizer of ``SFW_OPTIMIZERS`` (explicitly setting
one for SGD or AdamW is a conflict the CLI reports)."""

DEFAULT_LR = {"sfw": 1.0, "sgd": 0.1, "adamw": 1e-3, "adam_sfw": 0.01}
DEFAULT_WEIGHT_DECAY = {"sfw": 0.0, "sgd": 5e-4, "adamw": 0.1, "adam_sfw": 0.0}
DEFAULT_SCHEDULE = {"sfw": "dynamic_change", "sgd": "step", "adamw": "cosine",
                    "adam_sfw": "cosine"}
DEFAULT_REST_LR = {"sfw": 0.1, "sgd": 0.1, "adamw": 0.1, "adam_sfw": 1e-3}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """All options of one training run (see the module docstring for the ``None`` defaults).

    Model and data:
      arch: model name for :func:`sfw_jax.training.models.get_model`.
      model_kwargs: extra model attributes (e.g. ``{"width": 0.5, "use_bn": True}``).
      dataset: name for :func:`sfw_jax.training.datasets.load_dataset` ('digits' is embedded
        and offline).
      data_dir: dataset location (e.g. an image-folder copy of CIFAR-10), or None.
      val_fraction: fraction of the training set held out for validation.
      image_size: resize images to this side length, or None.
      max_train_samples: train on a seeded random subset of N training samples (tests, smoke runs).
      augment: random crop (pad 4) + horizontal flip inside the train step; None = on for
        CIFAR-like datasets (name starts with 'cifar'), off otherwise.
    Optimizer:
      optimizer: 'sfw', 'sgd', 'adamw' or 'adam_sfw'.
      constraint, k, k_frac, tau, mode, rescale: SFW constraint set and step rescaling
        (rescale: 'gradient', 'fast_gradient', 'diameter' or 'none'; :func:`sfw_jax.sfw`).
      delay_lmo: fraction f in (0, 1) of the training steps trained with K = n (same L2
        diameters) before the target K (a ``constraint`` with a K: 'k_sparse', 'k_support');
        None = off.
      tau_start, k_frac_start: first-phase tau / k_frac of a schedule that moves them linearly
        to ``tau`` / ``k_frac`` (``k_frac_start``: a ``constraint`` with a K); None = that value
        is not scheduled.
      schedule_phases: P >= 2 piecewise constant phases of that schedule.
      schedule_end: fraction of the training steps at which the last phase (``tau``,
        ``k_frac``) starts.
      nm: the pattern ``"N:M"`` (e.g. ``"2:4"``) of ``constraint='nm_sparse'`` (required there,
        None otherwise): every kernel whose input-feature axis (-2) has a size divisible by M is
        constrained to the N:M polytope (``sfw_jax.NMSparsePolytope``); the other leaves
        (biases, BatchNorm, a first conv with 3 input channels) are trained by SGD at
        ``rest_lr``.
      sfw_scope: 'all' tensors (the reference) or 'kernels' only (SGD on the rest).
      init_norm_samples: initialisations averaged for E||W_init|| ('initialization' mode).
      init_norm_rule: 'reference' (E||W_init|| looked up by tensor shape, the last module of a
        shape winning, as the reference code does) or 'per_leaf' (each tensor its own); see
        :func:`sfw_jax.expected_init_norms`.
      sfw_init, sfw_init_steps, sfw_init_lr: SFW-Init (:mod:`sfw_jax.training.sfw_init`): learn one scale per
        tensor of the initial params with ``sfw_init_steps`` Adam steps (lr ``sfw_init_lr``)
        before training (reference: 390 steps, lr 1e-3).
      cpu_kernel: on the CPU, run the front half of the SFW step of float32 K-sparse leaves as
        one native kernel (:mod:`sfw_jax.fw.native`: same momentum and selection, norms summed
        in another order; built on first use with the system C++ compiler, x86-64). None: the
        kernel wherever it builds on a CPU backend, else (with one warning) the XLA path;
        True: the kernel (an error where it cannot be built); False: the XLA path (the
        :func:`sfw_jax.sfw` argument of that name). A preset pins False where its runs must
        reproduce bitwise on any machine: the kernel sums the norms in another order.
      lr: base learning rate (SFW: step-size factor); None = optimizer default.
      rest_lr: learning rate of the unconstrained leaves (SGD for 'sfw', AdamW for 'adam_sfw'):
        the non-kernel leaves when ``sfw_scope='kernels'``, the leaves without N:M groups with
        ``constraint='nm_sparse'``; None = optimizer default.
      lr_schedule: 'constant' | 'step' | 'cosine' | 'dynamic_change'
        (:mod:`sfw_jax.training.schedules`).
      trend_loss: the loss of an epoch that 'dynamic_change' reads: 'epoch_mean' or 'last_batch'
        (the reference's).
      momentum: SFW momentum (m = mu m + (1 - mu) g) or SGD heavy-ball momentum (unused by
        'adamw' and 'adam_sfw': Adam's b1 = 0.9, b2 = 0.999).
      weight_decay: L2 decay added to the gradient of SGD-updated leaves, or AdamW's decoupled
        decay of the AdamW-updated leaves of rank >= 2; None = default.
    Loop:
      epochs, batch_size, eval_batch_size, seed.
      precision: 'fp32' or 'bf16' compute (params stay float32).
      out_dir: where ``config.json``, ``metrics.jsonl`` and ``checkpoints/`` go (None: no files).
      resume: continue from the latest checkpoint in ``out_dir``.
      keep_checkpoints: how many epoch checkpoints to keep (0 = do not checkpoint).
      log_every: steps between host syncs for the progress bar / non-finite check.
      progress: show a progress bar (on a terminal; a log gets one line per epoch).
      steps_per_call: optimizer steps per jitted call (``lax.scan`` over the batches; the same
        results as one step per call); None = per backend
        (:data:`sfw_jax.training.steps.STEPS_PER_CALL`).
    Devices:
      num_devices: data-parallel over the first N local devices (None = all).
      distributed: call ``jax.distributed.initialize`` (multi-host) before anything else.
      coordinator_address, num_processes, process_id: passed to it (None = auto-detect).
    """

    arch: str = "simple_cnn"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    image_size: int | None = None
    max_train_samples: int | None = None
    augment: bool | None = None

    optimizer: str = "sfw"
    constraint: str = "k_sparse"
    k: int = 10
    k_frac: float = 0.05
    nm: str | None = None
    tau: float = 15.0
    mode: str = "initialization"
    rescale: str = "gradient"
    delay_lmo: float | None = None
    tau_start: float | None = None
    k_frac_start: float | None = None
    schedule_phases: int = 4
    schedule_end: float = 0.5
    sfw_scope: str = "all"
    init_norm_samples: int = 100
    init_norm_rule: str = "reference"
    sfw_init: bool = False
    sfw_init_steps: int = 390
    sfw_init_lr: float = 1e-3
    cpu_kernel: bool | None = None
    lr: float | None = None
    rest_lr: float | None = None
    lr_schedule: str | None = None
    trend_loss: str = "epoch_mean"
    momentum: float = 0.9
    weight_decay: float | None = None

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 500
    seed: int = 0
    precision: str = "fp32"
    out_dir: str | None = None
    resume: bool = False
    keep_checkpoints: int = 3
    log_every: int = 20
    progress: bool = True
    steps_per_call: int | None = None

    num_devices: int | None = None
    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def replace(self, **changes: Any) -> "TrainConfig":
        """Copy with ``changes``; unknown field names raise ValueError listing the fields."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; allowed: {field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of all fields, in JSON-normal form (tuples become lists), so that
        ``to_dict`` of a config and of its ``config.json`` round trip compare equal."""
        d = dataclasses.asdict(self)
        d["model_kwargs"] = dict(self.model_kwargs)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        return cls().replace(**dict(d))


def field_names() -> list[str]:
    """Names of all ``TrainConfig`` fields, in declaration order."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the optimizer-dependent ``None`` defaults (lr, weight_decay, lr_schedule, rest_lr,
    augment);
    list values of ``model_kwargs`` (from JSON) become tuples (Flax attributes are hashable)."""
    opt = cfg.optimizer
    if opt not in OPTIMIZERS:
        _bad("optimizer", opt, f"one of {list(OPTIMIZERS)}")
    return cfg.replace(
        model_kwargs={k: tuple(v) if isinstance(v, list) else v
                      for k, v in cfg.model_kwargs.items()},
        lr=DEFAULT_LR[opt] if cfg.lr is None else cfg.lr,
        weight_decay=DEFAULT_WEIGHT_DECAY[opt] if cfg.weight_decay is None else cfg.weight_decay,
        lr_schedule=DEFAULT_SCHEDULE[opt] if cfg.lr_schedule is None else cfg.lr_schedule,
        rest_lr=DEFAULT_REST_LR[opt] if cfg.rest_lr is None else cfg.rest_lr,
        augment=(cfg.dataset.lower().startswith("cifar")) if cfg.augment is None else cfg.augment,
    )


def _bad(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_number(cfg: TrainConfig, name: str, lo: float, hi: float = math.inf, *,
                  integer: bool = False, lo_open: bool = False, optional: bool = False) -> None:
    """ValueError unless field ``name`` is a finite number (an int if ``integer``) in the
    range (``lo`` excluded if ``lo_open``), or None if ``optional``."""
    v = getattr(cfg, name)
    if optional and v is None:
        return
    kinds = int if integer else (int, float)
    ok = (isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v)
          and (v > lo if lo_open else v >= lo) and v <= hi)
    if not ok:
        if integer:
            what = f"an int >= {lo}"
        else:
            hi_s = "" if hi == math.inf else f" and <= {hi}"
            what = f"a finite number {f'> {lo}' if lo_open else f'>= {lo}'}{hi_s}"
        _bad(name, v, what + (" or None" if optional else ""))


def _check_int(cfg: TrainConfig, name: str, lo: int, optional: bool = False) -> None:
    _check_number(cfg, name, lo, integer=True, optional=optional)


def _check_float(cfg: TrainConfig, name: str, lo: float, hi: float = math.inf, *,
                 lo_open: bool = False, optional: bool = False) -> None:
    _check_number(cfg, name, lo, hi, lo_open=lo_open, optional=optional)


def _check_choice(cfg: TrainConfig, name: str, allowed: Any, optional: bool = False) -> None:
    v = getattr(cfg, name)
    if optional and v is None:
        return
    if v not in allowed:
        _bad(name, v, f"one of {list(allowed)}")


def _check_constraint_schedule(cfg: TrainConfig) -> None:
    """The constraint schedule fields (see the module docstring)."""
    v = cfg.delay_lmo
    if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                              and 0 < v < 1):
        _bad("delay_lmo", v, "a fraction in (0, 1) or None")
    _check_float(cfg, "tau_start", 0.0, lo_open=True, optional=True)
    _check_float(cfg, "k_frac_start", 0.0, 1.0, lo_open=True, optional=True)
    _check_int(cfg, "schedule_phases", 2)
    _check_float(cfg, "schedule_end", 0.0, 1.0, lo_open=True)
    for name in ("delay_lmo", "k_frac_start"):
        if getattr(cfg, name) is not None and cfg.constraint not in k_kinds():
            _bad(name, getattr(cfg, name), f"None with constraint={cfg.constraint!r} (it needs "
                 f"one of {list(k_kinds())})")
    if cfg.tau_start is not None and cfg.constraint == "unconstrained":
        _bad("tau_start", cfg.tau_start, "None with constraint='unconstrained'")
    if cfg.delay_lmo is not None and (cfg.tau_start, cfg.k_frac_start) != (None, None):
        raise ValueError(f"delay_lmo={cfg.delay_lmo!r} conflicts with tau_start="
                         f"{cfg.tau_start!r} / k_frac_start={cfg.k_frac_start!r}: use one "
                         f"constraint schedule (delayed LMO or tightening)")
    active = [f for f in CONSTRAINT_SCHEDULE_FIELDS if getattr(cfg, f) is not None]
    if active and cfg.sfw_init is True:
        raise ValueError(f"sfw_init=True conflicts with {active[0]}={getattr(cfg, active[0])!r}: "
                         f"SFW-Init tunes the init for one constraint set, not a schedule")


def _check_language_model(cfg: TrainConfig) -> None:
    """A sequence model (one with a ``context``) trains on a text dataset and only there."""
    text = cfg.dataset.lower() in TEXT_DATASETS
    sequence = model_context(cfg.arch, cfg.model_kwargs) is not None
    if text and not sequence:
        _bad("arch", cfg.arch, f"a sequence model with dataset={cfg.dataset!r}: one of "
             f"{[a for a in ARCHS if model_context(a) is not None]}")
    if sequence and not text:
        _bad("dataset", cfg.dataset, f"one of {list(TEXT_DATASETS)} with arch={cfg.arch!r}")
    if text and (cfg.augment or cfg.image_size is not None or cfg.sfw_init):
        raise ValueError(f"augment={cfg.augment!r}, image_size={cfg.image_size!r}, sfw_init="
                         f"{cfg.sfw_init!r}: image options, not for dataset={cfg.dataset!r} "
                         f"(use None / False)")


def has_constraint_schedule(cfg: TrainConfig) -> bool:
    """True when a field of ``CONSTRAINT_SCHEDULE_FIELDS`` is set (an SFW config's sets change
    during training)."""
    return any(getattr(cfg, f) is not None for f in CONSTRAINT_SCHEDULE_FIELDS)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every field's type and range; return ``resolve(cfg)``.

    Raises ValueError naming the field, its value and what is allowed. Device-dependent checks
    (batch size divisible by the device count) and file checks (``resume``) happen in
    :func:`sfw_jax.training.loop.check_run_preconditions`.
    """
    _check_choice(cfg, "arch", ARCHS)
    if not isinstance(cfg.model_kwargs, Mapping) or not all(isinstance(k, str)
                                                            for k in cfg.model_kwargs):
        _bad("model_kwargs", cfg.model_kwargs, "a dict with str keys")
    if "dtype" in cfg.model_kwargs or "num_classes" in cfg.model_kwargs:
        _bad("model_kwargs", dict(cfg.model_kwargs),
             "free of 'dtype' (use precision) and 'num_classes' (set by the dataset)")
    if not isinstance(cfg.dataset, str) or not cfg.dataset:
        _bad("dataset", cfg.dataset, "a non-empty dataset name")
    _check_language_model(cfg)
    if cfg.data_dir is not None and not isinstance(cfg.data_dir, str):
        _bad("data_dir", cfg.data_dir, "a path string or None")
    _check_float(cfg, "val_fraction", 0.0, 1.0)
    if cfg.val_fraction >= 1.0:
        _bad("val_fraction", cfg.val_fraction, "in [0, 1)")
    _check_int(cfg, "image_size", 1, optional=True)
    _check_int(cfg, "max_train_samples", 1, optional=True)
    if cfg.augment not in (None, True, False):
        _bad("augment", cfg.augment, "True, False or None")

    _check_choice(cfg, "optimizer", OPTIMIZERS)
    _check_choice(cfg, "constraint", CONSTRAINTS)
    _check_int(cfg, "k", 1)
    _check_float(cfg, "k_frac", 0.0, 1.0)
    if cfg.nm is not None:
        parse_nm(cfg.nm)
    if cfg.constraint == "nm_sparse" and cfg.nm is None:
        _bad("nm", None, "an N:M pattern such as '2:4' with constraint='nm_sparse'")
    if cfg.constraint != "nm_sparse" and cfg.nm is not None:
        _bad("nm", cfg.nm, f"None with constraint={cfg.constraint!r} (the pattern belongs to "
             f"constraint='nm_sparse')")
    _check_float(cfg, "tau", 0.0, lo_open=True)
    _check_choice(cfg, "mode", MODES)
    _check_choice(cfg, "rescale", RESCALES)
    _check_constraint_schedule(cfg)
    _check_choice(cfg, "sfw_scope", SFW_SCOPES)
    _check_int(cfg, "init_norm_samples", 1)
    _check_choice(cfg, "init_norm_rule", INIT_NORM_RULES)
    if cfg.sfw_init not in (True, False):
        _bad("sfw_init", cfg.sfw_init, "True or False")
    if cfg.sfw_init and cfg.optimizer != "sfw":
        _bad("sfw_init", cfg.sfw_init, f"False with optimizer={cfg.optimizer!r} (SFW-Init tunes "
             f"the init for SFW)")
    if cfg.optimizer == "adam_sfw" and has_constraint_schedule(cfg):
        raise ValueError("optimizer='adam_sfw' takes no constraint schedule (delay_lmo, "
                         "tau_start, k_frac_start): use optimizer='sfw' for one")
    _check_int(cfg, "sfw_init_steps", 1)
    if cfg.cpu_kernel is not None and not isinstance(cfg.cpu_kernel, bool):
        _bad("cpu_kernel", cfg.cpu_kernel, "None, True or False")
    _check_float(cfg, "sfw_init_lr", 0.0, lo_open=True)
    _check_float(cfg, "lr", 0.0, lo_open=True, optional=True)
    _check_float(cfg, "rest_lr", 0.0, optional=True)
    _check_choice(cfg, "lr_schedule", LR_SCHEDULES, optional=True)
    _check_choice(cfg, "trend_loss", TREND_LOSSES)
    _check_float(cfg, "momentum", 0.0, 1.0)
    if cfg.momentum >= 1.0:
        _bad("momentum", cfg.momentum, "in [0, 1)")
    _check_float(cfg, "weight_decay", 0.0, optional=True)
    # with 'nm_sparse' the leaves without N:M groups are SGD-trained: decay applies to them
    if (cfg.optimizer in SFW_OPTIMIZERS and cfg.sfw_scope == "all" and cfg.weight_decay
            and cfg.constraint not in ("unconstrained", "nm_sparse")):
        raise ValueError(
            f"weight_decay={cfg.weight_decay!r} conflicts with optimizer={cfg.optimizer!r} and "
            f"sfw_scope='all': SFW has no weight decay (the constraint regularises); use "
            f"weight_decay=0, or sfw_scope='kernels' to decay the leaves trained otherwise")

    _check_int(cfg, "epochs", 1)
    _check_int(cfg, "batch_size", 1)
    _check_int(cfg, "eval_batch_size", 1)
    _check_int(cfg, "seed", 0)
    _check_choice(cfg, "precision", PRECISIONS)
    if cfg.out_dir is not None and not isinstance(cfg.out_dir, str):
        _bad("out_dir", cfg.out_dir, "a path string or None")
    if cfg.resume not in (True, False):
        _bad("resume", cfg.resume, "True or False")
    if cfg.resume and cfg.out_dir is None:
        _bad("resume", cfg.resume, "False when out_dir is None (nothing to resume from)")
    _check_int(cfg, "keep_checkpoints", 0)
    if cfg.resume and cfg.keep_checkpoints == 0:
        _bad("keep_checkpoints", 0, ">= 1 when resume=True")
    _check_int(cfg, "log_every", 1)
    _check_int(cfg, "steps_per_call", 1, optional=True)
    _check_int(cfg, "num_devices", 1, optional=True)
    _check_int(cfg, "num_processes", 1, optional=True)
    _check_int(cfg, "process_id", 0, optional=True)
    if not cfg.distributed and any(v is not None for v in (
            cfg.coordinator_address, cfg.num_processes, cfg.process_id)):
        raise ValueError(
            "coordinator_address/num_processes/process_id are only used with distributed=True; "
            f"got distributed=False with coordinator_address={cfg.coordinator_address!r}, "
            f"num_processes={cfg.num_processes!r}, process_id={cfg.process_id!r}")
    return resolve(cfg)


def save_json(cfg: TrainConfig, path: str) -> None:
    """Write ``cfg.to_dict()`` as indented JSON to ``path``."""
    with open(path, "w") as f:
        json.dump(cfg.to_dict(), f, indent=2, sort_keys=True)


def load_json(path: str) -> TrainConfig:
    """Read a config written by :func:`save_json`."""
    with open(path) as f:
        return TrainConfig.from_dict(json.load(f))
