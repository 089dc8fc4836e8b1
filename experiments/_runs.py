"""Finished training runs: load them back, evaluate them, and small shared helpers.

A run directory is what ``sfw_jax.train.train`` writes for a config with ``out_dir`` set:
``config.json``, ``metrics.jsonl``, ``final.json`` (written last, so its presence marks a
finished run) and ``checkpoints/<epochs_done>/`` (Orbax; the newest one holds the final train
state). :func:`load_trained` rebuilds the model, restores the final ``params`` and
``batch_stats`` from that checkpoint (no optimizer state is needed, so SFW's constraints are
not rebuilt) and reloads the run's dataset with the run's own split settings.

Also here: pruning scopes (``'kernels'`` / ``'all'``), exact sparsity accounting, an atomic JSON
writer (a file is either the old or the new version after an interruption), and BatchNorm
re-calibration (an extra beyond the paper; see :func:`recalibrated_batch_stats`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sfw_jax import augment as augment_lib
from sfw_jax import config as config_lib
from sfw_jax import train as train_lib
from sfw_jax.checkpoint import Checkpointer, has_checkpoint
from sfw_jax.config import TrainConfig
from sfw_jax.data import Dataset, Split, load_dataset

PyTree = Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCOPES = ("kernels", "all")
"""Pruning scopes: ``'kernels'`` = conv/dense kernels (leaves with ndim >= 2, the pruning
module's default); ``'all'`` = every parameter tensor (the reference's scope: biases and
BatchNorm scales/offsets compete in the same global ranking)."""


def scope_include(scope: str) -> Callable[[tuple, Any], bool] | None:
    """The ``include`` selector of ``sfw_jax.pruning`` for a scope name."""
    if scope == "kernels":
        return None
    if scope == "all":
        return lambda path, leaf: True
    raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")


def scope_flags(params: PyTree, scope: str) -> list[bool]:
    """Per leaf (``jax.tree.leaves`` order): whether the scope may prune it."""
    if scope == "all":
        return [True for _ in jax.tree.leaves(params)]
    scope_include(scope)  # validates the name
    return [jnp.ndim(x) >= 2 for x in jax.tree.leaves(params)]


def sparsity_counts(params: PyTree, mask: PyTree, scope: str) -> dict[str, int | float]:
    """Exact counts over the scope's leaves of a masked ``params``.

    Returns ``size`` (entries in scope), ``pruned`` (mask False), ``sparsity`` = pruned/size,
    ``zeros`` (entries exactly 0 in ``params``), ``pruned_zero`` (pruned entries that are
    exactly 0: equals ``pruned`` when the mask is respected).
    """
    flags = scope_flags(params, scope)
    size = pruned = zeros = pruned_zero = 0
    for p, m, f in zip(jax.tree.leaves(params), jax.tree.leaves(mask), flags):
        if not f:
            continue
        p, m = np.asarray(p), np.asarray(m, bool)
        size += p.size
        pruned += int(np.sum(~m))
        zeros += int(np.sum(p == 0))
        pruned_zero += int(np.sum((p == 0) & ~m))
    return {"size": size, "pruned": pruned, "sparsity": pruned / size if size else 0.0,
            "zeros": zeros, "pruned_zero": pruned_zero}


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temp file in the same folder + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically (temp file + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_json(path: str) -> Any:
    """Parsed JSON of ``path``."""
    with open(path) as f:
        return json.load(f)


def is_finished(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a finished training run (its ``final.json`` exists)."""
    return os.path.isfile(os.path.join(out_dir, train_lib.FINAL_FILE))


def resolve_data_dir(data_dir: str | None) -> str | None:
    """``data_dir`` as given if it exists (or is None); else, for a relative path, the same path
    relative to the repository root if that exists; else unchanged (the loader names it)."""
    if data_dir is None or os.path.exists(data_dir) or os.path.isabs(data_dir):
        return data_dir
    alt = os.path.normpath(os.path.join(REPO_ROOT, data_dir))
    return alt if os.path.exists(alt) else data_dir


