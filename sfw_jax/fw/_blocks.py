"""Frank-Wolfe as Optax building blocks: :func:`frank_wolfe` and :func:`sfw_momentum`.

:func:`frank_wolfe` takes the incoming updates as the direction d of a Frank-Wolfe step (raw
gradients, a momentum, Adam's scaled moments: whatever the chain before it produced) and returns,
for every leaf x with constraint set C,

    v      = LMO_C(d),   eta = clip(lr_t * factor, 0, 1),   update = eta (v - x)

with the factor of ``rescale`` (:mod:`sfw_jax.fw._step`: ||d|| / ||x - v|| for 'gradient'). So
x stays in C whenever it starts there. :func:`sfw_momentum` is the reference momentum
m_0 = g, m_t = mu m_{t-1} + (1 - mu) g, and

    sfw(lr, C, momentum=mu, rescale=r)  ==  optax.chain(sfw_momentum(mu), frank_wolfe(lr, C, rescale=r))

(the same updates up to float rounding; :func:`sfw_jax.sfw` keeps its own state and its fused
native CPU kernel). ``optax.chain(optax.scale_by_adam(), frank_wolfe(lr, C))`` is
Adam-preconditioned SFW.

``frank_wolfe`` has no step for a leaf whose constraint is ``Unconstrained()``: such a leaf is a
ValueError naming it at ``init`` and ``update``, unless it arrives as ``optax.MaskedNode``
because an enclosing ``optax.partition`` routes it to another transformation (docs/api.md).
"""

from __future__ import annotations

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from sfw_jax._tree import PyTree
from sfw_jax.fw import _step
from sfw_jax.fw._constraints import check_constraints_match

_REMEDY = ("route it to another transformation with optax.partition (labels e.g. "
           "jax.tree.map(lambda c: c.constrained, constraints, is_leaf=sfw_jax.is_constraint))")


class FrankWolfeState(NamedTuple):
    """count: int32 number of steps taken (the argument of a learning-rate schedule)."""

    count: jax.Array


class SFWMomentumState(NamedTuple):
    """count: int32 number of steps taken; momentum: m_t, a pytree like params."""

    count: jax.Array
    momentum: PyTree


def frank_wolfe(learning_rate: Union[float, jax.Array, optax.Schedule], constraints: PyTree, *,
                rescale: str | None = "gradient") -> optax.GradientTransformationExtraArgs:
    """The Frank-Wolfe step along the incoming updates (see the module docstring).

    Args:
      learning_rate: lr >= 0, a float, a scalar array or an ``optax.Schedule`` of the step count.
      constraints: pytree like params of constraint objects (:func:`sfw_jax.make_constraints`).
      rescale: 'gradient' (default), 'fast_gradient', 'diameter' or 'none' (None accepted), as
        :func:`sfw_jax.sfw` with its momentum m replaced by the incoming direction d.

    The selections of same-shaped leaves are batched as ``sfw``'s ``batch_select=None``
    (:data:`sfw_jax.fw.BATCH_SELECT` for ``jax.default_backend()``), with the same result,
    and those of the K-sparse leaves are one segmented search over the tree as ``sfw``'s
    ``tree_select=None`` (:data:`sfw_jax.fw.TREE_SELECT`: on GPU / TPU).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`FrankWolfeState`;
      ``update(updates, state, params)`` requires ``params``; each update has the dtype of its
      parameter (the direction is cast to it). Works with
      ``optax.inject_hyperparams(frank_wolfe, static_args=('constraints', 'rescale'))``, in
      ``optax.chain``, ``optax.partition`` and ``optax.masked``.
    """
    rescale = _step.check_rescale(rescale)
    _step.check_learning_rate(learning_rate)
    _step.constraint_leaves(constraints)
    batch_select = _step.resolve_batch_select(None)
    tree_select = _step.resolve_tree_select(None)

    def init_fn(params):
        params = _step.unbox(params)
        check_constraints_match(constraints, params, "params")
        _step.check_routed(constraints, params, "frank_wolfe init", _REMEDY)
        return FrankWolfeState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _step.require_params(params, "frank_wolfe")
        cdef, cs, ds, xs, live = _step.live_leaves(constraints, updates, params,
                                                   "frank_wolfe update", _REMEDY)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        out = list(ds)                                  # masked leaves pass through
        if live:
            us = _step.fw_updates([cs[i] for i in live],
                                  [ds[i].astype(xs[i].dtype) for i in live],
                                  [xs[i] for i in live], lr, rescale, batch_select,
                                  tree_select=tree_select)
            for i, u in zip(live, us):
                out[i] = u
        return cdef.unflatten(out), FrankWolfeState(optax.safe_int32_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sfw_momentum(momentum: Union[float, jax.Array] = 0.9) -> optax.GradientTransformation:
    """The reference SFW momentum: m_0 = g, m_t = mu m_{t-1} + (1 - mu) g (mu in [0, 1)),
    emitted as the update; m has the dtype of its parameter, computed in float32 (float64 for
    float64 parameters). State :class:`SFWMomentumState`; works with
    ``optax.inject_hyperparams`` (``momentum`` may then be a traced array)."""
    _step.check_scalar_hparam(momentum, "momentum", 0.0, 1.0, True)

    def init_fn(params):
        return SFWMomentumState(count=jnp.zeros([], jnp.int32),
                                momentum=jax.tree.map(jnp.zeros_like, _step.unbox(params)))

    def update_fn(updates, state, params=None):
        del params
        m = jax.tree.map(lambda g, mp: _step.leaf_momentum(g, mp, mp, state.count, momentum),
                         updates, state.momentum)
        return m, SFWMomentumState(optax.safe_int32_increment(state.count), m)

    return optax.GradientTransformation(init_fn, update_fn)
