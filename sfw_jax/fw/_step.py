"""The Frank-Wolfe step rule, written once for :func:`sfw_jax.sfw` and :func:`sfw_jax.frank_wolfe`.

For a constrained leaf x with set C, direction d (in the dtype of x) and learning rate lr_t:

    v      = LMO_C(d) = argmin_{v in C} <v, d>
    eta    = clip(lr_t * factor, 0, 1),  factor = ||d||_2 / ||x - v||_2     ('gradient')
                                                   ||d||_2 / (diam(C) / 2)   ('fast_gradient')
                                                   1 / diam(C)               ('diameter')
                                                   1                         ('none')
    update = eta (v - x)         so that  optax.apply_updates gives  x <- (1 - eta) x + eta v,

and the reference momentum m_0 = g, m_t = mu m_{t-1} + (1 - mu) g (:func:`leaf_momentum`).

The LMO runs in two phases (``Constraint.lmo_select`` -> a small selection such as a top-k
threshold, then ``Constraint.lmo_vertex`` elementwise), so the vertex is rebuilt inside the loops
that use it instead of being written to memory (``benchmarks/bench_update.py`` times it); the
step sizes of all leaves are one [L] vector (:func:`step_sizes`); with ``batch_select`` the
selections of the leaves whose sets give equal ``Constraint.batch_key`` are one ``vmap``
(:func:`selections`; fewer ops per update: ``benchmarks/op_count.py``).

With ``tree_select`` the leaves whose LMO is the K-sparse sign vertex with K < n
(``Constraint.sign_top_k``) are selected by one search of the segmented engine over all of them,
whatever their shapes (:mod:`sfw_jax.fw.segtopk`: the vertices of their per-leaf selections),
and their two squared norms are summed on the same flat view (:func:`tree_front`): a fixed
number of ops for the whole tree instead of a few per leaf, in another summation order than
the per-leaf sums (eta may differ in its last bits).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from sfw_jax._tree import PyTree, path_str
from sfw_jax.fw import segtopk
from sfw_jax.fw._checks import acc_dtype
from sfw_jax.fw._constraints import check_constraints_match
from sfw_jax.fw._lmo import k_sparse_vertex
from sfw_jax.fw._sets import Constraint, is_constraint
from sfw_jax.fw.topk import backend_name

RESCALES = ("gradient", "fast_gradient", "diameter", "none")
"""The step-size rules of the module docstring. ``'none'`` (factor 1) is the spelling of configs
and command lines; :func:`sfw_jax.sfw` and :func:`sfw_jax.frank_wolfe` also accept ``None``."""

#: Whether the selections of same-shaped leaves are computed together (``batch_select=None``),
#: per backend (``'default'``: every backend not listed). CPU: off, because on XLA:CPU the
#: stacked copy of the directions, and a vmapped 'search' whose conditionals then run both
#: branches, cost more than the calls saved (``benchmarks/bench_update.py --interleaved``).
#: Other backends: on, one set of selection ops per group of same-shaped leaves instead of one
#: per leaf (``benchmarks/op_count.py`` counts them).
BATCH_SELECT: dict[str, bool] = {"cpu": False, "default": True}

#: Whether the selections (and norms) of the K-sparse leaves are one segmented search over the
#: whole tree (``tree_select=None``), per backend. CPU: off (the native kernel is the CPU's
#: default, and the per-leaf XLA path keeps its numerics there). Other backends: on, for the
#: op count of the compiled update (``benchmarks/op_count.py``: ``sfw_accelerator_default``,
#: 229 ops, 1.85x SGD's, against 1,605 with the per-shape batching of 'bisect'); the device
#: suite's ``update`` section times both on a GPU.
TREE_SELECT: dict[str, bool] = {"cpu": False, "default": True}


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

def check_rescale(rescale: Any) -> str:
    """``rescale`` in its canonical spelling (:data:`RESCALES`; None -> ``'none'``); ValueError
    otherwise."""
    if rescale is None:
        return "none"
    if rescale not in RESCALES:
        raise ValueError(f"rescale must be one of {RESCALES} (or None for 'none'), "
                         f"got {rescale!r}")
    return rescale


def check_scalar_hparam(value: Any, name: str, lo: float, hi: float, hi_open: bool) -> None:
    """Validate a concrete Python number (traced arrays from inject_hyperparams pass through)."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        v = float(value)
        ok = math.isfinite(v) and lo <= v and (v < hi if hi_open else v <= hi)
        if not ok:
            bracket = ")" if hi_open else "]"
            raise ValueError(f"{name} must be a finite number in [{lo}, {hi}{bracket}, "
                             f"got {value!r}")