def load_run_dataset(cfg: TrainConfig) -> Dataset:
    """The dataset of a run, loaded with the run's split settings (same validation carve-out)."""
    return load_dataset(cfg.dataset, data_dir=resolve_data_dir(cfg.data_dir),
                        val_fraction=cfg.val_fraction, seed=cfg.seed, image_size=cfg.image_size)


def same_data(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configs load the same dataset splits (so one load can serve both)."""
    keys = ("dataset", "data_dir", "val_fraction", "seed", "image_size")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def train_split_of(cfg: TrainConfig, dataset: Dataset) -> Split:
    """The training examples the run trained on (``max_train_samples`` honoured)."""
    from sfw_jax.train import training_subset
    return training_subset(cfg, dataset.train)


# ---------------------------------------------------------------------------------------------
# Loading a finished run
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class LoadedRun:
    """A finished run, ready for evaluation, pruning and retraining.

    out_dir: the run's directory. config: its resolved ``TrainConfig``. model: the Flax module.
    params, batch_stats: final variables (``batch_stats`` is ``{}`` without BatchNorm), read from
    the checkpoint on first use, so that a study whose sweep, retraining and weight statistics
    are all cached rebuilds its reports from the committed files alone.
    dataset: the run's dataset. mesh: device mesh. evaluator: jitted batched evaluator on it.
    final: the run's ``final.json`` (``test_acc``, ``test_loss``, ``wall_time``, ...).
    history: the per-epoch records of ``metrics.jsonl``.
    """

    out_dir: str
    config: TrainConfig
    model: Any
    dataset: Dataset
    mesh: Any
    evaluator: train_lib.Evaluator
    final: dict
    history: list[dict]

    @functools.cached_property
    def variables(self) -> tuple[PyTree, PyTree]:
        """``(params, batch_stats)`` restored from the run's checkpoint."""
        return restore_variables(self.out_dir)

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
            k, jnp.zeros((1, *self.dataset.info.image_shape), jnp.float32), train=False),
            jax.random.key(0))
        return bool(jax.tree.leaves(shapes.get("batch_stats", {})))

    @property
    def train_split(self) -> Split:
        """The training examples of the run."""
        return train_split_of(self.config, self.dataset)


