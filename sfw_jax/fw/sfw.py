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

Implementation: the per-leaf step sizes are computed together as one [L] vector; the LMO runs in
two phases (``Constraint.lmo_select`` -> a small selection such as the top-k threshold, then
``Constraint.lmo_vertex`` elementwise), so for the K-sparse polytope the vertex is rebuilt inside
the loops that use it instead of being written to memory (``benchmarks/bench_update.py`` times
it). With ``batch_select`` the selections of same-shaped K-sparse leaves are one ``vmap`` over
their stacked momenta (fewer ops per update: ``benchmarks/op_count.py``). On a CPU backend the
front half of the step of float32 K-sparse leaves is, by default, one native kernel call per
leaf (``cpu_kernel``, :mod:`sfw_jax.fw.native`).

Leaves whose constraint is ``Unconstrained()`` have no Frank-Wolfe step: ``sfw`` trains them with
the transformation passed as ``unconstrained`` (e.g. ``optax.sgd(0.1, momentum=0.9)``; routed
with ``optax.partition``). Without one, such a leaf is an error at ``init`` and ``update`` (its
raw gradient must never be added to the parameter), unless it arrives as ``optax.MaskedNode``
because an enclosing ``optax.partition`` / ``optax.masked`` routes it elsewhere.
``unconstrained=optax.identity()`` passes the incoming update through, for a chain whose earlier
transformations already turned those leaves' gradients into updates.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from sfw_jax._tree import PyTree, path_str
from sfw_jax.fw import native
from sfw_jax.fw._checks import acc_dtype as _acc_dtype
from sfw_jax.fw.constraints import check_constraints_match as _check_structure
from sfw_jax.fw.sets import Constraint, KSparsePolytope, is_constraint
from sfw_jax.fw.topk import THRESHOLD_METHODS, backend_name, resolve_method, top_k_threshold

RESCALES = ("gradient", "fast_gradient", "diameter", "none")
"""The step-size rules of the module docstring. ``'none'`` (factor 1) is the spelling of configs
and command lines; :func:`sfw` also accepts ``None`` for it."""

SFW_LABEL, UNCONSTRAINED_LABEL = "sfw", "unconstrained"
"""The ``optax.partition`` labels of :func:`sfw` with ``unconstrained``."""


class SFWState(NamedTuple):
    """count: int32 number of steps taken; momentum: pytree like params (m_t), with empty
    placeholders for unconstrained (or masked) leaves."""

    count: jax.Array
    momentum: PyTree


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _is_variable(x: Any) -> bool:
    """Boxed variables (e.g. ``flax.nnx.Param``), duck-typed so flax is not imported."""
    return hasattr(x, "get_value") and hasattr(x, "get_metadata")


def _unbox(tree: PyTree) -> PyTree:
    """Plain arrays for boxed variables: ``nnx.Optimizer`` inits with ``nnx.Param`` leaves and
    updates with the pure arrays."""
    return jax.tree.map(lambda x: x.get_value() if _is_variable(x) else x, tree,
                        is_leaf=_is_variable)


