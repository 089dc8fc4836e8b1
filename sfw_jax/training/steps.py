"""The jitted steps of training and evaluation, and the train state they update.

* :class:`TrainState`: everything that changes during training (a pytree, checkpointed whole);
* :func:`make_train_step`: one optimizer step on a batch gathered on the devices from the whole
  training split by index (optionally augmented), with the mean softmax cross-entropy loss;
  :func:`make_token_train_step`: the same for a language model on byte windows (the mean
  cross-entropy over every next-byte position of the batch); with ``steps_per_call = S > 1``
  either runs S consecutive steps per call (``lax.scan`` over the batch indices; the same
  arithmetic as S calls, one dispatch; :data:`STEPS_PER_CALL` per backend);
* :func:`make_eval_step` and :class:`Evaluator`: loss and accuracy of a split in fixed-size
  padded batches (one compilation per split size); for a language model also bits per byte
  (:func:`bits_per_byte`).

Data parallel over the ``'data'`` axis of a 1-D mesh (:mod:`sfw_jax.training.distributed`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sfw_jax._tree import PyTree
from sfw_jax.training import augment as augment_lib
from sfw_jax.training import distributed as dist
from sfw_jax.training.datasets import DatasetInfo, Split
from sfw_jax.training.datasets import TokenSplit, inputs_targets

__all__ = [
    "TrainState", "cross_entropy_loss", "bits_per_byte", "variables", "preprocess",
    "make_train_step", "make_token_train_step", "make_eval_step", "make_token_eval_step",
    "DeviceSplit", "Evaluator", "STEPS_PER_CALL",
]

#: ``TrainConfig.steps_per_call=None`` per backend (``'default'``: every backend not listed):
#: optimizer steps per jitted call. CPU: 1, a step there costs far more than its dispatch and
#: XLA:CPU runs convolutions inside a loop body far slower (SimpleCNN, batch 32: 90 ms per step
#: at S = 1, 2,429 ms at S = 8; ``benchmarks/bench_train_step.py --steps-per-call 1 8``; the
#: same with plain SGD, not with an MLP: docs/performance.md); other backends:
#: 1 until the device suite's ``train_step`` section has measured S > 1 there.
STEPS_PER_CALL: dict[str, int] = {"cpu": 1, "default": 1}


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training (a pytree; saved whole in checkpoints).

    params: model parameters (float32). batch_stats: BatchNorm running stats ({} if none).
    opt_state: optimizer state (``inject_hyperparams`` state). step: int32 global step count.
    rng: PRNG key; the augmentation key of step t is ``fold_in(rng, t)``.
    """

    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    step: jax.Array
    rng: jax.Array


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of (B, C) logits and (B,) int labels, in float32; for a
    language model (B, T, V) logits and (B, T) next-token labels, the mean over all B T
    positions."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels).mean()


def bits_per_byte(loss: float) -> float:
    """Bits per byte of a byte-level language model: its mean cross-entropy per byte (one token
    = one byte) in nats, divided by ln 2."""
    return loss / math.log(2)