def read_history(out_dir: str) -> list[dict]:
    """The per-epoch records of ``out_dir/metrics.jsonl`` ([] if the file is missing)."""
    path = os.path.join(out_dir, train_lib.METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def restore_variables(out_dir: str) -> tuple[PyTree, PyTree]:
    """(params, batch_stats) of the newest checkpoint in ``out_dir/checkpoints``.

    Restored without a target (plain nested dicts of arrays), so the optimizer state's structure
    (which depends on the constraints) need not be rebuilt.
    """
    ckpt_dir = os.path.join(out_dir, train_lib.CHECKPOINT_DIR)
    if not has_checkpoint(ckpt_dir):
        raise FileNotFoundError(
            f"out_dir {out_dir!r} holds no checkpoint (looked in {ckpt_dir}); the run must be "
            f"trained with keep_checkpoints >= 1")
    with Checkpointer(ckpt_dir, max_to_keep=1, async_save=False) as ckpt:
        state, _ = ckpt.restore(None)
    to_jnp = lambda t: jax.tree.map(jnp.asarray, t)  # noqa: E731
    return to_jnp(state["params"]), to_jnp(state.get("batch_stats") or {})


def load_trained(out_dir: str, dataset: Dataset | None = None, *,
                 eval_batch_size: int | None = None) -> LoadedRun:
    """Load the finished run in ``out_dir`` (see the module docstring).

    Args:
      out_dir: a directory written by ``sfw_jax.train.train``.
      dataset: reuse this dataset instead of loading the run's (must be the same splits).
      eval_batch_size: evaluation batch size (default: the run's ``eval_batch_size``).

    Raises:
      FileNotFoundError: ``out_dir``, its ``config.json`` or ``final.json`` missing (a missing
        checkpoint raises when ``params`` are first read).
    """
    if not isinstance(out_dir, str) or not os.path.isdir(out_dir):
        raise FileNotFoundError(f"out_dir must be an existing run directory, got {out_dir!r}")
    cfg_path = os.path.join(out_dir, train_lib.CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"out_dir {out_dir!r} has no {train_lib.CONFIG_FILE}: not a "
                                f"training run directory")
    if not is_finished(out_dir):
        raise FileNotFoundError(
            f"out_dir {out_dir!r} has no {train_lib.FINAL_FILE}: the run did not finish; "
            f"resume it with `python -m experiments.train --resume --out-dir {out_dir} ...`")
    cfg = config_lib.validate(config_lib.load_json(cfg_path))
    if dataset is None:
        dataset = load_run_dataset(cfg)
    if not has_checkpoint(os.path.join(out_dir, train_lib.CHECKPOINT_DIR)):
        print(f"note: {out_dir} has no checkpoint; only its cached results can be used",
              file=sys.stderr)
    model = train_lib.build_model(cfg, dataset.info)
    mesh = train_lib.setup_devices(cfg.replace(distributed=False))
    evaluator = train_lib.Evaluator(model, dataset.info, mesh,
                                    eval_batch_size or cfg.eval_batch_size)
    return LoadedRun(out_dir=out_dir, config=cfg, model=model, dataset=dataset, mesh=mesh,
                     evaluator=evaluator,
                     final=read_json(os.path.join(out_dir, train_lib.FINAL_FILE)),
                     history=read_history(out_dir))


# ---------------------------------------------------------------------------------------------
# BatchNorm re-calibration (an extra beyond the paper)
# ---------------------------------------------------------------------------------------------

def recal_images(split: Split, num_batches: int, batch_size: int, seed: int) -> np.ndarray:
    """``num_batches * batch_size`` training images (fewer if the split is smaller) drawn
    without replacement in a seeded order, as uint8 ``[num_batches, batch_size, H, W, C]``
    (the last partial batch is dropped)."""
    n = len(split)
    order = np.random.default_rng(seed).permutation(n)
    bs = min(batch_size, n)
    nb = max(1, min(num_batches, n // bs))
    return split.images[order[: nb * bs]].reshape(nb, bs, *split.images.shape[1:])


def recalibrated_batch_stats(run: "LoadedRun", params: PyTree, batches: np.ndarray, *,
                            jit: bool = True) -> PyTree:
    """BatchNorm running statistics re-estimated for ``params`` (an extra beyond the paper).

    ``sfw_jax.batchnorm.recalibrate_batch_norm`` (cumulative average of per-batch statistics,
    training-mode forward passes, no gradient step) over ``batches`` (uint8
    ``[B, bs, H, W, C]`` from :func:`recal_images`, normalised like training inputs, no
    augmentation). Returns ``run.batch_stats`` unchanged when the model has no BatchNorm.
    ``jit``: compile the forward pass (that library function compiles a fresh jitted function
    per call, i.e. once per sparsity level; ``False`` runs the passes op by op instead).
    """
    from sfw_jax.batchnorm import recalibrate_batch_norm

    if not jax.tree.leaves(run.batch_stats):
        return run.batch_stats
    if np.ndim(batches) != 5 or len(batches) == 0:
        raise ValueError(f"batches must be a non-empty uint8 array [B, bs, H, W, C], got "
                         f"shape {np.shape(batches)}")
    mean, std = np.asarray(run.dataset.info.mean), np.asarray(run.dataset.info.std)
    inputs = (augment_lib.normalize(jnp.asarray(b), mean, std) for b in batches)
    out = recalibrate_batch_norm(functools.partial(run.model.apply, train=True),
                                 {"params": params, "batch_stats": run.batch_stats}, inputs,
                                 jit=jit)
    return out["batch_stats"]