def _check_scalar_hparam(value: Any, name: str, lo: float, hi: float, hi_open: bool) -> None:
    """Validate a concrete Python number (traced arrays from inject_hyperparams pass through)."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        v = float(value)
        ok = math.isfinite(v) and lo <= v and (v < hi if hi_open else v <= hi)
        if not ok:
            bracket = ")" if hi_open else "]"
            raise ValueError(f"{name} must be a finite number in [{lo}, {hi}{bracket}, "
                             f"got {value!r}")


def _safe_sqrt(sq: jax.Array) -> jax.Array:
    """sqrt with a finite derivative at 0 (the value there is 0; SFW-Init differentiates
    through the step)."""
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1)), 0)


def _norm(x: jax.Array) -> jax.Array:
    """||x||_2 in float32/float64 with a finite derivative at x = 0."""
    x = x.astype(_acc_dtype(x))
    return _safe_sqrt(jnp.sum(x * x))


def _leaf_momentum(g: jax.Array, m_prev: jax.Array, x: jax.Array, count: jax.Array,
                   momentum: jax.Array) -> jax.Array:
    """m_t for one leaf (dtype of x)."""
    acc = _acc_dtype(x)
    mu = jnp.asarray(momentum, acc)
    g_acc = g.astype(acc)
    return jnp.where(count == 0, g_acc, mu * m_prev.astype(acc) + (1 - mu) * g_acc).astype(x.dtype)


def _sum_sq(e: jax.Array) -> jax.Array:
    """sum(e * e) as row sums of 16 entries, then a sum of the row sums (and of the < 16 tail
    entries). Spelling the order out fixes how the float sum rounds, so the step size, and a
    training run, do not change with XLA's choice of reduction order."""
    f = e.reshape(-1)
    n = f.shape[0]
    rows = n // 16
    total = jnp.zeros((), e.dtype)
    if rows:
        total = jnp.sum(jnp.sum(jnp.square(f[: rows * 16].reshape(rows, 16)), axis=1))
    if rows * 16 < n:
        total = total + jnp.sum(jnp.square(f[rows * 16:]))
    return total


