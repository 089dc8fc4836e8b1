"""The training loop: ``train(config)`` from a validated config to a finished run folder.

One run (:func:`train`) does, for a ``TrainConfig`` ``cfg``:

1. validate ``cfg``, build the device mesh, check preconditions (batch divisible by the device
   count, ``resume`` has a checkpoint, ``out_dir`` not already used by another run, ...);
2. load the dataset and put its uint8 arrays on the devices once (replicated);
3. init the model; for SFW compute E||W_init|| over ``init_norm_samples`` draws, build the
   constraints (with a constraint schedule, its phases over (steps per epoch) x ``epochs``
   steps) and make the initial params feasible (``make_feasible``); build the optimizer;
4. per epoch ``e``: set the schedule's lr in ``opt_state.hyperparams``; shuffle with
   ``epoch_permutation(n, seed, e)`` (a pure function of (seed, epoch), so resuming needs no RNG
   state); run ``n // batch_size`` jitted steps (each gathers its batch from the on-device
   arrays by index, optionally augments with ``fold_in(rng, step)``, and applies the optimizer);
   evaluate on the validation split; log a record to ``out_dir/metrics.jsonl`` and one line to
   stdout; save a checkpoint (train state + schedule state + history);
5. evaluate on the test split (``out_dir/final.json``).

The jitted steps are in :mod:`sfw_jax.training.steps`, the files of ``out_dir`` in
:mod:`sfw_jax.training.run_folder`.

Several processes (multi-host, :mod:`sfw_jax.training.distributed`): every process runs
``train`` with the same config and data (checked: :func:`check_processes_agree`); arrays are
global (each process puts its own shards of the same host values), the initial state is process
0's, metrics are global means, checkpoints are saved (synchronously) and restored by every
process together, and only process 0 writes the other files and prints.

Losses are the mean softmax cross-entropy of a batch; an epoch's ``train_loss`` is the mean over
its batches; 'dynamic_change' reads it, or the epoch's last batch loss with
``trend_loss='last_batch'`` (the reference's).
``train_acc`` is measured on the (augmented) training batches during the epoch.

Language models (a sequence model such as ``transformer_lm`` on the ``'text'`` dataset, whose
splits are byte windows, ``DatasetInfo.sequence_length = T``): an example is a window, the loss
the mean cross-entropy over its T next-byte positions, ``train_acc`` / ``val_acc`` / ``test_acc``
the next-byte accuracy over positions, and the records add ``val_bits_per_byte`` and
``test_bits_per_byte`` (mean cross-entropy in nats / ln 2).

A non-finite training loss raises :class:`NonFiniteLossError` (naming epoch and step) before the
epoch's checkpoint is written, so the last good checkpoint stays on disk. Host syncs happen every
``log_every`` steps (progress bar + finiteness check) so the devices are never idle per step.
One jitted call runs ``steps_per_call`` steps (``lax.scan`` over the epoch's batch indices; the
rest of an epoch it does not divide one step per call): the same arithmetic as single calls, one
dispatch; the syncs then come after the first call that reaches a multiple of ``log_every``.
The progress bar is drawn on a terminal only (a log gets the one line per epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sfw_jax import make_feasible
from sfw_jax._progress import progress_bar, write_line
from sfw_jax._tree import PyTree, flat_paths
from sfw_jax.fw.topk import backend_name
from sfw_jax.pruning import DEFAULT_THRESHOLDS
from sfw_jax.training import config as config_lib
from sfw_jax.training import distributed as dist
from sfw_jax.training import optimizers as opt_lib
from sfw_jax.training import run_folder
from sfw_jax.training import schedules
from sfw_jax.training.checkpoint import Checkpointer, has_checkpoint
from sfw_jax.training.config import TrainConfig
from sfw_jax.training.datasets import Dataset, DatasetInfo, Split, epoch_permutation, load_dataset
from sfw_jax.training.datasets import TokenSplit
from sfw_jax.training.models import get_model, model_context
from sfw_jax.training.steps import (STEPS_PER_CALL, Evaluator, TrainState, cross_entropy_loss,
                                    make_token_train_step, make_train_step, preprocess, variables)

__all__ = [
    "Callback", "NonFiniteLossError", "TrainResult", "setup_devices",
    "check_run_preconditions", "load_config_dataset", "training_subset", "dummy_input",
    "build_model", "init_train_state", "apply_sfw_init", "weight_counts", "PER_PROCESS_FIELDS",
    "check_processes_agree", "train",
]


Callback = Callable[[dict, TrainState], None]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the message names the epoch and step."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    state: final train state. history: one record per epoch (also in ``metrics.jsonl``).
    test: ``{'loss', 'accuracy'}`` on the test split. config: the resolved config.
    model: the flax module. constraints: SFW constraint pytree (None for SGD).
    evaluator: an :class:`Evaluator` on the run's mesh (e.g. to evaluate pruned params).
    dataset: the dataset used. wall_time: seconds for the whole call.
    """

    state: TrainState
    history: list[dict]
    test: dict[str, float]
    config: TrainConfig
    model: Any
    constraints: PyTree | None
    evaluator: "Evaluator"
    dataset: Dataset
    wall_time: float


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------

