"""SFW-Init: learned per-tensor rescaling of the initial weights for SFW training (Lu et al., 2022).

Standard initializers are tuned for SGD. SFW-Init learns one positive scale s_i per parameter
tensor W_i so that the loss *after one SFW step* from the rescaled init is small:

    x(s)   = (s_i * W_i)_i
    g      = grad L(x(s); B_t)                                   (batch B_t)
    x'(s)  = x + eta (LMO(g) - x),  eta = clip(lr ||g|| / ||x - LMO(g)||, 0, 1)
                                     (one SFW step: no momentum, 'gradient' rescale)
    min_s  L(x'(s); B'_t),  B'_t = second half of B_t + first half of B_{t+1} (partly fresh)

differentiating through the SFW step with ``jax.grad`` (the LMO's selection is piecewise constant,
so the gradient flows through x, ||g|| and ||x - v||). Each scale's gradient is clipped to [-1, 1],
Adam (lr 1e-3) updates the scales, and they are kept >= a minimum (0.01 for kernels, ndim >= 2;
0 for biases and other vectors). After ``steps`` iterations (390 = one CIFAR epoch at batch 128)
the rescaled params are returned, made feasible.

BatchNorm: write ``loss_fn`` to run the model in training mode (batch statistics) and drop the
updated running statistics, so SFW-Init leaves them unchanged (as the reference does).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sfw_jax import check_constraints_match, is_constraint, is_kernel, make_feasible
from sfw_jax._progress import progress_bar
from sfw_jax._tree import PyTree, path_names
from sfw_jax.fw._sfw import sfw_leaf_step

__all__ = ["SFWInitResult", "sfw_init"]


class SFWInitResult(NamedTuple):
    """params: rescaled and feasible params; scales: pytree of float32 scalars like params;
    losses: list of the post-step losses per iteration; seconds: wall time."""

    params: PyTree
    scales: PyTree
    losses: list
    seconds: float


def _one_sfw_step(params: PyTree, grads: PyTree, constraints: PyTree,
                  learning_rate: float) -> PyTree:
    """x + eta (LMO(g) - x) per leaf with m = g and 'gradient' rescale (unconstrained leaves:
    x - lr g, a plain SGD step)."""
    zero = jnp.zeros([], jnp.int32)

    def leaf(c, g, x):
        if not c.constrained:
            return x - learning_rate * g
        u, _ = sfw_leaf_step(c, g, g, x, zero, learning_rate, 0.0, "gradient")
        return x + u

    return jax.tree.map(leaf, constraints, grads, params, is_leaf=is_constraint)


def _mix(b1: PyTree, b2: PyTree) -> PyTree:
    """Second half of b1 followed by the first half of b2 (leading axis = batch)."""
    def f(a, b):
        h = a.shape[0] // 2
        return jnp.concatenate([a[h:], b[: b.shape[0] - (a.shape[0] - h)]], axis=0)
    return jax.tree.map(f, b1, b2)


def _default_min_scale(params: PyTree, kernel_min: float = 0.01, other_min: float = 0.0) -> PyTree:
    """``kernel_min`` for the kernels (:func:`sfw_jax.is_kernel`), ``other_min`` for the rest
    (biases, BatchNorm vectors)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: kernel_min if is_kernel(path_names(path), x) else other_min, params)


def sfw_init(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, constraints: PyTree,
             batches: Iterable[Any], *, learning_rate: float = 1.0, steps: int = 390,
             adam_lr: float = 1e-3, min_scale: Optional[PyTree] = None, clip: float = 1.0,
             progress: bool = False) -> SFWInitResult:
    """Learn per-tensor scales of ``params`` (see the module docstring).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, differentiable twice (jit-able).
      params: the initial parameters (e.g. ``model.init(...)['params']``).
      constraints: pytree of constraint objects like params (the ones SFW will train with).
      batches: iterable of batches (pytrees with a leading batch axis); ``steps + 1`` are used.
      learning_rate: the SFW step size of the inner step (SFW's own lr).
      steps: Adam iterations on the scales (390 in the reference).
      adam_lr: Adam learning rate on the scales.
      min_scale: pytree of floats like params (default :func:`_default_min_scale`).
      clip: each scale's gradient is clipped to [-clip, clip].
      progress: show a progress bar (on a terminal).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    for name, v in (("learning_rate", learning_rate), ("adam_lr", adam_lr), ("clip", clip)):
        if not (isinstance(v, (int, float)) and v > 0 and v < float("inf")):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    check_constraints_match(constraints, params)
    if min_scale is None:
        min_scale = _default_min_scale(params)
    floors = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), min_scale)
    scales = jax.tree.map(lambda _: jnp.ones([], jnp.float32), params)
    tx = optax.chain(optax.clip(clip), optax.adam(adam_lr))
    opt_state = tx.init(scales)

    def post_step_loss(s, b1, b2):
        x = jax.tree.map(lambda w, si: (w * si).astype(w.dtype), params, s)
        g = jax.grad(loss_fn)(x, b1)
        return loss_fn(_one_sfw_step(x, g, constraints, learning_rate), b2)

    @jax.jit
    def update(s, opt_state, b1, b2):
        loss, grad = jax.value_and_grad(post_step_loss)(s, b1, _mix(b1, b2))
        upd, opt_state = tx.update(grad, opt_state, s)
        s = optax.apply_updates(s, upd)
        s = jax.tree.map(jnp.maximum, s, floors)
        return s, opt_state, loss

    it = iter(batches)
    prev = next(it)
    losses = []
    start = time.perf_counter()
    with progress_bar(steps, "sfw-init", enabled=progress, leave=False) as bar:
        for batch in itertools.islice(it, steps):
            scales, opt_state, loss = update(scales, opt_state, prev, batch)
            losses.append(float(loss))
            prev = batch
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if len(losses) < steps:
        raise ValueError(f"batches must yield at least steps + 1 = {steps + 1} batches, "
                         f"got {len(losses) + 1}")
    rescaled = jax.tree.map(lambda w, si: (w * si).astype(w.dtype), params, scales)
    return SFWInitResult(make_feasible(rescaled, constraints), scales, losses,
                         time.perf_counter() - start)