def _sq_norms(m: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(||m||^2, ||d||^2) in the accumulation dtype of ``d``, as two separate sums (XLA:CPU runs
    one variadic reduction of both more slowly)."""
    return _sum_sq(m.astype(d.dtype)), _sum_sq(d)


def sfw_leaf_step(c: Constraint, g: jax.Array, m_prev: jax.Array, x: jax.Array,
                  count: jax.Array, lr: jax.Array, momentum: jax.Array,
                  rescale: str) -> tuple[jax.Array, jax.Array]:
    """One SFW step for one leaf: returns (update, new momentum). See the module docstring."""
    acc = _acc_dtype(x)
    m = _leaf_momentum(g, m_prev, x, count, momentum)
    d = c.lmo(m).astype(acc) - x.astype(acc)
    if rescale == "gradient":
        dn = _norm(d)
        factor = _norm(m) / jnp.where(dn > 0, dn, 1)     # d = 0 means x = v: any eta is a no-op
    elif rescale == "fast_gradient":
        factor = _norm(m) / jnp.asarray(c.diameter / 2, acc)
    elif rescale == "diameter":
        factor = jnp.asarray(1.0 / c.diameter, acc)
    else:
        factor = jnp.ones((), acc)
    eta = jnp.clip(jnp.asarray(lr, acc) * factor, 0, 1)
    return (eta * d).astype(x.dtype), m


def _step_sizes(cs, sq, acc, lr, rescale: str) -> jax.Array:
    """eta_i = clip(lr * factor_i, 0, 1) for all leaves at once ([L] vector); ``sq`` is a list of
    ``(||m_i||^2, ||d_i||^2)`` thunks (called for 'gradient' and 'fast_gradient' only), ``acc``
    the result dtype.

    The per-leaf scalars are stacked so that the factor arithmetic is one small fused op rather
    than a chain of scalar ops per leaf (each a separate kernel launch on XLA:CPU)."""
    if rescale == "gradient":
        sq = [f() for f in sq]
        sq_m = jnp.stack([s[0].astype(acc) for s in sq])
        sq_d = jnp.stack([s[1].astype(acc) for s in sq])
        # d = 0 means x = v: any eta is a no-op; divide by 1 there (as sfw_leaf_step)
        factor = _safe_sqrt(sq_m) / jnp.where(sq_d > 0, _safe_sqrt(sq_d), 1)
    elif rescale == "fast_gradient":
        # ||d||^2 is not read: XLA drops its reduction (the native kernel returns it anyway)
        sq_m = jnp.stack([f()[0].astype(acc) for f in sq])
        factor = _safe_sqrt(sq_m) / jnp.asarray([c.diameter / 2 for c in cs], acc)
    elif rescale == "diameter":
        factor = jnp.asarray([1.0 / c.diameter for c in cs], acc)
    else:
        factor = jnp.ones((len(cs),), acc)
    return jnp.clip(jnp.asarray(lr, acc) * factor, 0, 1)


#: Whether ``sfw(batch_select=None)`` computes the selections of same-shaped leaves together,
#: per backend (``'default'``: every backend not listed). CPU: off, because on XLA:CPU the
#: stacked copy of the momenta, and a vmapped 'search' whose conditionals then run both
#: branches, cost more than the calls saved (``benchmarks/bench_update.py --interleaved``).
#: Other backends: on, one set of selection ops per group of same-shaped leaves instead of one
#: per leaf (``benchmarks/op_count.py`` counts them).
BATCH_SELECT: dict[str, bool] = {"cpu": False, "default": True}


def uses_cpu_kernel(cpu_kernel: Optional[bool] = None) -> bool:
    """Whether ``sfw(..., cpu_kernel=cpu_kernel)`` runs the native CPU kernel here (see
    :func:`sfw`; True raises ``NativeKernelError`` where the kernel cannot be built)."""
    if cpu_kernel is None:
        return backend_name() == "cpu" and native.unavailable_reason() is None
    if cpu_kernel:
        native.ensure_registered()                # fail here, not inside jit, when it cannot
    return cpu_kernel


def _select_group(c: Constraint, m: jax.Array) -> Optional[tuple]:
    """The key of the leaves whose selections one ``vmap`` computes together: K-sparse leaves
    with K < n on a threshold path (:data:`sfw_jax.fw.topk.THRESHOLD_METHODS`), keyed by
    ``(shape, dtype, K, path)``; None for the others."""
    if not isinstance(c, KSparsePolytope):
        return None
    k = min(c.k, m.size)
    path = resolve_method(m.size, c.method)
    if k == m.size or path not in THRESHOLD_METHODS:
        return None
    return (m.shape, jnp.dtype(m.dtype), k, path)


def _native_eligible(c: Constraint, g: Any, m: Any, x: Any) -> bool:
    """Leaves the native CPU kernel handles: K-sparse with K < n, float32 (any top-k method: the
    kernel's selection is the same exact top-k)."""
    if not isinstance(c, KSparsePolytope):
        return False
    if any(jnp.dtype(a.dtype) != jnp.float32 for a in (g, m, x)):
        return False
    return min(c.k, x.size) < x.size


def check_rescale(rescale: Any) -> str:
    """``rescale`` in its canonical spelling (:data:`RESCALES`; None -> ``'none'``); ValueError
    otherwise."""
    if rescale is None:
        return "none"
    if rescale not in RESCALES:
        raise ValueError(f"rescale must be one of {RESCALES} (or None for 'none'), "
                         f"got {rescale!r}")
    return rescale


def sfw(learning_rate: Union[float, jax.Array, optax.Schedule], constraints: PyTree, *,
        momentum: Union[float, jax.Array] = 0.9,
        rescale: Optional[str] = "gradient",
        cpu_kernel: Optional[bool] = None,
        batch_select: Optional[bool] = None,
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
        K-sparse leaf with K < n by one call to the native kernel of :mod:`sfw_jax.fw.native`
        (built on first use with the system C++ compiler; x86-64). Same m and selection as the
        XLA path; the norms are summed in another order, so eta may differ in its last bits.
        Other platforms, and other leaves, use the XLA path. None (default): the kernel when
        ``jax.default_backend()`` is the CPU and the kernel builds and loads here (faster per
        update than the XLA path: ``benchmarks/bench_update.py``); where it cannot, one
        ``RuntimeWarning`` per process names the reason and the XLA path is used; on other
        backends the XLA path, nothing built. True: the kernel on the CPU,
        :class:`sfw_jax.fw.native.NativeKernelError` here if it cannot be built. False: the
        XLA path.
      batch_select: on the XLA path, compute the top-k selections (t, cut) of same-shaped
        K-sparse leaves (same shape, dtype, K and top-k method, K < n, a threshold method) by
        one ``vmap`` over their stacked momenta instead of one call per leaf (bitwise the same
        result). None (default): :data:`BATCH_SELECT` for ``jax.default_backend()`` (off on
        the CPU, on elsewhere).
      unconstrained: the transformation of the leaves whose constraint is ``Unconstrained()``
        (e.g. ``optax.sgd(0.1, momentum=0.9)``), routed with ``optax.partition`` under the
        labels :data:`SFW_LABEL` / :data:`UNCONSTRAINED_LABEL`. ``optax.identity()`` passes the
        incoming update through. None (default): such a leaf is a ValueError naming it at
        ``init`` / ``update``, unless it arrives as ``optax.MaskedNode`` (an enclosing
        ``optax.partition`` routes it elsewhere).

    ``cpu_kernel=None``, ``batch_select=None`` and the top-k ``method='auto'`` of the
    constraints are resolved for ``jax.default_backend()`` (the first two when ``sfw`` is
    called, the method when the update is traced).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(updates, state, params)`` requires
      ``params``. Its state is an :class:`SFWState` (with ``unconstrained``: the
      ``optax.PartitionState`` of the two branches). Works with ``optax.inject_hyperparams(sfw,
      static_args=('constraints', 'rescale'))`` (learning_rate and momentum may then be traced
      arrays), inside ``optax.chain``, ``optax.partition``, ``optax.masked`` and
      ``optax.apply_if_finite``.
    """
    rescale = check_rescale(rescale)
    for name, flag in (("cpu_kernel", cpu_kernel), ("batch_select", batch_select)):
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"{name} must be None, True or False, got {flag!r}")
    if not callable(learning_rate):
        _check_scalar_hparam(learning_rate, "learning_rate", 0.0, math.inf, True)
    _check_scalar_hparam(momentum, "momentum", 0.0, 1.0, True)
    c_leaves = jax.tree.leaves(constraints, is_leaf=is_constraint)
    bad = [c for c in c_leaves if not is_constraint(c)]
    if bad:
        raise ValueError(f"constraints must be a pytree whose leaves are constraint objects "
                         f"(KSparsePolytope, LpBall, KSupportNormBall, NMSparsePolytope, "
                         f"Unconstrained, ...); got a leaf {bad[0]!r}")
    # (no K-sparse leaf: nothing for the kernel, so 'auto' neither builds it nor warns)
    use_kernel = ((cpu_kernel is not None or any(isinstance(c, KSparsePolytope) for c in c_leaves))
                  and uses_cpu_kernel(cpu_kernel))
    if batch_select is None:
        batch_select = BATCH_SELECT.get(backend_name(), BATCH_SELECT["default"])

    def init_fn(params):
        params = _unbox(params)
        _check_structure(constraints, params, "params")
        check_routed(constraints, params, "init")

        def init_leaf(c, x):
            if _is_masked(x):
                return x
            if not c.constrained:
                return jnp.zeros((0,), jnp.float32)
            return jnp.zeros_like(x)

        momentum_tree = jax.tree.map(init_leaf, constraints, params, is_leaf=is_constraint)
        return SFWState(count=jnp.zeros([], jnp.int32), momentum=momentum_tree)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(optax.NO_PARAMS_MSG if hasattr(optax, "NO_PARAMS_MSG") else
                             "You are using a transformation that requires the current value of "
                             "parameters, but you are not passing `params` when calling `update`.")
        _check_structure(constraints, params, "params")
        _check_structure(constraints, updates, "updates")
        check_routed(constraints, updates, "update")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

        cdef = jax.tree.structure(constraints, is_leaf=is_constraint)
        cs = cdef.flatten_up_to(constraints)
        gs, ms, xs = (cdef.flatten_up_to(t) for t in (updates, state.momentum, params))
        out_u, out_m = list(gs), list(ms)          # unconstrained / masked leaves pass through
        live = [i for i, (c, g) in enumerate(zip(cs, gs)) if c.constrained and not _is_masked(g)]
        sels, sqs = {}, {}

        def direction(i, m, sel):
            acc = _acc_dtype(xs[i])
            return cs[i].lmo_vertex(m, sel).astype(acc) - xs[i].astype(acc)

        def momentum_of(i):
            return _leaf_momentum(gs[i], ms[i], xs[i], state.count, momentum)

        # materialise the (small) selections: otherwise XLA recomputes their scalar arithmetic
        # for every entry of the fused vertex loops
        barrier = jax.lax.optimization_barrier
        groups: dict[tuple, list[int]] = {}
        for i in live:                                   # trace-time walk over the leaves
            if use_kernel and _native_eligible(cs[i], gs[i], ms[i], xs[i]):
                k = min(cs[i].k, xs[i].size)
                # the branch off the CPU needs a (t, cut) selection, as the kernel's
                path = resolve_method(xs[i].size, cs[i].method, "default")
                path = path if path in THRESHOLD_METHODS else "bisect"

                def on_cpu(i=i):
                    m, sel, sq_m, sq_d = native.sfw_select_f32(
                        gs[i], ms[i], xs[i], state.count, jnp.asarray(momentum, jnp.float32),
                        k, cs[i].radius)
                    return m, sel, (sq_m, sq_d)

                def elsewhere(i=i, k=k, path=path):
                    m = momentum_of(i)
                    sel = barrier(top_k_threshold(jax.lax.stop_gradient(m), k, absolute=True,
                                                  method=path))
                    return m, sel, _sq_norms(m, direction(i, m, sel))

                out_m[i], sels[i], sq = jax.lax.platform_dependent(cpu=on_cpu,
                                                                   default=elsewhere)
                sqs[i] = lambda sq=sq: sq
                continue
            out_m[i] = momentum_of(i)
            key = _select_group(cs[i], out_m[i]) if batch_select else None
            if key is None:
                sels[i] = barrier(cs[i].lmo_select(out_m[i]))
            else:
                groups.setdefault(key, []).append(i)
            sqs[i] = lambda i=i: _sq_norms(out_m[i], direction(i, out_m[i], sels[i]))
        for idx in groups.values():
            if len(idx) == 1:
                sels[idx[0]] = barrier(cs[idx[0]].lmo_select(out_m[idx[0]]))
                continue
            # one selection for the group: the K, method and shape are shared (the radius,
            # which differs, only enters the vertex)
            t, cut = barrier(jax.vmap(cs[idx[0]].lmo_select)(jnp.stack([out_m[i] for i in idx])))
            for j, i in enumerate(idx):
                sels[i] = (t[j], cut[j])

        if live:
            acc = jnp.result_type(*[_acc_dtype(xs[i]) for i in live])
            eta = _step_sizes([cs[i] for i in live], [sqs[i] for i in live], acc, lr, rescale)
            for j, i in enumerate(live):
                # The vertex is rebuilt from (m, selection) behind an optimization barrier, so
                # XLA cannot merge it with the norm's copy and fuses it into the update loop
                # (measured faster; the norm's copy is still written on XLA:CPU).
                m_i, sel_i = jax.lax.optimization_barrier((out_m[i], sels[i]))
                d = direction(i, m_i, sel_i)
                out_u[i] = (eta[j].astype(d.dtype) * d).astype(xs[i].dtype)
        new_updates = cdef.unflatten(out_u)
        new_momentum = cdef.unflatten(out_m)
        count = optax.safe_int32_increment(state.count)
        return new_updates, SFWState(count=count, momentum=new_momentum)

    return route_unconstrained(optax.GradientTransformationExtraArgs(init_fn, update_fn),
                               constraints, unconstrained)


def check_routed(constraints: PyTree, tree: PyTree, where: str) -> None:
    """ValueError naming the first leaf of ``tree`` whose constraint is ``Unconstrained()`` and
    that is not an ``optax.MaskedNode``: SFW has no step for it (module docstring)."""
    flat = jax.tree_util.tree_flatten_with_path(constraints, is_leaf=is_constraint)[0]
    leaves = jax.tree.structure(constraints, is_leaf=is_constraint).flatten_up_to(tree)
    for (path, c), x in zip(flat, leaves):
        if not c.constrained and not _is_masked(x):
            raise ValueError(
                f"sfw {where}: leaf {path_str(path)!r} is Unconstrained() and sfw has no "
                f"transformation for it; pass unconstrained=... (e.g. optax.sgd(0.1); "
                f"optax.identity() passes the incoming update through) or route the leaf to "
                f"another optimizer with optax.partition")


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