def setup_devices(cfg: TrainConfig) -> Mesh:
    """Initialise multi-host JAX when ``cfg.distributed`` (once), then the data-parallel mesh."""
    if cfg.distributed and not dist.is_initialized():
        dist.initialize_distributed(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    return dist.make_mesh(dist.select_devices(cfg.num_devices))


def _paths(cfg: TrainConfig) -> dict[str, str] | None:
    if cfg.out_dir is None:
        return None
    return {name: run_folder.path(cfg.out_dir, f) for name, f in (
        ("config", run_folder.CONFIG_FILE), ("metrics", run_folder.METRICS_FILE),
        ("final", run_folder.FINAL_FILE), ("checkpoints", run_folder.CHECKPOINT_DIR))}


def check_run_preconditions(cfg: TrainConfig, mesh: Mesh) -> None:
    """Errors a run would hit, raised before any work (ValueError naming the option).

    * ``batch_size`` divisible by the mesh's device count;
    * ``resume=True``: ``out_dir`` holds a checkpoint and a ``config.json`` that agrees with
      ``cfg`` except for the fields in ``run_folder.RESUME_MAY_DIFFER``;
    * ``resume=False``: ``out_dir`` holds no checkpoint of an earlier run.
    """
    dist.check_batch_divisible(cfg.batch_size, mesh)
    paths = _paths(cfg)
    if paths is None:
        return
    ckpt_there = has_checkpoint(paths["checkpoints"])
    if cfg.resume:
        if not ckpt_there:
            raise ValueError(f"resume=True but out_dir {cfg.out_dir!r} holds no checkpoint "
                             f"(looked in {paths['checkpoints']}); run without resume first")
        if not os.path.isfile(paths["config"]):
            raise ValueError(f"resume=True but {paths['config']} is missing")
        diff = run_folder.config_differences(
            config_lib.load_json(paths["config"]).to_dict(), cfg.to_dict())
        if diff:
            raise ValueError(f"resume=True with options that differ from the checkpointed run "
                             f"in {cfg.out_dir!r}: {diff}; only "
                             f"{list(run_folder.RESUME_MAY_DIFFER)} may change")
    elif ckpt_there:
        raise ValueError(f"out_dir {cfg.out_dir!r} already holds checkpoints of an earlier run; "
                         f"pass resume=True (--resume) to continue it or choose another out_dir")


def load_config_dataset(cfg: TrainConfig, data_dir: str | None = None) -> Dataset:
    """The dataset of ``cfg`` (``data_dir`` instead of ``cfg.data_dir`` when given), with the
    config's split settings; a sequence model's windows are its ``context`` long."""
    return load_dataset(cfg.dataset, data_dir=cfg.data_dir if data_dir is None else data_dir,
                        val_fraction=cfg.val_fraction, seed=cfg.seed, image_size=cfg.image_size,
                        context=model_context(cfg.arch, cfg.model_kwargs))


def training_subset(cfg: TrainConfig, split: Split | TokenSplit) -> Split | TokenSplit:
    """The examples a run trains on: all of ``split``, or with ``max_train_samples = N`` a
    seeded random subset of N (kept in the split's order; files sorted by class would make the
    first N a single class)."""
    n = cfg.max_train_samples
    if n is None or n >= len(split):
        return split
    idx = np.random.default_rng([cfg.seed, 104729]).permutation(len(split))[:n]
    return split.take(np.sort(idx))


def dummy_input(info: DatasetInfo) -> jax.Array:
    """A batch of one input of the dataset's shape (a window of token ids for a language
    model), to initialise a model."""
    if info.sequence_length is not None:
        return jnp.zeros((1, info.sequence_length), jnp.int32)
    return jnp.zeros((1, *info.image_shape), jnp.float32)


def build_model(cfg: TrainConfig, info: DatasetInfo) -> Any:
    """The config's model for ``info.num_classes`` classes in the config's compute precision."""
    dtype = jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32
    return get_model(cfg.arch, info.num_classes, dtype=dtype, **dict(cfg.model_kwargs))


def init_train_state(cfg: TrainConfig, model: Any, info: DatasetInfo,
                     total_steps: int | None = None
                     ) -> tuple[TrainState, optax.GradientTransformationExtraArgs, PyTree | None]:
    """(state, optimizer, constraints) for a resolved config (host-side; not yet on the mesh).

    Keys: ``PRNGKey(seed)`` split into (init, init-norms, train). For SFW the initial params are
    made feasible for the constraints built from E||W_init|| ('initialization' mode): those of
    the first phase of a constraint schedule, whose phases are placed over ``total_steps``
    training steps (required then; ``opt_lib.build_constraint_phases``). ``constraints`` are the
    target (last phase's) sets.
    """
    init_key, norm_key, train_key = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    dummy = dummy_input(info)
    variables = jax.jit(lambda k: model.init(k, dummy, train=False))(init_key)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    constraints = phases = None
    if cfg.optimizer in opt_lib.SFW_OPTIMIZERS:
        norms = opt_lib.compute_init_norms(
            lambda k: model.init(k, dummy, train=False)["params"], norm_key, cfg)
        phases = opt_lib.build_constraint_phases(cfg, params, norms, total_steps)
        constraints = phases[-1][1]
        params = jax.jit(lambda p: make_feasible(p, phases[0][1]))(params)
    tx = opt_lib.build_optimizer(cfg, constraints, phases=phases)
    state = TrainState(params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                       step=jnp.zeros((), jnp.int32), rng=train_key)
    return state, tx, constraints


def apply_sfw_init(cfg: TrainConfig, model: Any, state: TrainState, constraints: PyTree,
                   train_split: Split, info: DatasetInfo) -> tuple[TrainState, dict]:
    """SFW-Init (:func:`sfw_jax.training.sfw_init.sfw_init`) on the initial params of ``state``.

    The loss runs the model in training mode (batch statistics) and drops the updated running
    statistics, so BatchNorm state is left unchanged. Batches are ``cfg.batch_size`` normalized
    (not augmented) training images in a seeded order, cycling over the split if
    ``cfg.sfw_init_steps + 1`` batches exceed it. Returns the new state and
    ``{"seconds", "steps", "first_loss", "last_loss", "scales"}``.
    """
    from sfw_jax.training.sfw_init import sfw_init

    mean, std = np.asarray(info.mean), np.asarray(info.std)
    batch_stats = state.batch_stats

    def loss_fn(params, batch):
        x, y = batch
        out = model.apply(variables(params, batch_stats), x, train=True,
                          mutable=["batch_stats"] if batch_stats else False)
        logits = out[0] if batch_stats else out
        return cross_entropy_loss(logits, y)

    def batches():
        rng = np.random.default_rng([cfg.seed, 7919])
        n, bs = len(train_split), cfg.batch_size
        while True:
            perm = rng.permutation(n)
            for i in range(n // bs):
                idx = perm[i * bs:(i + 1) * bs]
                yield (preprocess(jnp.asarray(train_split.images[idx]), mean, std),
                       jnp.asarray(train_split.labels[idx]))

    res = sfw_init(loss_fn, state.params, constraints, batches(), learning_rate=float(cfg.lr),
                   steps=cfg.sfw_init_steps, adam_lr=cfg.sfw_init_lr,
                   progress=cfg.progress and _is_main_process())
    info_out = {"seconds": res.seconds, "steps": cfg.sfw_init_steps,
                "first_loss": res.losses[0], "last_loss": res.losses[-1],
                "scales": {path: float(v) for path, v in flat_paths(res.scales)}}
    return state.replace(params=res.params), info_out


_WEIGHT_THRESHOLDS = DEFAULT_THRESHOLDS
"""|w| thresholds of the per-epoch weight-magnitude counts: 10, 1, 0.1, ..., 1e-10 (those of
``sfw_jax.pruning.count_above_thresholds``; counted here on device so no epoch copies the
weights to the host)."""


@jax.jit
def _count_above(params: PyTree) -> jax.Array:
    """int32 [len(_WEIGHT_THRESHOLDS)]: entries of all leaves with |w| > t, per threshold t."""
    t = jnp.asarray(_WEIGHT_THRESHOLDS, jnp.float32)
    return sum(jnp.sum(jnp.abs(x.astype(jnp.float32)).reshape(-1, 1) > t, axis=0,
                       dtype=jnp.int32) for x in jax.tree.leaves(params))


def weight_counts(params: PyTree) -> dict[str, int]:
    """``{"10": n, "1": n, "0.1": n, ..., "1e-10": n}``: how many parameters have |w| above
    each threshold (a sparsity profile; SFW's K-sparse training drives many weights to ~0)."""
    counts = np.asarray(jax.device_get(_count_above(params)))
    return {f"{t:g}": int(c) for t, c in zip(_WEIGHT_THRESHOLDS, counts)}


def _is_main_process() -> bool:
    return jax.process_index() == 0


def _format_record(r: dict) -> str:
    val = (f" val_loss {r['val_loss']:.4f} val_acc {r['val_acc']:.4f}"
           if r.get("val_acc") is not None else "")
    if r.get("val_bits_per_byte") is not None:
        val += f" val_bpb {r['val_bits_per_byte']:.4f}"
    big = r["weight_counts"]["0.001"] / max(r["n_params"], 1)
    return (f"epoch {r['epoch']:>3d}/{r['epochs']} lr {r['lr']:.4g} train_loss "
            f"{r['train_loss']:.4f} train_acc {r['train_acc']:.4f}{val} "
            f"|w|>1e-3 {100 * big:.1f}% time {r['epoch_time']:.1f}s")


class _TrainSteps(NamedTuple):
    """The jitted steps of one run: ``one`` runs step ``i`` (``(state, *data, perm, i)``),
    ``many`` steps ``i .. i + per_call - 1`` in one call
    (:func:`sfw_jax.training.steps.make_train_step` with ``steps_per_call``; ``one`` itself when
    ``per_call`` is 1). ``jax.jit`` compiles each on its first call, so ``one`` costs nothing
    where ``per_call`` divides every epoch."""

    one: Callable
    many: Callable
    per_call: int

    @classmethod
    def build(cls, make: Callable[[int], Callable], per_call: int) -> "_TrainSteps":
        one = make(1)
        return cls(one, one if per_call == 1 else make(per_call), per_call)

    def calls(self, steps: int) -> list[int]:
        """Steps of each call of an epoch of ``steps`` steps: whole calls of ``per_call``,
        then the rest one step per call."""
        whole = steps // self.per_call
        return [self.per_call] * whole + [1] * (steps - whole * self.per_call)


def _train_epoch(state: TrainState, train_steps: _TrainSteps, data: tuple[jax.Array, ...],
                 perm: jax.Array, *, cfg: TrainConfig, epoch: int,
                 last_ckpt: Callable[[], tuple[int | None, str] | None]
                 ) -> tuple[TrainState, list[float], int]:
    """Run the epoch's ``perm.shape[0]`` steps, ``train_steps.per_call`` per jitted call;
    returns (state, per-step losses, #correct).

    The host fetches the step metrics after the first call that reaches a multiple of
    ``cfg.log_every`` steps and after the last (progress bar, finiteness check) and raises
    :class:`NonFiniteLossError` at the first non-finite loss.
    """
    steps = perm.shape[0]
    losses: list[float] = []
    correct = 0
    pending: list[dict] = []
    bar = progress_bar(steps, f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       enabled=cfg.progress and _is_main_process())
    done = 0
    try:
        for n in train_steps.calls(steps):
            step = train_steps.many if n > 1 else train_steps.one
            state, metrics = step(state, *data, perm, done)
            pending.append(metrics)
            done += n
            if done // cfg.log_every == (done - n) // cfg.log_every and done != steps:
                continue
            first = done - sum(np.size(m["loss"]) for m in pending)
            for j, (loss, hits) in enumerate(
                    (float(v), int(c)) for m in jax.device_get(pending)
                    for v, c in zip(np.ravel(m["loss"]), np.ravel(m["correct"]))):
                if not math.isfinite(loss):
                    last = last_ckpt()
                    where = (f"epoch {last[0]} in {last[1]}" if last and last[0] else "none")
                    raise NonFiniteLossError(
                        f"non-finite training loss ({loss}) at epoch {epoch + 1}/{cfg.epochs}, "
                        f"step {first + j + 1}/{steps} of the epoch (global step "
                        f"{epoch * steps + first + j + 1}); stopped without saving this epoch. "
                        f"Last good checkpoint: {where}. Try a smaller lr.")
                losses.append(loss)
                correct += hits
            pending = []
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    finally:
        bar.close()
    return state, losses, correct


def _train_data_and_step(cfg: TrainConfig, model: Any, tx: optax.GradientTransformationExtraArgs,
                         info: DatasetInfo, split: Split | TokenSplit, mesh: Mesh
                         ) -> tuple[tuple[jax.Array, ...], _TrainSteps]:
    """The training split on the devices (replicated) and the jitted steps that read it:
    ``(images, labels)`` and the image steps, or ``(tokens,)`` and the language-model steps,
    ``cfg.steps_per_call`` per call (None: :data:`~sfw_jax.training.steps.STEPS_PER_CALL` of
    the default backend)."""
    per_call = cfg.steps_per_call or STEPS_PER_CALL.get(backend_name(),
                                                         STEPS_PER_CALL["default"])
    if info.sequence_length is not None:
        return (dist.replicate(split.tokens, mesh),), _TrainSteps.build(
            lambda s: make_token_train_step(model, tx, mesh=mesh, steps_per_call=s), per_call)
    steps = _TrainSteps.build(lambda s: make_train_step(
        model, tx, mean=np.asarray(info.mean), std=np.asarray(info.std),
        augment=bool(cfg.augment), mesh=mesh, steps_per_call=s), per_call)
    return tuple(dist.replicate((split.images, split.labels), mesh)), steps


def _final_record(test: dict[str, float], epochs: int, wall: float) -> dict:
    """The content of ``final.json`` (a language model adds ``test_bits_per_byte``)."""
    bpb = {"test_bits_per_byte": test["bits_per_byte"]} if "bits_per_byte" in test else {}
    return {"test_loss": test["loss"], "test_acc": test["accuracy"], **bpb, "epochs": epochs,
            "wall_time": wall}


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------

PER_PROCESS_FIELDS = config_lib.options_where("per_process")
"""Config fields that may differ between the processes of one multi-process run (where a host
keeps its files and what it shows): those declared ``per_process``; every other field must
agree."""


def check_processes_agree(cfg: TrainConfig, dataset: Dataset) -> None:
    """On several processes: ValueError unless every process has the same config (outside
    :data:`PER_PROCESS_FIELDS`) and the same dataset splits (a collective; nothing on one
    process)."""
    items: dict[str, Any] = {f"option {k}": json.dumps(v, sort_keys=True).encode()
                             for k, v in cfg.to_dict().items() if k not in PER_PROCESS_FIELDS}
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        if isinstance(split, TokenSplit):
            items[f"the {name} tokens"] = split.tokens
        else:
            items[f"the {name} images"] = split.images
            items[f"the {name} labels"] = split.labels
    dist.check_same_on_all_processes(items)


def _epoch_record(cfg: TrainConfig, state: TrainState, info: DatasetInfo, *, epoch: int,
                  steps: int, lr: float, losses: list[float], correct: int, val: dict | None,
                  train_time: float, t0: float, t_start: float) -> dict:
    """The epoch's ``metrics.jsonl`` record (see :mod:`sfw_jax.training.run_folder`); a
    language model's accuracy counts its ``sequence_length`` positions per example and the
    record adds ``val_bits_per_byte``."""
    positions = info.sequence_length or 1  # predictions per example
    bpb = ({"val_bits_per_byte": val["bits_per_byte"] if val else None}
           if info.sequence_length is not None else {})
    return {
        "epoch": epoch + 1, "epochs": cfg.epochs, "step": (epoch + 1) * steps, "lr": lr,
        **{f"hp_{k}": v for k, v in opt_lib.get_learning_rates(state.opt_state).items()},
        "train_loss": float(np.mean(losses)),
        "train_acc": correct / (steps * cfg.batch_size * positions),
        "val_loss": val["loss"] if val else None, "val_acc": val["accuracy"] if val else None,
        **bpb,
        "train_time": train_time, "epoch_time": time.time() - t0,
        "elapsed": time.time() - t_start,
        "weight_counts": weight_counts(state.params),
        "n_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
    }


def _finish(cfg: TrainConfig, evaluator: Evaluator, state: TrainState, test_split: Split,
            paths: dict[str, str] | None, t_start: float) -> dict[str, float]:
    """Evaluate on the test split; process 0 writes ``final.json`` and prints the result."""
    test = evaluator(state.params, state.batch_stats, evaluator.put(test_split))
    wall = time.time() - t_start
    if _is_main_process():
        if paths is not None:
            run_folder.write_json(paths["final"], _final_record(test, cfg.epochs, wall))
        bpb = f" test_bpb {test['bits_per_byte']:.4f}" if "bits_per_byte" in test else ""
        print(f"test_loss {test['loss']:.4f} test_acc {test['accuracy']:.4f}{bpb} ({wall:.1f}s)")
    return test


def _sfw_init_and_report(cfg: TrainConfig, model: Any, state: TrainState, constraints: PyTree,
                         train_split: Split, info: DatasetInfo) -> TrainState:
    """:func:`apply_sfw_init`; process 0 prints its summary and writes ``sfw_init.json``."""
    state, summary = apply_sfw_init(cfg, model, state, constraints, train_split, info)
    if _is_main_process():
        print(f"sfw-init: {cfg.sfw_init_steps} steps in {summary['seconds']:.1f}s, "
              f"post-step loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}",
              file=sys.stderr)
        if cfg.out_dir is not None:
            run_folder.write_json(run_folder.path(cfg.out_dir, run_folder.SFW_INIT_FILE), summary)
    return state


def _checkpointer(cfg: TrainConfig, paths: dict[str, str] | None) -> Checkpointer | None:
    """The run's checkpointer (None without ``out_dir`` or with ``keep_checkpoints=0``);
    process 0 creates ``out_dir``.

    Several processes save synchronously: a save needs every process, so an epoch's checkpoint
    is committed before the next epoch can lose a process.
    """
    if paths is None:
        return None
    if _is_main_process():
        os.makedirs(cfg.out_dir, exist_ok=True)
    if cfg.keep_checkpoints == 0:
        return None
    return Checkpointer(paths["checkpoints"], cfg.keep_checkpoints,
                        async_save=not dist.is_multiprocess())


def _start(cfg: TrainConfig, ckpt: Checkpointer | None, state: TrainState
           ) -> tuple[TrainState, int, schedules.ScheduleState, list[dict]]:
    """(state, first epoch, schedule state, history): the fresh ones, or with ``cfg.resume``
    those of the newest checkpoint (restored onto ``state``'s shardings)."""
    if not cfg.resume:
        return state, 0, schedules.init_schedule(cfg.lr_schedule, cfg.lr, cfg.epochs), []
    state, meta = ckpt.restore(state)
    start = int(meta["epochs_done"])
    if _is_main_process():
        print(f"resuming from {_paths(cfg)['checkpoints']} after epoch {start}",
              file=sys.stderr)
    return (state, start, schedules.ScheduleState.from_dict(meta["schedule"]),
            list(meta["history"])[:start])


def train(config: TrainConfig, dataset: Dataset | None = None, *,
          callbacks: Sequence[Callback] = (), mesh: Mesh | None = None) -> TrainResult:
    """Train with ``config`` (see the module docstring); returns a :class:`TrainResult`.

    On several processes (:mod:`sfw_jax.training.distributed`) every process runs this with
    the same config and data; only process 0 writes files other than checkpoints and prints.

    Args:
      config: the run's options (validated here; ValueError before any work if invalid).
      dataset: use this dataset instead of ``load_dataset(config.dataset, ...)``.
      callbacks: called as ``cb(record, state)`` after each epoch's checkpoint is saved;
        an exception (e.g. KeyboardInterrupt) stops the run with that checkpoint kept.
      mesh: device mesh (default: :func:`setup_devices`).

    Raises:
      ValueError: invalid config or preconditions (:func:`check_run_preconditions`), or
        processes that disagree (:func:`check_processes_agree`).
      NonFiniteLossError: the training loss became NaN/inf (no checkpoint of that epoch).
    """
    t_start = time.time()
    cfg = config_lib.validate(config)
    if mesh is None:
        mesh = setup_devices(cfg)
    check_run_preconditions(cfg, mesh)

    if dataset is None:
        dataset = load_config_dataset(cfg)
    check_processes_agree(cfg, dataset)
    train_split = training_subset(cfg, dataset.train)
    n_train, bs = len(train_split), cfg.batch_size
    steps = n_train // bs
    if steps == 0:
        raise ValueError(f"batch_size must be <= the number of training examples ({n_train}), "
                         f"got {bs}")
    info = dataset.info

    model = build_model(cfg, info)
    state, tx, constraints = init_train_state(cfg, model, info, total_steps=steps * cfg.epochs)
    if cfg.optimizer == "sfw" and cfg.sfw_init and not cfg.resume:
        state = _sfw_init_and_report(cfg, model, state, constraints, train_split, info)
    state = dist.replicate(dist.broadcast_from_main(state), mesh)
    data, train_steps = _train_data_and_step(cfg, model, tx, info, train_split, mesh)
    evaluator = Evaluator(model, info, mesh, cfg.eval_batch_size)
    val_dev = evaluator.put(dataset.val) if len(dataset.val) else None
    perm_sharding = NamedSharding(mesh, P(None, dist.DATA_AXIS))

    paths = _paths(cfg)
    main = _is_main_process()
    ckpt = _checkpointer(cfg, paths)
    try:
        state, start_epoch, sched, history = _start(cfg, ckpt, state)
        if paths is not None and main:
            config_lib.save_json(cfg, paths["config"])
            run_folder.write_jsonl(paths["metrics"], history, "w")

        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            state = state.replace(
                opt_state=opt_lib.set_learning_rates(state.opt_state, cfg, sched.lr))
            order = epoch_permutation(n_train, cfg.seed, epoch)[: steps * bs]
            perm = dist.global_array(order.astype(np.int32).reshape(steps, bs), perm_sharding)
            state, losses, correct = _train_epoch(
                state, train_steps, data, perm, cfg=cfg, epoch=epoch,
                last_ckpt=lambda: (ckpt.latest_epoch(), paths["checkpoints"]) if ckpt else None)
            train_time = time.time() - t0
            val = evaluator(state.params, state.batch_stats, val_dev) if val_dev else None
            record = _epoch_record(cfg, state, info, epoch=epoch, steps=steps, lr=sched.lr,
                                   losses=losses, correct=correct, val=val,
                                   train_time=train_time, t0=t0, t_start=t_start)
            sched = schedules.next_epoch(cfg.lr_schedule, sched, base_lr=cfg.lr, epoch=epoch,
                                         total_epochs=cfg.epochs,
                                         epoch_loss=(losses[-1] if cfg.trend_loss == "last_batch"
                                                     else record["train_loss"]))
            history.append(record)
            if ckpt is not None:
                ckpt.save(epoch + 1, state, {"epochs_done": epoch + 1,
                                             "schedule": sched.to_dict(), "history": history,
                                             "config": cfg.to_dict()})
            if main:
                if paths is not None:
                    run_folder.write_jsonl(paths["metrics"], [record], "a")
                write_line(_format_record(record))
            for cb in callbacks:
                cb(record, state)

        test = _finish(cfg, evaluator, state, dataset.test, paths, t_start)
    except Exception as err:
        if dist.is_multiprocess() and dist.is_collective_failure(err):
            ckpt = None  # closing waits for the other processes, which may be gone
        raise
    finally:
        if ckpt is not None:
            ckpt.close()
    return TrainResult(state=state, history=history, test=test, config=cfg, model=model,
                       constraints=constraints, evaluator=evaluator, dataset=dataset,
                       wall_time=time.time() - t_start)
