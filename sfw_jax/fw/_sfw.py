"""Stochastic Frank-Wolfe (SFW) as an Optax gradient transformation.

For every parameter leaf x with constraint set C, gradient (incoming update) g, step count t:

    m_t   = g                              if t = 0
          = mu * m_{t-1} + (1 - mu) * g    otherwise           (momentum, mu in [0, 1))
    v     = LMO_C(m_t) = argmin_{v in C} <v, m_t>
    eta   = clip(lr_t * factor, 0, 1),  factor = ||m_t||_2 / ||x - v||_2     ('gradient')
                                                 ||m_t||_2 / (diam(C) / 2)   ('fast_gradient')
                                                 1 / diam(C)                 ('diameter')
                                                 1                           (None)
    update = eta * (v - x)        so that  optax.apply_updates gives  x <- (1 - eta) x + eta v.

This is the step of the reference PyTorch ``SFW`` optimizer (Pokutta et al.; Lu et al., 2022). The
iterate stays in C whenever it starts in C (a convex combination of two points of C): make the
initial parameters feasible with :func:`sfw_jax.make_feasible`.

The update after the momentum is :func:`sfw_jax.frank_wolfe`'s step with d = m_t (the rule is
written once, in :mod:`sfw_jax.fw._step`), so ``sfw(lr, C, momentum=mu, rescale=r)`` gives the
updates of ``optax.chain(sfw_jax.sfw_momentum(mu), sfw_jax.frank_wolfe(lr, C, rescale=r))``. What
``sfw`` adds is its own state (:class:`SFWState`) and, on a CPU backend, by default, one native
kernel call per float32 leaf whose set has the K-sparse sign vertex (``Constraint.sign_top_k``)
for the front half of the step: momentum, top-k selection and both norms (``cpu_kernel``,
:mod:`sfw_jax.fw.native`). With ``batch_select`` the selections of leaves with equal
``Constraint.batch_key`` are one ``vmap`` (fewer ops per update: ``benchmarks/op_count.py``);
with ``tree_select`` (the default on GPU / TPU) those of all K-sparse leaves are one segmented
search over the whole tree (:mod:`sfw_jax.fw.segtopk`).

Leaves whose constraint is ``Unconstrained()`` have no Frank-Wolfe step: ``sfw`` trains them with
the transformation passed as ``unconstrained`` (e.g. ``optax.sgd(0.1, momentum=0.9)``; routed
with ``optax.partition``). Without one, such a leaf is an error at ``init`` and ``update`` (its
raw gradient must never be added to the parameter), unless it arrives as ``optax.MaskedNode``
because an enclosing ``optax.partition`` / ``optax.masked`` routes it elsewhere.
``unconstrained=optax.identity()`` passes the incoming update through, for a chain whose earlier
transformations already turned those leaves' gradients into updates.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from sfw_jax._tree import PyTree
from sfw_jax.fw import _step, native
from sfw_jax.fw._checks import acc_dtype as _acc_dtype
from sfw_jax.fw._step import BATCH_SELECT, RESCALES, TREE_SELECT, check_rescale
from sfw_jax.fw._step import is_masked as _is_masked
from sfw_jax.fw._step import leaf_momentum as _leaf_momentum
from sfw_jax.fw._constraints import check_constraints_match as _check_structure
from sfw_jax.fw._sets import Constraint, is_constraint
from sfw_jax.fw.topk import THRESHOLD_METHODS, backend_name, resolve_method, top_k_threshold

SFW_LABEL, UNCONSTRAINED_LABEL = "sfw", "unconstrained"
"""The ``optax.partition`` labels of :func:`sfw` with ``unconstrained``."""

_REMEDY = ("pass unconstrained=... (e.g. optax.sgd(0.1); optax.identity() passes the incoming "
           "update through) or route the leaf to another optimizer with optax.partition")


class SFWState(NamedTuple):
    """count: int32 number of steps taken; momentum: pytree like params (m_t), with empty
    placeholders for unconstrained (or masked) leaves."""

    count: jax.Array
    momentum: PyTree


def uses_cpu_kernel(cpu_kernel: Optional[bool] = None) -> bool:
    """Whether ``sfw(..., cpu_kernel=cpu_kernel)`` runs the native CPU kernel here (see
    :func:`sfw`; True raises ``NativeKernelError`` where the kernel cannot be built)."""
    if cpu_kernel is None:
        return backend_name() == "cpu" and native.unavailable_reason() is None
    if cpu_kernel:
        native.ensure_registered()                # fail here, not inside jit, when it cannot
    return cpu_kernel


def _native_eligible(c: Constraint, g: Any, m: Any, x: Any) -> bool:
    """Leaves the native CPU kernel handles: float32, a set whose LMO is the K-sparse sign
    vertex (``Constraint.sign_top_k``) with K < n (any top-k method: the kernel's selection is
    the same exact top-k)."""
    spec = c.sign_top_k()
    if spec is None or any(jnp.dtype(a.dtype) != jnp.float32 for a in (g, m, x)):
        return False
    return min(spec.k, x.size) < x.size


def _native_front(c: Constraint, g: jax.Array, m_prev: jax.Array, x: jax.Array,
                  count: jax.Array, momentum: Any) -> tuple[jax.Array, tuple]:
    """``(m, (selection, (||m||^2, ||v - x||^2)))`` of a leaf the kernel takes: by the kernel
    on the CPU, by XLA ops elsewhere (``lax.platform_dependent``; the branch off the CPU needs
    a (t, cut) selection, as the kernel's)."""
    spec = c.sign_top_k()
    k = min(spec.k, x.size)
    path = resolve_method(x.size, spec.method, "default")
    path = path if path in THRESHOLD_METHODS else "bisect"

    def on_cpu():
        m, sel, sq_m, sq_d = native.sfw_select_f32(
            g, m_prev, x, count, jnp.asarray(momentum, jnp.float32), k, spec.radius)
        return m, sel, (sq_m, sq_d)

    def elsewhere():
        m = _leaf_momentum(g, m_prev, x, count, momentum)
        sel = jax.lax.optimization_barrier(
            top_k_threshold(jax.lax.stop_gradient(m), k, absolute=True, method=path))
        return m, sel, _step.sq_norms(m, _step.direction(c, m, sel, x))

    m, sel, sq = jax.lax.platform_dependent(cpu=on_cpu, default=elsewhere)
    return m, (sel, sq)


def sfw_leaf_step(c: Constraint, g: jax.Array, m_prev: jax.Array, x: jax.Array,
                  count: jax.Array, lr: jax.Array, momentum: jax.Array,
                  rescale: str) -> tuple[jax.Array, jax.Array]:
    """One SFW step for one leaf, differentiable (SFW-Init takes its gradient): returns
    (update, new momentum). The rule of :mod:`sfw_jax.fw._step` with the one-phase LMO and
    plain sums for the norms."""
    acc = _acc_dtype(x)
    m = _leaf_momentum(g, m_prev, x, count, momentum)
    d = c.lmo(m).astype(acc) - x.astype(acc)

    def sq():
        ma = m.astype(_acc_dtype(m))
        return jnp.sum(ma * ma), jnp.sum(d * d)

    eta = _step.step_sizes([c], [sq], acc, lr, rescale)[0]
    return (eta * d).astype(x.dtype), m


def sfw(learning_rate: Union[float, jax.Array, optax.Schedule], constraints: PyTree, *,
        momentum: Union[float, jax.Array] = 0.9,
        rescale: Optional[str] = "gradient",
        cpu_kernel: Optional[bool] = None,
        batch_select: Optional[bool] = None,
        tree_select: Optional[bool] = None,
        unconstrained: Optional[optax.GradientTransformation] = None
        ) -> optax.GradientTransformationExtraArgs:
    """Stochastic Frank-Wolfe over per-leaf constraint sets (see the module docstring).

    Args:
      learning_rate: lr >= 0, a float, a scalar array or an ``optax.Schedule`` of the step count.
      constraints: pytree like params of constraint objects (:func:`sfw_jax.make_constraints`).
      momentum: mu in [0, 1); m = mu m + (1 - mu) g with m = g on the first step.
      rescale: 'gradient' (reference default), 'fast_gradient' (the radius D/2 in place of
        ||x - v||, as the 'fast_gradient' option of Zimmer, Spiegel & Pokutta's
        compression-aware SFW code: ``factor = ||m|| / (0.5 * diameter)``), 'diameter' or
        'none' (None is accepted for 'none').
      cpu_kernel: on the CPU, compute m, the top-k selection and the two norms of every float32
        leaf whose set has the K-sparse sign vertex with K < n (``Constraint.sign_top_k``: the
        K-sparse polytope) by one call to the native kernel of :mod:`sfw_jax.fw.native`
        (built on first use with the system C++ compiler; x86-64). Same m and selection as the
        XLA path; the norms are summed in another order, so eta may differ in its last bits.
        Other platforms, and other leaves, use the XLA path. None (default): the kernel when
        ``jax.default_backend()`` is the CPU and the kernel builds and loads here (faster per
        update than the XLA path: ``benchmarks/bench_update.py``); where it cannot, one
        ``RuntimeWarning`` per process names the reason and the XLA path is used; on other
        backends the XLA path, nothing built. True: the kernel on the CPU,
        :class:`sfw_jax.fw.native.NativeKernelError` here if it cannot be built. False: the
        XLA path.
      batch_select: on the XLA path, compute the selections of the leaves whose sets give
        equal ``Constraint.batch_key`` (K-sparse: same shape, dtype, K and top-k method, K < n,
        a threshold method) by one ``vmap`` over their stacked momenta instead of one call per
        leaf (bitwise the same result). None (default): :data:`BATCH_SELECT` for
        ``jax.default_backend()`` (off on the CPU, on elsewhere).
      tree_select: on the XLA path, compute the selections of all leaves whose set has the
        K-sparse sign vertex with K < n (``Constraint.sign_top_k``), whatever their shapes, by
        one search of the segmented engine (:mod:`sfw_jax.fw.segtopk`; the vertices of the
        per-leaf selections, the sets' top-k ``method`` unused), and their norms on the same
        flat view (summed in another order: eta may differ in its last bits). A fixed number
        of ops for the tree instead of a few per leaf (``benchmarks/op_count.py``). None
        (default): :data:`TREE_SELECT` for ``jax.default_backend()`` (off on the CPU, on
        elsewhere).
      unconstrained: the transformation of the leaves whose constraint is ``Unconstrained()``
        (e.g. ``optax.sgd(0.1, momentum=0.9)``), routed with ``optax.partition`` under the
        labels :data:`SFW_LABEL` / :data:`UNCONSTRAINED_LABEL`. ``optax.identity()`` passes the
        incoming update through. None (default): such a leaf is a ValueError naming it at
        ``init`` / ``update``, unless it arrives as ``optax.MaskedNode`` (an enclosing
        ``optax.partition`` routes it elsewhere).

    ``cpu_kernel=None``, ``batch_select=None``, ``tree_select=None`` and the top-k
    ``method='auto'`` of the constraints are resolved for ``jax.default_backend()`` (the first
    three when ``sfw`` is called, the method when the update is traced).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(updates, state, params)`` requires
      ``params``. Its state is an :class:`SFWState` (with ``unconstrained``: the
      ``optax.PartitionState`` of the two branches). Works with ``optax.inject_hyperparams(sfw,
      static_args=('constraints', 'rescale'))`` (learning_rate and momentum may then be traced
      arrays), inside ``optax.chain``, ``optax.partition``, ``optax.masked`` and
      ``optax.apply_if_finite``.
    """
    rescale = check_rescale(rescale)
    for name, flag in (("cpu_kernel", cpu_kernel), ("batch_select", batch_select),
                       ("tree_select", tree_select)):
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"{name} must be None, True or False, got {flag!r}")
    _step.check_learning_rate(learning_rate)
    _step.check_scalar_hparam(momentum, "momentum", 0.0, 1.0, True)
    c_leaves = _step.constraint_leaves(constraints)
    # (no set for the kernel: 'auto' neither builds it nor warns)
    use_kernel = ((cpu_kernel is not None or any(c.sign_top_k() is not None for c in c_leaves))
                  and uses_cpu_kernel(cpu_kernel))
    update_fn = functools.partial(_sfw_update, constraints, learning_rate, momentum, rescale,
                                  use_kernel, _step.resolve_batch_select(batch_select),
                                  _step.resolve_tree_select(tree_select))
    core = optax.GradientTransformationExtraArgs(functools.partial(_sfw_init, constraints),
                                                 update_fn)
    return route_unconstrained(core, constraints, unconstrained)