def check_learning_rate(learning_rate: Any) -> None:
    """lr >= 0 where it is a concrete number (a schedule or a traced array passes)."""
    if not callable(learning_rate):
        check_scalar_hparam(learning_rate, "learning_rate", 0.0, math.inf, True)


def constraint_leaves(constraints: PyTree) -> list[Constraint]:
    """The leaves of ``constraints``; ValueError naming the first one that is not a set."""
    leaves = jax.tree.leaves(constraints, is_leaf=is_constraint)
    bad = [c for c in leaves if not is_constraint(c)]
    if bad:
        raise ValueError(f"constraints must be a pytree whose leaves are constraint objects "
                         f"(KSparsePolytope, LpBall, KSupportNormBall, NMSparsePolytope, "
                         f"Unconstrained, ...); got a leaf {bad[0]!r}")
    return leaves


def resolve_batch_select(batch_select: Optional[bool]) -> bool:
    """``batch_select``, or :data:`BATCH_SELECT` of ``jax.default_backend()`` for None."""
    if batch_select is None:
        return BATCH_SELECT.get(backend_name(), BATCH_SELECT["default"])
    return batch_select


def resolve_tree_select(tree_select: Optional[bool]) -> bool:
    """``tree_select``, or :data:`TREE_SELECT` of ``jax.default_backend()`` for None."""
    if tree_select is None:
        return TREE_SELECT.get(backend_name(), TREE_SELECT["default"])
    return tree_select


def require_params(params: Any, name: str) -> None:
    """ValueError when the ``update`` of transformation ``name`` is called without ``params``."""
    if params is None:
        raise ValueError(f"{name} needs the current params: call update(updates, state, "
                         f"params)")


# ---------------------------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------------------------

def is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _is_variable(x: Any) -> bool:
    """Boxed variables (e.g. ``flax.nnx.Param``), duck-typed so flax is not imported."""
    return hasattr(x, "get_value") and hasattr(x, "get_metadata")


def unbox(tree: PyTree) -> PyTree:
    """Plain arrays for boxed variables: ``nnx.Optimizer`` inits with ``nnx.Param`` leaves and
    updates with the pure arrays."""
    return jax.tree.map(lambda x: x.get_value() if _is_variable(x) else x, tree,
                        is_leaf=_is_variable)


def check_routed(constraints: PyTree, tree: PyTree, where: str, remedy: str) -> None:
    """ValueError naming the first leaf of ``tree`` whose constraint is ``Unconstrained()`` and
    that is not an ``optax.MaskedNode`` (a Frank-Wolfe step has no update for it: its raw
    direction must never be added to the parameter). ``where``: e.g. ``'sfw init'``;
    ``remedy``: what the caller can do, ending the message."""
    flat = jax.tree_util.tree_flatten_with_path(constraints, is_leaf=is_constraint)[0]
    leaves = jax.tree.structure(constraints, is_leaf=is_constraint).flatten_up_to(tree)
    for (path, c), x in zip(flat, leaves):
        if not c.constrained and not is_masked(x):
            name = where.split()[0]
            raise ValueError(f"{where}: leaf {path_str(path)!r} is Unconstrained() and {name} "
                             f"has no transformation for it; {remedy}")


def live_leaves(constraints: PyTree, updates: PyTree, params: PyTree, where: str, remedy: str):
    """``(treedef, sets, updates, params, live)``: the flat lists of the constraint tree's
    leaves and ``live``, the positions of the constrained leaves that are not
    ``optax.MaskedNode`` (after checking the structures and the routing)."""
    check_constraints_match(constraints, params, "params")
    check_constraints_match(constraints, updates, "updates")
    check_routed(constraints, updates, where, remedy)
    cdef = jax.tree.structure(constraints, is_leaf=is_constraint)
    cs = cdef.flatten_up_to(constraints)
    gs, xs = cdef.flatten_up_to(updates), cdef.flatten_up_to(params)
    live = [i for i, (c, g) in enumerate(zip(cs, gs)) if c.constrained and not is_masked(g)]
    return cdef, cs, gs, xs, live


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------

def safe_sqrt(sq: jax.Array) -> jax.Array:
    """sqrt with a finite derivative at 0 (the value there is 0; SFW-Init differentiates
    through the step)."""
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1)), 0)


