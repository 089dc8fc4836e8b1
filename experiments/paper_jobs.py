"""The paper-scale CIFAR-10 jobs: one full-length (180-epoch) training run each, run one per
GPU slot by ``python -m benchmarks.device_job JOB`` and assembled by
``python -m experiments.paper_table``.

:data:`JOBS` (in queue order, the order a lent GPU runs them) maps a job name to a config preset
of :mod:`sfw_jax.training.presets` plus ``TrainConfig`` overrides. Every job trains on all
50,000 training images (``val_fraction`` 0, as the reference does; nothing is tuned in a job),
then is pruned one-shot at :data:`SPARSITY_PERCENTS` and to :data:`NM_PATTERN`; the jobs with
``retrain`` are also retrained under the mask at :data:`RETRAIN_PERCENTS` for at least
:data:`RETRAIN_MIN_EPOCHS` epochs each. The pruning scopes, the BatchNorm re-calibration
batches and the retraining lr are those of the study preset :data:`STUDY_PRESET`.

The file names of a job's output folder (``results/paper-cifar10/<job>/``) are defined here,
where both the job and the table read them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from experiments.prune_sweep import SPARSITY_PERCENTS
from sfw_jax.training import run_folder
from sfw_jax.training.config import TrainConfig
from sfw_jax.training.presets import from_preset

RESULTS_DIR = "results/paper-cifar10"
SUMMARY_FILE = run_folder.STUDY_SUMMARY_FILE
METRICS_FILE = run_folder.METRICS_FILE
REPORT_FILE = "report.md"
CURVE_PLOT = "training_curve.png"
TABLE_FILE = "table.md"
TABLE_PLOT = "accuracy_vs_sparsity.png"

STUDY_PRESET = "paper-resnet18-cifar10"
"""The study preset (:mod:`experiments.study_presets`) whose scopes, main scope, BatchNorm
re-calibration batches and retraining lr every job uses."""
RETRAIN_PERCENTS = (90, 95, 98)
RETRAIN_MIN_EPOCHS = 5
NM_PATTERN = "2:4"
STATUSES = ("running", "ok", "stopped", "error")
"""``status`` of a job's ``summary.json``: still running (or killed), finished, stopped before
training because the full length would not fit the budget, failed."""

__all__ = ["Job", "JOBS", "QUEUE", "PAIRS", "pair_members", "SPARSITY_PERCENTS", "RETRAIN_PERCENTS", "RETRAIN_MIN_EPOCHS",
           "NM_PATTERN", "STUDY_PRESET", "STATUSES", "job_config", "get_job"]


@dataclasses.dataclass(frozen=True)
class Job:
    """One paper-scale run: ``preset`` with ``overrides``; ``retrain``: also SGD-retrained
    under the one-shot mask at :data:`RETRAIN_PERCENTS`; ``label``: its name in tables."""

    name: str
    preset: str
    overrides: Mapping[str, Any]
    label: str
    retrain: bool = False


_SFW = "paper-resnet18-cifar10"
_SGD = "paper-resnet18-cifar10-sgd"

JOBS: dict[str, Job] = {j.name: j for j in (
    Job("r18-sfw", _SFW, {}, "ResNet-18 SFW K-sparse"),
    Job("r18-sgd", _SGD, {}, "ResNet-18 SGD", retrain=True),
    Job("vgg16-sfw", "paper-vgg16-cifar10", {}, "VGG-16 SFW K-sparse"),
    Job("vgg16-sgd", _SGD, {"arch": "vgg16"}, "VGG-16 SGD", retrain=True),
    Job("r18-sfw-seed1", _SFW, {"seed": 1}, "ResNet-18 SFW K-sparse, seed 1"),
    # SFW in the 2:4 polytope: the kernels with 2:4 groups of input channels constrained, the
    # other tensors (conv1 with 3 input channels, biases, BatchNorm) SGD at rest_lr
    Job("r18-nm24", _SFW, {"constraint": "nm_sparse", "nm": NM_PATTERN}, "ResNet-18 SFW N:M 2:4"),
)}
QUEUE = tuple(JOBS)
"""The job names in the order a lent GPU runs them."""

PAIRS: dict[str, tuple[str, ...]] = {"r18-pair": ("r18-sfw", "r18-sgd")}
"""Jobs run one after the other in one call (``python -m benchmarks.device_job r18-pair``), each
into ``<out>/<job>/`` with an equal share of the budget left when it starts, so that each stops
itself after its first epoch when its full length does not fit its share (its first epoch is
then all a too-slow step costs). Not in :data:`QUEUE`: worth a slot once the device suite has
measured each method's epoch short enough (``r18-pair``: about 1.4 s or less)."""


def get_job(name: str) -> Job:
    """The job ``name``; ValueError listing the names otherwise."""
    if name not in JOBS:
        raise ValueError(f"job must be one of {list(QUEUE)}, got {name!r}")
    return JOBS[name]


def pair_members(name: str) -> tuple[Job, ...]:
    """The jobs a command-line name runs: those of the pair ``name``, or the one job ``name``;
    ValueError listing the names otherwise."""
    if name in PAIRS:
        return tuple(JOBS[j] for j in PAIRS[name])
    if name not in JOBS:
        raise ValueError(f"job must be one of {list(QUEUE) + list(PAIRS)}, got {name!r}")
    return (JOBS[name],)


def job_config(job: Job, **overrides: Any) -> TrainConfig:
    """The job's ``TrainConfig``: its preset, its overrides, then ``overrides`` (a plan's model
    and data size, the data path, the run folder)."""
    return from_preset(job.preset, **{**dict(job.overrides), **overrides})