def variables(params: PyTree, batch_stats: PyTree) -> dict:
    """Flax variables of a model with (or without: ``{}``) BatchNorm statistics."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def preprocess(images: jax.Array, mean: np.ndarray, std: np.ndarray) -> jax.Array:
    """uint8 images -> normalised float32 model inputs (:func:`sfw_jax.training.augment.normalize`)."""
    return augment_lib.normalize(images, mean, std)


def _jit_steps(step: Callable, n_data: int, mesh: Mesh, steps_per_call: int,
               donate: bool) -> Callable:
    """``step(state, *data, perm, i)`` jitted with the training shardings; for
    ``steps_per_call = S > 1`` the steps ``i, ..., i + S - 1`` in one call (``lax.scan``), the
    metrics stacked along a leading axis of S."""
    if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) \
            or steps_per_call < 1:
        raise ValueError(f"steps_per_call must be an int >= 1, got {steps_per_call!r}")
    fn = step
    if steps_per_call > 1:
        def fn(state, *args):
            *data, perm, i = args
            return jax.lax.scan(lambda st, j: step(st, *data, perm, i + j), state,
                                jnp.arange(steps_per_call, dtype=jnp.int32))
    repl = dist.replicated(mesh)
    perm_sharding = NamedSharding(mesh, P(None, dist.DATA_AXIS))
    return jax.jit(fn, in_shardings=(repl,) * (1 + n_data) + (perm_sharding, repl),
                   out_shardings=(repl, repl), donate_argnums=(0,) if donate else ())


def make_train_step(model: Any, tx: optax.GradientTransformationExtraArgs, *, mean: np.ndarray,
                    std: np.ndarray, augment: bool, mesh: Mesh,
                    donate: bool = True, steps_per_call: int = 1) -> Callable:
    """Jitted ``step(state, images, labels, perm, i) -> (state, metrics)``.

    ``images`` uint8 [N, H, W, C] and ``labels`` int32 [N] are the whole training split
    (replicated); ``perm`` int32 [S, B] holds the epoch's batch indices (batch axis sharded over
    'data'); step ``i`` trains on ``images[perm[i]]``. With ``augment``: random crop (pad 4) and
    horizontal flip with key ``fold_in(state.rng, state.step)``. ``metrics``: ``loss`` (batch
    mean, float32) and ``correct`` (int32 count). ``state`` is donated. With
    ``steps_per_call = S > 1`` one call runs steps ``i .. i + S - 1`` (``metrics`` arrays [S]).
    """
    batch_sharding = dist.data_sharding(mesh)

    def step(state: TrainState, images, labels, perm, i):
        idx = jax.lax.dynamic_index_in_dim(perm, i, axis=0, keepdims=False)
        x = jax.lax.with_sharding_constraint(jnp.take(images, idx, axis=0), batch_sharding)
        y = jax.lax.with_sharding_constraint(jnp.take(labels, idx, axis=0), batch_sharding)
        if augment:
            x = augment_lib.random_crop_flip(jax.random.fold_in(state.rng, state.step), x, pad=4)
        x = preprocess(x, mean, std)
        return _update(model, tx, state, x, y)

    return _jit_steps(step, 2, mesh, steps_per_call, donate)


def make_token_train_step(model: Any, tx: optax.GradientTransformationExtraArgs, *,
                          mesh: Mesh, donate: bool = True, steps_per_call: int = 1) -> Callable:
    """Jitted ``step(state, tokens, perm, i) -> (state, metrics)`` of a language model.

    ``tokens`` uint8 [N, T + 1] are the training split's windows (replicated); step ``i``
    trains on windows ``perm[i]``: inputs ``w[:, :-1]``, next-byte targets ``w[:, 1:]``
    (:func:`~sfw_jax.training.datasets.inputs_targets`). ``metrics``: ``loss`` (mean over
    the B T positions) and ``correct`` (int32 count of positions whose argmax is the target).
    ``state`` is donated; ``steps_per_call`` as :func:`make_train_step`.
    """
    batch_sharding = dist.data_sharding(mesh)

    def step(state: TrainState, tokens, perm, i):
        idx = jax.lax.dynamic_index_in_dim(perm, i, axis=0, keepdims=False)
        w = jax.lax.with_sharding_constraint(jnp.take(tokens, idx, axis=0), batch_sharding)
        x, y = inputs_targets(w)
        return _update(model, tx, state, x, y)

    return _jit_steps(step, 1, mesh, steps_per_call, donate)


def _update(model: Any, tx: optax.GradientTransformationExtraArgs, state: TrainState,
            x: jax.Array, y: jax.Array) -> tuple[TrainState, dict]:
    """One optimizer step on the batch (x, y): the body shared by the train steps."""
    has_bs = bool(jax.tree.leaves(state.batch_stats))

    def loss_fn(params):
        if has_bs:
            logits, updates = model.apply(variables(params, state.batch_stats), x,
                                          train=True, mutable=["batch_stats"])
            new_bs = updates["batch_stats"]
        else:
            logits = model.apply(variables(params, state.batch_stats), x, train=True)
            new_bs = state.batch_stats
        return cross_entropy_loss(logits, y), (logits, new_bs)

    (loss, (logits, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == y).astype(jnp.int32)
    new_state = state.replace(params=params, batch_stats=new_bs, opt_state=opt_state,
                              step=state.step + 1)
    return new_state, {"loss": loss, "correct": correct}


def make_eval_step(model: Any, *, mean: np.ndarray, std: np.ndarray, mesh: Mesh) -> Callable:
    """Jitted ``eval_step(params, batch_stats, x, y, w) -> (loss_sum, correct_sum)``.

    ``x`` uint8 [B, H, W, C], ``y`` int32 [B], ``w`` float32 [B] (0 for padding), batch axis
    sharded over 'data'; float32 sums weighted by ``w``. Inference mode (BatchNorm running stats).
    """
    batch = dist.data_sharding(mesh)
    repl = dist.replicated(mesh)

    def eval_step(params, batch_stats, x, y, w):
        logits = model.apply(variables(params, batch_stats), preprocess(x, mean, std),
                             train=False).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        return jnp.sum(losses * w), jnp.sum(correct * w)

    return jax.jit(eval_step, in_shardings=(repl, repl, batch, batch, batch),
                   out_shardings=(repl, repl))


def make_token_eval_step(model: Any, *, mesh: Mesh) -> Callable:
    """Jitted ``eval_step(params, batch_stats, tokens, w) -> (loss_sum, correct_sum)`` of a
    language model: ``tokens`` uint8 [B, T + 1] windows, ``w`` float32 [B] (0 for padding);
    sums over the B T next-byte positions weighted by their window's ``w``."""
    batch = dist.data_sharding(mesh)
    repl = dist.replicated(mesh)

    def eval_step(params, batch_stats, tokens, w):
        x, y = inputs_targets(tokens)
        logits = model.apply(variables(params, batch_stats), x, train=False).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        return jnp.sum(losses * w[:, None]), jnp.sum(correct * w[:, None])

    return jax.jit(eval_step, in_shardings=(repl, repl, batch, batch),
                   out_shardings=(repl, repl))


