"""Constraints for a whole parameter pytree: ``make_constraints`` and its E||W_init||.

Construction follows the reference implementation (Lu et al., 2022, built on Pokutta et al.'s
SFW code): every selected leaf gets a set of the kind named by ``kind`` (the registry of
:mod:`sfw_jax.fw._registry`; the sets are in :mod:`sfw_jax.fw._sets`), whose size is given by
``mode``: its radius r = value ('radius'), its L2 diameter D = value ('diameter'), or
D = 2 * value * E||W_init||_2 of that tensor's initializer ('initialization', the reference's
default; :func:`expected_init_norms`).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sfw_jax._selectors import Selector, select_leaves
from sfw_jax._tree import PyTree, path_str
from sfw_jax.fw._checks import check_int, check_positive_finite
from sfw_jax.fw._registry import KINDS, BuildOptions, constraint_kind
from sfw_jax.fw._sets import (Constraint, KSparsePolytope, KSupportNormBall, LpBall,
                              NMSparsePolytope, Unconstrained, is_constraint, sparsity_k)

MODES = ("radius", "diameter", "initialization")
"""How ``value`` sizes each set (see the module docstring)."""

__all__ = [
    "MODES", "INIT_NORM_RULES", "KINDS", "make_constraints", "expected_init_norms",
    "check_constraints_match", "make_feasible", "contains_all", "Constraint", "KSparsePolytope",
    "KSupportNormBall", "LpBall", "NMSparsePolytope", "Unconstrained", "is_constraint",
    "sparsity_k",
]


INIT_NORM_RULES = ("reference", "per_leaf")
"""How :func:`expected_init_norms` assigns E||W_init||_2 to a leaf (see there)."""


def _container_order(tree: Any) -> list[tuple]:
    """Paths (tuples of dict keys / sequence indices) of ``tree``'s leaves in the order the
    containers themselves list them (a dict's insertion order), not jax's sorted-key order.
    Flax's ``model.init`` inserts modules in the order they are first called."""
    out: list[tuple] = []

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for key, child in node.items():
                walk(child, prefix + (key,))
        elif isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
            for i, child in enumerate(node):
                walk(child, prefix + (i,))
        else:
            out.append(prefix)

    walk(tree, ())
    return out


def _raw_path(path: tuple) -> tuple:
    """A jax key path as the raw keys ``_container_order`` uses."""
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)


@functools.partial(jax.jit, static_argnums=0)
def _mean_norms(init_fn: Callable[[jax.Array], PyTree], keys: jax.Array) -> PyTree:
    """Mean over ``keys`` of each leaf's L2 norm in ``init_fn(key)`` (sequential draws)."""
    def one(key):
        return jax.tree.map(lambda w: jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)))),
                            init_fn(key))
    return jax.tree.map(lambda a: jnp.mean(a, axis=0), jax.lax.map(one, keys))