def leaf_momentum(g: jax.Array, m_prev: jax.Array, x: jax.Array, count: jax.Array,
                  momentum: jax.Array) -> jax.Array:
    """m_t for one leaf in the dtype of ``x``: g at count 0, else mu m_prev + (1 - mu) g
    (computed in float32, float64 for float64 ``x``)."""
    acc = acc_dtype(x)
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


def sq_norms(d: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(||d||^2, ||e||^2), e = v - x, in the dtype of ``e``, as two separate sums (XLA:CPU runs
    one variadic reduction of both more slowly)."""
    return _sum_sq(d.astype(e.dtype)), _sum_sq(e)


def direction(c: Constraint, d: jax.Array, selection: Any, x: jax.Array) -> jax.Array:
    """v - x in the accumulation dtype of ``x``, v = ``c.lmo_vertex(d, selection)``."""
    acc = acc_dtype(x)
    return c.lmo_vertex(d, selection).astype(acc) - x.astype(acc)


def step_sizes(cs: Sequence[Constraint], sq: Sequence[Callable[[], tuple]], acc: Any, lr: Any,
               rescale: str) -> jax.Array:
    """eta_i = clip(lr * factor_i, 0, 1) for all leaves at once ([L] vector); ``sq`` is a list of
    ``(||d_i||^2, ||v_i - x_i||^2)`` thunks (called for 'gradient' and 'fast_gradient' only),
    ``acc`` the result dtype.

    The per-leaf scalars are stacked so that the factor arithmetic is one small fused op rather
    than a chain of scalar ops per leaf (each a separate kernel launch on XLA:CPU)."""
    if rescale == "gradient":
        sq = [f() for f in sq]
        sq_d = jnp.stack([s[0].astype(acc) for s in sq])
        sq_e = jnp.stack([s[1].astype(acc) for s in sq])
        # v = x: any eta is a no-op; divide by 1 there
        factor = safe_sqrt(sq_d) / jnp.where(sq_e > 0, safe_sqrt(sq_e), 1)
    elif rescale == "fast_gradient":
        # ||v - x||^2 is not read: XLA drops its reduction (the native kernel returns it anyway)
        sq_d = jnp.stack([f()[0].astype(acc) for f in sq])
        factor = safe_sqrt(sq_d) / jnp.asarray([c.diameter / 2 for c in cs], acc)
    elif rescale == "diameter":
        factor = jnp.asarray([1.0 / c.diameter for c in cs], acc)
    else:
        factor = jnp.ones((len(cs),), acc)
    return jnp.clip(jnp.asarray(lr, acc) * factor, 0, 1)


def selections(cs: Sequence[Constraint], ds: Sequence[jax.Array], batch_select: bool,
               skip: Any = ()) -> list:
    """``c.lmo_select(d)`` of every leaf not in ``skip`` (None there), each materialised behind
    an optimization barrier (otherwise XLA recomputes their scalar arithmetic for every entry of
    the fused vertex loops). With ``batch_select``, the leaves whose sets are of one class and
    give one ``batch_key(d)`` are selected by one ``vmap`` of the first one's ``lmo_select``
    over their stacked directions (bitwise the per-leaf selections)."""
    barrier = jax.lax.optimization_barrier
    sels: list = [None] * len(cs)
    groups: dict[tuple, list[int]] = {}
    for i, (c, d) in enumerate(zip(cs, ds)):
        if i in skip:
            continue
        key = c.batch_key(d) if batch_select else None
        if key is None:
            sels[i] = barrier(c.lmo_select(d))
        else:
            groups.setdefault((type(c), key), []).append(i)
    for idx in groups.values():
        if len(idx) == 1:
            sels[idx[0]] = barrier(cs[idx[0]].lmo_select(ds[idx[0]]))
            continue
        stacked = barrier(jax.vmap(cs[idx[0]].lmo_select)(jnp.stack([ds[i] for i in idx])))
        for j, i in enumerate(idx):
            sels[i] = jax.tree.map(lambda a, j=j: a[j], stacked)
    return sels


def _tree_k(c: Constraint, d: jax.Array) -> Optional[int]:
    """K of a leaf the segmented search can select (the K-sparse sign vertex, K < n), else
    None."""
    spec = c.sign_top_k()
    if spec is None or min(spec.k, d.size) >= d.size:
        return None
    return min(spec.k, d.size)


def tree_front(cs: Sequence[Constraint], ds: Sequence[jax.Array], xs: Sequence[jax.Array],
               idx: Sequence[int]) -> dict[int, tuple]:
    """Position -> ``(selection, (||d||^2, ||v - x||^2))`` of the leaves ``idx`` (each with
    :func:`_tree_k`), per dtype one segmented search over all of them: the keys of ``|d|``,
    ``d`` and ``x`` laid out as one :func:`sfw_jax.fw.segtopk.blocks` view (a segment per
    leaf), the ``(t, cut)`` of every leaf from :func:`sfw_jax.fw.segtopk.select` (the mask
    of ``top_k_threshold(d, K, absolute=True)``), the vertex ``-r sign(d)`` on it
    (:func:`sfw_jax.fw._lmo.k_sparse_vertex`, per block) and both squared norms as
    :func:`sfw_jax.fw.segtopk.segment_totals` (padding is 0 in ``d``, ``x`` and ``v``)."""
    by_dtype: dict[Any, list[int]] = {}
    for i in idx:
        by_dtype.setdefault(jnp.dtype(ds[i].dtype), []).append(i)
    out = {}
    for dtype, group in by_dtype.items():
        lay = segtopk.make_layout([ds[i].size for i in group])
        db = segtopk.blocks([ds[i] for i in group], lay)
        xb = segtopk.blocks([xs[i] for i in group], lay)
        valid = segtopk.positions(lay) < segtopk.per_block(
            jnp.asarray(lay.segment_sizes, jnp.int32), lay)
        keys = segtopk.float_keys(jax.lax.stop_gradient(db), absolute=True).reshape(db.shape)
        kb = jnp.where(valid, keys, 0)                 # padding: key 0, below every entry
        t, cut = segtopk.select(kb, jnp.asarray([_tree_k(cs[i], ds[i]) for i in group]), lay)
        radius = jnp.asarray([cs[i].sign_top_k().radius for i in group], dtype)
        v = k_sparse_vertex(db, segtopk.block_selected(kb, t, cut, lay),
                            segtopk.per_block(radius, lay))
        acc = acc_dtype(xb)
        e = v.astype(acc) - xb.astype(acc)
        sq_d = segtopk.segment_totals(jnp.square(db.astype(acc)), lay)
        sq_e = segtopk.segment_totals(jnp.square(e), lay)
        # materialised, as every selection (module docstring of selections)
        t, cut = jax.lax.optimization_barrier((segtopk.from_key(t, segtopk.key_space(dtype)),
                                               cut))
        for j, i in enumerate(group):
            out[i] = ((t[j], cut[j]), (sq_d[j], sq_e[j]))
    return out


def fw_updates(cs: Sequence[Constraint], ds: Sequence[jax.Array], xs: Sequence[jax.Array],
               lr: Any, rescale: str, batch_select: bool,
               fused: Optional[dict[int, tuple]] = None,
               tree_select: bool = False) -> list[jax.Array]:
    """``[eta_i (v_i - x_i)]`` (dtype of x_i) for constrained leaves with sets ``cs``,
    directions ``ds`` (dtype of x_i) and params ``xs`` (module docstring). ``fused``: position
    -> ``(selection, (||d||^2, ||v - x||^2))`` computed elsewhere (:func:`sfw_jax.sfw`'s native
    CPU kernel); ``tree_select``: the other K-sparse leaves through :func:`tree_front`."""
    fused = dict(fused or {})
    if tree_select:
        fused.update(tree_front(cs, ds, xs, [i for i in range(len(cs))
                                             if i not in fused and _tree_k(cs[i], ds[i])]))
    sels = selections(cs, ds, batch_select, skip=fused)
    for i, (sel, _) in fused.items():
        sels[i] = sel

    def sq(i):
        if i in fused:
            return lambda: fused[i][1]
        return lambda: sq_norms(ds[i], direction(cs[i], ds[i], sels[i], xs[i]))

    acc = jnp.result_type(*[acc_dtype(x) for x in xs])
    eta = step_sizes(cs, [sq(i) for i in range(len(cs))], acc, lr, rescale)
    out = []
    for j, (c, x) in enumerate(zip(cs, xs)):
        # The vertex is rebuilt from (d, selection) behind an optimization barrier, so XLA
        # cannot merge it with the norm's copy and fuses it into the update loop (measured
        # faster; the norm's copy is still written on XLA:CPU).
        d_j, sel_j = jax.lax.optimization_barrier((ds[j], sels[j]))
        e = direction(c, d_j, sel_j, x)
        out.append((eta[j].astype(e.dtype) * e).astype(x.dtype))
    return out