def _sfw_init(constraints: PyTree, params: PyTree) -> SFWState:
    """Step count 0 and zero momentum for the constrained leaves (module docstring)."""
    params = _step.unbox(params)
    _check_structure(constraints, params, "params")
    _step.check_routed(constraints, params, "sfw init", _REMEDY)

    def init_leaf(c, x):
        if _is_masked(x):
            return x
        if not c.constrained:
            return jnp.zeros((0,), jnp.float32)
        return jnp.zeros_like(x)

    momentum_tree = jax.tree.map(init_leaf, constraints, params, is_leaf=is_constraint)
    return SFWState(count=jnp.zeros([], jnp.int32), momentum=momentum_tree)


def _sfw_update(constraints: PyTree, learning_rate: Any, momentum: Any, rescale: str,
                use_kernel: bool, batch_select: bool, tree_select: bool, updates: PyTree,
                state: SFWState,
                params: Optional[PyTree] = None, **extra_args) -> tuple[PyTree, SFWState]:
    """The SFW step (module docstring): the momentum of every constrained leaf (with the
    kernel's selection and norms where it takes the leaf), then the Frank-Wolfe step along it."""
    del extra_args
    _step.require_params(params, "sfw")
    cdef, cs, gs, xs, live = _step.live_leaves(constraints, updates, params, "sfw update",
                                               _REMEDY)
    ms = cdef.flatten_up_to(state.momentum)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    out_u, out_m = list(gs), list(ms)              # unconstrained / masked leaves pass through
    fused = {}
    for j, i in enumerate(live):                   # trace-time walk over the leaves
        if use_kernel and _native_eligible(cs[i], gs[i], ms[i], xs[i]):
            out_m[i], fused[j] = _native_front(cs[i], gs[i], ms[i], xs[i], state.count,
                                               momentum)
        else:
            out_m[i] = _leaf_momentum(gs[i], ms[i], xs[i], state.count, momentum)
    if live:
        us = _step.fw_updates([cs[i] for i in live], [out_m[i] for i in live],
                              [xs[i] for i in live], lr, rescale, batch_select, fused,
                              tree_select)
        for i, u in zip(live, us):
            out_u[i] = u
    count = optax.safe_int32_increment(state.count)
    return cdef.unflatten(out_u), SFWState(count=count, momentum=cdef.unflatten(out_m))


def route_unconstrained(core: optax.GradientTransformationExtraArgs, constraints: PyTree,
                        unconstrained: Optional[optax.GradientTransformation]
                        ) -> optax.GradientTransformationExtraArgs:
    """``core`` for the constrained leaves and ``unconstrained`` for the ``Unconstrained()``
    ones, by ``optax.partition`` (``core`` itself when ``unconstrained`` is None)."""
    if unconstrained is None:
        return core
    if not isinstance(unconstrained, optax.GradientTransformation):
        raise ValueError(f"unconstrained must be an optax.GradientTransformation (e.g. "
                         f"optax.sgd(0.1)) or None, got {unconstrained!r}")
    labels = jax.tree.map(lambda c: SFW_LABEL if c.constrained else UNCONSTRAINED_LABEL,
                          constraints, is_leaf=is_constraint)
    return optax.partition({SFW_LABEL: core, UNCONSTRAINED_LABEL: unconstrained}, labels)
