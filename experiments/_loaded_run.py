"""A finished training run loaded back for evaluation, pruning and retraining.

:func:`load_trained` reads a run folder (:mod:`sfw_jax.training.run_folder`): it rebuilds the
model, gives the final ``params`` and ``batch_stats`` of the newest checkpoint, read on first use
(no optimizer state is needed, so SFW's constraints are not rebuilt) and reloads the run's dataset with the
run's own split settings (the same validation carve-out).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any

import jax

from sfw_jax.training import config as config_lib
from sfw_jax.training import loop, run_folder
from sfw_jax.training.config import TrainConfig
from sfw_jax.training.datasets import Dataset, Split
from sfw_jax.training.steps import Evaluator

PyTree = Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_data_dir(data_dir: str | None) -> str | None:
    """``data_dir`` as given if it exists (or is None); else, for a relative path, the same path
    relative to the repository root if that exists; else unchanged (the loader names it)."""
    if data_dir is None or os.path.exists(data_dir) or os.path.isabs(data_dir):
        return data_dir
    alt = os.path.normpath(os.path.join(REPO_ROOT, data_dir))
    return alt if os.path.exists(alt) else data_dir


def load_run_dataset(cfg: TrainConfig) -> Dataset:
    """The dataset of a run, loaded with the run's split settings (same validation carve-out)."""
    return loop.load_config_dataset(cfg, resolve_data_dir(cfg.data_dir))


def same_data(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configs load the same dataset splits (so one load can serve both)."""
    keys = ("dataset", "data_dir", "val_fraction", "seed", "image_size")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


@dataclasses.dataclass
class LoadedRun:
    """A finished run, ready for evaluation, pruning and retraining.

    out_dir: the run's directory. config: its resolved ``TrainConfig``. model: the Flax module.
    params, batch_stats: final variables (``batch_stats`` is ``{}`` without BatchNorm), read from
    the checkpoint on first use, so that a study whose sweep, retraining and weight statistics
    are all cached rebuilds its reports from the run folders' files without checkpoints.
    dataset: the run's dataset. mesh: device mesh. evaluator: jitted batched evaluator on it.
    final: the run's ``final.json`` (``test_acc``, ``test_loss``, ``wall_time``, ...).
    history: the per-epoch records of ``metrics.jsonl``.
    """

    out_dir: str
    config: TrainConfig
    model: Any
    dataset: Dataset
    mesh: Any
    evaluator: Evaluator
    final: dict
    history: list[dict]

    @functools.cached_property
    def variables(self) -> tuple[PyTree, PyTree]:
        """``(params, batch_stats)`` restored from the run's checkpoint
        (:func:`sfw_jax.training.run_folder.restore_variables`)."""
        return run_folder.restore_variables(self.out_dir)

    @property
    def params(self) -> PyTree:
        return self.variables[0]

    @property
    def batch_stats(self) -> PyTree:
        return self.variables[1]

    @functools.cached_property
    def has_batch_norm(self) -> bool:
        """Whether the model keeps BatchNorm statistics (from its shapes; no checkpoint read)."""
        shapes = jax.eval_shape(lambda k: self.model.init(
            k, loop.dummy_input(self.dataset.info), train=False),
            jax.random.key(0))
        return bool(jax.tree.leaves(shapes.get("batch_stats", {})))

    @property
    def train_split(self) -> Split:
        """The training examples of the run (``max_train_samples`` honoured)."""
        return loop.training_subset(self.config, self.dataset.train)

    @property
    def train_time(self) -> float:
        """Seconds the run spent in its training epochs (sum of ``epoch_time`` of its history)."""
        return float(sum(r.get("epoch_time", 0.0) for r in self.history))


def load_trained(out_dir: str, dataset: Dataset | None = None, *,
                 eval_batch_size: int | None = None, need_weights: bool = True) -> LoadedRun:
    """Load the finished run in ``out_dir`` (see the module docstring).

    Args:
      out_dir: a run folder written by :func:`sfw_jax.training.loop.train`.
      dataset: reuse this dataset instead of loading the run's (must be the same splits).
      eval_batch_size: evaluation batch size (default: the run's ``eval_batch_size``).
      need_weights: a missing checkpoint is an error here (the caller will read ``params``);
        False for a caller that may get by on results cached in the folder (a note is printed,
        and reading ``params`` raises).

    Raises:
      NotARunError (a FileNotFoundError): ``out_dir``, its ``config.json`` or ``final.json``
        missing, or its checkpoint with ``need_weights``.
    """
    run_folder.check_finished(out_dir)
    cfg = config_lib.validate(config_lib.load_json(run_folder.path(out_dir,
                                                                   run_folder.CONFIG_FILE)))
    if need_weights:
        run_folder.check_weights(out_dir)
    elif not run_folder.has_weights(out_dir):
        print(f"note: {out_dir} has no checkpoint; only its cached results can be used",
              file=sys.stderr)
    if dataset is None:
        dataset = load_run_dataset(cfg)
    model = loop.build_model(cfg, dataset.info)
    mesh = loop.setup_devices(cfg.replace(distributed=False))
    evaluator = Evaluator(model, dataset.info, mesh, eval_batch_size or cfg.eval_batch_size)
    return LoadedRun(out_dir=out_dir, config=cfg, model=model, dataset=dataset, mesh=mesh,
                     evaluator=evaluator,
                     final=run_folder.read_json(run_folder.path(out_dir, run_folder.FINAL_FILE)),
                     history=run_folder.read_history(out_dir))


def loaded_from_result(result: loop.TrainResult, out_dir: str) -> LoadedRun:
    """A :class:`LoadedRun` of a run just trained in this process (``result`` of
    :func:`sfw_jax.training.loop.train` with ``out_dir``), its variables taken from the final
    train state: a run trained without checkpoints can be pruned and retrained as a loaded
    one. ``final`` is the run's ``final.json``."""
    run = LoadedRun(out_dir=out_dir, config=result.config, model=result.model,
                    dataset=result.dataset, mesh=result.evaluator.mesh,
                    evaluator=result.evaluator,
                    final=run_folder.read_json(run_folder.path(out_dir, run_folder.FINAL_FILE)),
                    history=list(result.history))
    run.variables = (result.state.params, result.state.batch_stats)   # the cached property
    return run