def expected_init_norms(init_fn: Callable[[jax.Array], PyTree], rng: jax.Array,
                        n_samples: int = 100, *, zero_norm: float = 1.0,
                        rule: str = "reference") -> PyTree:
    """E||W_init||_2 for each leaf of ``init_fn(key)``, averaged over ``n_samples`` draws.

    ``init_fn(key) -> params`` is the model's own initializer (e.g.
    ``lambda key: model.init(key, x)['params']``). Each leaf's mean norm over the draws is
    computed first; a mean of 0 (zero-initialized biases, BatchNorm bias) becomes ``zero_norm``
    (1.0, the reference's fallback). Then ``rule`` decides what each leaf gets:

    * ``'reference'`` (default): the reference implementation's table keyed by tensor *shape*.
      Walking the leaves in the order the modules are defined (the order ``init_fn``'s dicts
      list them; flax's ``model.init`` lists modules in the order they are first called, which
      for this package's models is the reference models' ``model.modules()`` order), each leaf
      writes its value into ``table[shape]``; every leaf then gets ``table[its shape]``, i.e. the
      value of the *last* leaf of that shape. So a BatchNorm scale (mean norm sqrt(C)) shares
      the value of the BatchNorm bias that follows it (0 -> 1.0): D = 2 tau for both. PyTorch
      stores conv/dense weights transposed relative to Flax; the transposition is the same for
      every tensor of one rank, so keying by the Flax shape groups the same tensors.
    * ``'per_leaf'``: each leaf keeps its own mean norm (a BatchNorm scale of C channels gets
      sqrt(C), so its K-sparse radius is sqrt(C) times the reference's; with tau = 15 this makes
      ResNet-18 diverge in its first SFW steps, see docs/reference-semantics.md).

    Draws run sequentially under one jit (``lax.map``), so memory is that of one draw.
    Returns a pytree of Python floats like ``init_fn(key)`` (jax's container order).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    check_positive_finite(zero_norm, "zero_norm")
    if rule not in INIT_NORM_RULES:
        raise ValueError(f"rule must be one of {INIT_NORM_RULES}, got {rule!r}")

    norms = _mean_norms(init_fn, jax.random.split(rng, int(n_samples)))
    norms = jax.tree.map(lambda v: float(v) if float(v) > 0 else float(zero_norm), norms)
    if rule == "per_leaf":
        return norms

    order: list[list[tuple]] = []

    def probe(key):
        params = init_fn(key)
        order.append(_container_order(params))         # trace-time record, not an output
        return params

    shapes = jax.eval_shape(probe, rng)
    flat = {_raw_path(p): (v, np.shape(s)) for (p, v), s in zip(
        jax.tree_util.tree_flatten_with_path(norms)[0], jax.tree.leaves(shapes))}
    sequence = order[0] if order and set(order[0]) == set(flat) else list(flat)
    table = {}
    for path in sequence:
        value, shape = flat[path]
        table[shape] = value
    return jax.tree_util.tree_map_with_path(
        lambda p, v: table[flat[_raw_path(p)][1]], norms)


def make_constraints(params: PyTree, kind: str, *, k: int = 10, k_frac: float = 0.05,
                     value: float = 15.0, mode: str = "initialization",
                     init_norms: Optional[PyTree] = None, where: Selector = None,
                     p: float = 2.0, method: str = "auto", n: int = 2, m: int = 4,
                     axis: int = -2, fallback: Any = Unconstrained()) -> PyTree:
    """A pytree like ``params`` of constraint objects, one per leaf.

    Args:
      params: parameter pytree (arrays or ShapeDtypeStructs).
      kind: a registered kind (:data:`KINDS`): 'k_sparse' (KSparsePolytope), 'l1', 'l2',
        'linf', 'lp' (LpBall with order ``p``), 'k_support' (KSupportNormBall), 'nm_sparse'
        (NMSparsePolytope), 'unconstrained', or one added with
        :func:`sfw_jax.register_constraint`.
      k, k_frac: per leaf K = min(max(k, floor(k_frac * n)), n) for 'k_sparse' and 'k_support'.
      value: the radius ('radius' mode), the L2 diameter ('diameter' mode) or tau in
        'initialization' mode, where D = 2 * tau * init_norm of the leaf.
      mode: 'radius', 'diameter' or 'initialization'.
      init_norms: pytree of floats like params (see :func:`expected_init_norms`); required in
        'initialization' mode.
      where: which leaves get constraints: bool pytree or predicate ``(path, leaf) -> bool``
        (e.g. :func:`sfw_jax.is_kernel`); the rest get ``Unconstrained()``. Default: every leaf
        (the reference constrains all tensors, BatchNorm scale and bias included).
      p: order for kind 'lp'.
      method: top-k path for 'k_sparse' / 'k_support' LMOs.
      n, m, axis: for 'nm_sparse': n nonzeros in every group of m consecutive entries along
        ``axis`` (default -2, the input features of Flax Dense/Conv kernels). A selected leaf is
        eligible if it has rank >= 2 and its size along ``axis`` is a multiple of m
        (:func:`sfw_jax.fw._nm.nm_eligible`); it gets ``NMSparsePolytope`` with K = n * size / m
        nonzeros per vertex, so in 'diameter'/'initialization' mode r = D / (2 sqrt(K)).
      fallback: the constraint of the selected leaves the kind does not apply to (for
        'nm_sparse': biases, BatchNorm parameters, a first conv with 3 input channels): a
        constraint object used as is, or another kind name built per leaf from the same
        ``value``, ``mode``, ``k``, ``k_frac`` and ``p``. Default ``Unconstrained()`` (route such
        leaves with ``sfw(..., unconstrained=...)``).
    """
    entry = constraint_kind(kind)
    if not (is_constraint(fallback) or (fallback in KINDS and fallback != kind)):
        raise ValueError(f"fallback must be a constraint object or one of "
                         f"{tuple(x for x in KINDS if x != kind)}, got {fallback!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    k = check_int(k, "k")
    try:
        kf = float(k_frac)
    except (TypeError, ValueError):
        raise ValueError(f"k_frac must be a number in (0, 1], got {k_frac!r}") from None
    if not 0 < kf <= 1:
        raise ValueError(f"k_frac must be a number in (0, 1], got {k_frac!r}")
    check_positive_finite(value, "value")
    opts = BuildOptions(k=k, k_frac=kf, p=p, method=method, n=n, m=m, axis=axis)
    fallback_entry = None if is_constraint(fallback) else constraint_kind(fallback)
    for e in (entry, fallback_entry):
        if e is not None and e.check is not None:
            opts = e.check(opts)
    if not entry.bounded:
        return jax.tree.map(lambda leaf: entry.build(np.shape(leaf), opts, None, None), params)
    selected = select_leaves(params, where, lambda path, leaf: True, argname="where")
    if mode == "initialization":
        if init_norms is None:
            raise ValueError("mode='initialization' needs init_norms (a pytree of floats like "
                             "params, e.g. from expected_init_norms); got init_norms=None")
        if jax.tree.structure(init_norms) != jax.tree.structure(params):
            raise ValueError(
                f"init_norms must have the structure of params; got {jax.tree.structure(init_norms)},"
                f" expected {jax.tree.structure(params)}")
    else:
        init_norms = jax.tree.map(lambda _: 1.0, params)

    def scale(path, init_norm) -> tuple[Optional[float], Optional[float]]:
        """(radius, diameter) of a leaf's set: one of them a number, the other None."""
        if mode == "radius":
            return float(value), None
        if mode == "diameter":
            return None, float(value)
        norm = float(init_norm)
        if not math.isfinite(norm) or norm <= 0:
            raise ValueError(f"init_norms[{path_str(path)}] must be a finite number > 0, "
                             f"got {init_norm!r}")
        return None, 2.0 * float(value) * norm

    def build(path, leaf, sel, init_norm):
        shape = tuple(np.shape(leaf))
        if not sel or int(np.prod(shape)) == 0:
            return Unconstrained()
        radius, diameter = scale(path, init_norm)
        c = entry.build(shape, opts, radius, diameter)
        if c is not None:
            return c
        if fallback_entry is None:
            return fallback
        c = fallback_entry.build(shape, opts, radius, diameter)
        if c is None:
            raise ValueError(f"fallback kind {fallback!r} does not apply to leaf "
                             f"{path_str(path)!r} (shape {shape}) either")
        return c

    return jax.tree_util.tree_map_with_path(build, params, selected, init_norms)