@dataclasses.dataclass
class DeviceSplit:
    """A split on the devices as fixed-size padded batches (image splits ``(x, y, w)``, token
    splits ``(tokens, w)``; batch axis sharded); ``size`` examples in all."""

    batches: list[tuple[jax.Array, ...]]
    size: int


def _padded(a: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    """``a[start:stop]`` padded with zeros along axis 0 to ``size`` rows."""
    part = a[start:stop]
    return np.concatenate([part, np.zeros((size - len(part), *a.shape[1:]), a.dtype)])


class Evaluator:
    """Evaluates (params, batch_stats) on splits copied to the mesh once.

    Every batch has ``batch_size`` examples (rounded up to a multiple of the device count) so the
    eval step compiles once; the last batch is padded with weight-0 examples, so every example
    counts exactly once. On several processes every process pads the same way and puts its
    shards of each batch (:func:`sfw_jax.training.distributed.shard_batch`); the jitted sums
    are global, so every process gets the same result. A language model
    (``info.sequence_length`` set) is evaluated on
    :class:`~sfw_jax.training.datasets.TokenSplit` windows, every next-byte position once.
    """

    def __init__(self, model: Any, info: DatasetInfo, mesh: Mesh, batch_size: int):
        n_dev = mesh.devices.size
        self.mesh = mesh
        self.batch_size = int(math.ceil(batch_size / n_dev) * n_dev)
        self.sequence_length = info.sequence_length
        if self.sequence_length is None:
            self._step = make_eval_step(model, mean=np.asarray(info.mean),
                                        std=np.asarray(info.std), mesh=mesh)
        else:
            self._step = make_token_eval_step(model, mesh=mesh)

    def put(self, split: Split | TokenSplit) -> DeviceSplit:
        """Copy ``split`` to the devices as padded, sharded batches."""
        n, eb = len(split), self.batch_size
        arrays = ((split.tokens,) if isinstance(split, TokenSplit)
                  else (split.images, split.labels.astype(np.int32)))
        batches = []
        for start in range(0, n, eb):
            stop = min(start + eb, n)
            w = _padded(np.ones(n, np.float32), start, stop, eb)
            batch = (*(_padded(a, start, stop, eb) for a in arrays), w)
            batches.append(dist.shard_batch(batch, self.mesh))
        return DeviceSplit(batches, n)

    def __call__(self, params: PyTree, batch_stats: PyTree,
                 split: DeviceSplit | Split | TokenSplit) -> dict[str, float]:
        """``{'loss': mean cross-entropy, 'accuracy': fraction correct}`` over the split's
        examples (a language model: over its next-byte positions, and ``'bits_per_byte'``)."""
        if isinstance(split, (Split, TokenSplit)):
            split = self.put(split)
        if split.size == 0:
            out = {"loss": float("nan"), "accuracy": float("nan")}
            return out if self.sequence_length is None else {**out, "bits_per_byte": math.nan}
        sums = [self._step(params, batch_stats, *batch) for batch in split.batches]
        loss_sum, correct_sum = np.sum(np.asarray(jax.device_get(sums), np.float64), axis=0)
        count = split.size * (self.sequence_length or 1)
        out = {"loss": float(loss_sum / count), "accuracy": float(correct_sum / count)}
        if self.sequence_length is not None:
            out["bits_per_byte"] = bits_per_byte(out["loss"])
        return out