def check_constraints_match(constraints: PyTree, tree: PyTree, what: str = "params") -> None:
    """ValueError unless ``constraints`` has the structure of ``tree`` (``optax.MaskedNode``
    entries of ``tree``, as seen inside ``optax.partition``/``optax.masked``, count as leaves)."""
    c_def = jax.tree.structure(constraints, is_leaf=is_constraint)
    t_def = jax.tree.structure(tree, is_leaf=lambda x: type(x).__name__ == "MaskedNode")
    if c_def != t_def:
        raise ValueError(
            f"constraints must be a pytree of constraint objects with the structure of {what}; "
            f"got {c_def}, expected {t_def}")


def make_feasible(params: PyTree, constraints: PyTree) -> PyTree:
    """Each leaf scaled into its set with ``shift_inside`` (x unchanged where already inside)."""
    check_constraints_match(constraints, params)
    return jax.tree.map(lambda c, x: c.shift_inside(x), constraints, params, is_leaf=is_constraint)


def contains_all(params: PyTree, constraints: PyTree) -> bool:
    """True iff every leaf lies in its set (within ``Constraint.contains`` tolerance)."""
    check_constraints_match(constraints, params)
    flags = jax.tree.map(lambda c, x: c.contains(x), constraints, params, is_leaf=is_constraint)
    return bool(all(bool(f) for f in jax.tree.leaves(flags)))
