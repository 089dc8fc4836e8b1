"""Constraint sets for Frank-Wolfe training, one per parameter tensor, and their construction.

Each constraint object is a frozen dataclass with static configuration (Python numbers only), so it
can sit as a *leaf* of a pytree shaped like the model parameters. All methods are pure and jit-able
in their array argument.

Sets (r = radius, n = tensor size):
  * ``KSparsePolytope(k, r)``: P_K(r) = {x : ||x||_inf <= r, ||x||_1 <= K r}, the convex hull of
    the K-sparse vectors with entries in {0, +-r}. L2 diameter 2 r sqrt(K).
  * ``LpBall(p, r, n)``: {x : ||x||_p <= r}. L2 diameter 2 r for p <= 2 and
    2 r n^(1/2 - 1/p) for p > 2 (needs n).
  * ``KSupportNormBall(k, r)``: conv{x : ||x||_0 <= k, ||x||_2 <= r}. L2 diameter 2 r.
  * ``NMSparsePolytope(n, m, r, size=, axis=)``: the product, over groups of m consecutive
    entries along ``axis``, of K-sparse polytopes with K = n (:mod:`sfw_jax.nm`); its vertices are
    N:M-sparse. L2 diameter 2 r sqrt(n size / m).
  * ``Unconstrained()``: R^n; SFW passes updates of such leaves through unchanged.

Construction for a whole model follows the reference implementation (Lu et al., 2022, built on
Pokutta et al.'s SFW code): per tensor K = min(max(k, floor(k_frac * n)), n) and, in
'initialization' mode, L2 diameter D = 2 * value * E||W_init||_2 of that tensor's initializer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sfw_jax import lmo as _lmo
from sfw_jax import nm as _nm
from sfw_jax import topk as _topk
from sfw_jax._tree import PyTree, Selector, path_str, select_leaves

KINDS = ("k_sparse", "l1", "l2", "linf", "lp", "k_support", "nm_sparse", "unconstrained")
MODES = ("radius", "diameter", "initialization")


def _rtol(dtype: Any) -> float:
    """Relative tolerance of ``contains`` for arrays of ``dtype``: max(1e-5, 8 eps)."""
    return max(1e-5, 8 * float(jnp.finfo(dtype).eps))


def _check_int_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) < 1:
        raise ValueError(f"{name} must be an int >= 1, got {k!r}")
    return int(k)


def _check_radius(radius: Any, name: str = "radius") -> float:
    _lmo.check_positive_finite(radius, name)
    return float(radius)


def _scale_inside(x: jax.Array, gauge: jax.Array, radius: float) -> jax.Array:
    """x * r / gauge(x) where gauge(x) > r, x elsewhere (in float32, cast back)."""
    acc = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    scale = jnp.where(gauge > radius, radius / jnp.where(gauge > 0, gauge, 1), 1)
    return (x.astype(acc) * scale.astype(acc)).astype(x.dtype)


class Constraint:
    """Interface of a constraint set C (see the module docstring)."""

    constrained: bool = True

    def lmo(self, g: jax.Array) -> jax.Array:  # pragma: no cover - interface
        """argmin_{v in C} <v, g>, same shape and dtype as g."""
        raise NotImplementedError

    def lmo_select(self, g: jax.Array):
        """First half of a two-phase LMO: a small pytree ``s`` from which
        :meth:`lmo_vertex` ``(g, s)`` rebuilds ``lmo(g)`` elementwise (so that XLA can fuse the
        vertex into each consumer instead of materialising it). Default: ``s`` is the vertex."""
        return self.lmo(g)

    def lmo_vertex(self, g: jax.Array, selection) -> jax.Array:
        """Second half of the two-phase LMO: ``lmo(g)`` from ``lmo_select(g)``."""
        del g
        return selection

    def gauge(self, x: jax.Array) -> jax.Array:  # pragma: no cover - interface
        """Minkowski gauge of C scaled so that x in C iff gauge(x) <= radius."""
        raise NotImplementedError

    @property
    def diameter(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def contains(self, x: jax.Array) -> jax.Array:
        """Bool scalar: gauge(x) <= radius * (1 + rtol), rtol = max(1e-5, 8 eps(dtype))."""
        return self.gauge(x) <= self.radius * (1 + _rtol(x.dtype))

    def shift_inside(self, x: jax.Array) -> jax.Array:
        """Scale x into C: x * r / gauge(x) if x is outside, else x (the reference's rule)."""
        return _scale_inside(x, self.gauge(x), self.radius)

    def project(self, x: jax.Array) -> jax.Array:
        """Euclidean projection onto C, where it is cheap (see each class)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no cheap Euclidean projection; use shift_inside")


@dataclasses.dataclass(frozen=True)
class _TopKSet(Constraint):
    """Shared fields of the sets whose LMO selects the k largest |g_i|: ``k``, ``radius`` and the
    exact top-k path ``method`` (:func:`sfw_jax.topk.top_k_mask`)."""

    k: int
    radius: float
    method: str = "auto"

    def __post_init__(self):
        _check_int_k(self.k)
        _check_radius(self.radius)


@dataclasses.dataclass(frozen=True)
class KSparsePolytope(_TopKSet):
    """P_K(r) = {x : ||x||_inf <= r, ||x||_1 <= K r}; LMO: -r sign(g) on the K largest |g_i|.

    ``method`` selects the exact top-k path (:func:`sfw_jax.topk.top_k_mask`).
    """

    @classmethod
    def from_diameter(cls, k: int, diameter: float, method: str = "auto") -> "KSparsePolytope":
        """The polytope with L2 diameter D: r = D / (2 sqrt(K))."""
        k = _check_int_k(k)
        d = _check_radius(diameter, "diameter")
        return cls(k, d / (2.0 * math.sqrt(k)), method)

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius * math.sqrt(self.k)

    def lmo(self, g: jax.Array) -> jax.Array:
        return _lmo.k_sparse_lmo(g, min(self.k, g.size), self.radius, method=self.method)

    def lmo_select(self, g: jax.Array):
        """The top-k threshold ``(t, cut)`` of ``|g|`` on the counting paths (see
        :func:`sfw_jax.topk.top_k_threshold`); the vertex itself on the 'sort' path.
        ``method='auto'`` is resolved for ``jax.default_backend()`` when this is traced
        (:func:`sfw_jax.topk.resolve_method`): to trace for another backend, name the method."""
        k = min(self.k, g.size)
        path = _topk.resolve_method(g.size, self.method)
        if k == g.size or path == "sort":
            return self.lmo(g)
        return _topk.top_k_threshold(jax.lax.stop_gradient(g), k, absolute=True, method=path)

    def lmo_vertex(self, g: jax.Array, selection) -> jax.Array:
        if not isinstance(selection, tuple):
            return selection
        t, cut = selection
        mask = _topk.threshold_mask(jax.lax.stop_gradient(g), t, cut, absolute=True)
        return _lmo.k_sparse_vertex(g, mask, self.radius)

    def gauge(self, x: jax.Array) -> jax.Array:
        """max(||x||_inf, ||x||_1 / K) (x in P_K(r) iff this is <= r)."""
        return _lmo.k_sparse_gauge(x, min(self.k, x.size))

    def shift_inside(self, x: jax.Array) -> jax.Array:
        """The reference's rescaling: if x is outside,
        x <- min(floor(||x||_1 / ||x||_inf), K) * r * x / ||x||_1, which lies in P_K(r)
        (its L_inf norm is <= r and its L1 norm is <= K r); x unchanged if inside."""
        acc = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
        a = jnp.abs(x.astype(acc))
        l1, linf = jnp.sum(a), jnp.max(a)
        k = min(self.k, x.size)
        outside = (l1 > self.radius * k) | (linf > self.radius)
        factor = jnp.minimum(jnp.floor(l1 / jnp.where(linf > 0, linf, 1)), k)
        scaled = x.astype(acc) * (factor * self.radius / jnp.where(l1 > 0, l1, 1))
        return jnp.where(outside, scaled, x.astype(acc)).astype(x.dtype)

    def project(self, x: jax.Array) -> jax.Array:
        """Exact Euclidean projection, sign(x) clip(|x| - lam, 0, r), one sort (O(n log n))."""
        return _lmo.project_k_sparse(x, min(self.k, x.size), self.radius)


@dataclasses.dataclass(frozen=True)
class NMSparsePolytope(Constraint):
    """P_{n:m}(r) = {x : ||x_g||_inf <= r, ||x_g||_1 <= n r for every group g of m consecutive
    entries along ``axis``}, the product of per-group K-sparse polytopes (K = n); its vertices are
    the N:M-sparse arrays with entries in {0, +-r} (:mod:`sfw_jax.nm`).

    LMO: -r sign(g) on the n largest |g_i| of every group (ties: lower index), 0 elsewhere.
    ``size`` is the number of entries of the tensor (``size / m`` groups, K = n size / m nonzeros
    per vertex); it sets the L2 diameter 2 r sqrt(K). ``axis`` (default -2, the input features of
    Flax Dense (in, out) and Conv (kh, kw, in, out) kernels) must be a valid axis of the tensor
    whose size is a multiple of m.
    """

    n: int
    m: int
    radius: float
    _: dataclasses.KW_ONLY
    size: int
    axis: int = -2

    def __post_init__(self):
        _nm.check_nm(self.n, self.m)
        _check_radius(self.radius)
        _check_int_k(self.size, "size")
        if self.size % self.m:
            raise ValueError(f"size must be a multiple of m={self.m} (the tensor size), "
                             f"got {self.size!r}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, numbers.Integral):
            raise ValueError(f"axis must be an int, got {self.axis!r}")

    @classmethod
    def from_diameter(cls, n: int, m: int, diameter: float, *, size: int,
                      axis: int = -2) -> "NMSparsePolytope":
        """The polytope with L2 diameter D: r = D / (2 sqrt(n size / m))."""
        n, m = _nm.check_nm(n, m)
        d = _check_radius(diameter, "diameter")
        size = _check_int_k(size, "size")
        return cls(n, m, d / (2.0 * math.sqrt(n * size / m)), size=size, axis=axis)

    @property
    def k(self) -> int:
        """Nonzeros of a vertex: K = n size / m."""
        return self.n * (self.size // self.m)

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius * math.sqrt(self.k)

    def lmo(self, g: jax.Array) -> jax.Array:
        return _nm.nm_sparse_lmo(g, self.n, self.m, self.radius, axis=self.axis)

    def lmo_select(self, g: jax.Array):
        """Nothing to precompute: every entry's selection needs only the m entries of its group
        (:func:`sfw_jax.nm.nm_top_mask`), so :meth:`lmo_vertex` rebuilds the vertex from ``g``
        inside each consumer's loop."""
        del g
        return ()

    def lmo_vertex(self, g: jax.Array, selection) -> jax.Array:
        del selection
        return self.lmo(g)

    def gauge(self, x: jax.Array) -> jax.Array:
        """max over groups of max(||x_g||_inf, ||x_g||_1 / n) (x in the set iff this is <= r)."""
        return _nm.nm_sparse_gauge(x, self.n, self.m, axis=self.axis)

    def shift_inside(self, x: jax.Array) -> jax.Array:
        """Every group outside its polytope scaled onto it (x_g r / gauge(x_g)); groups inside
        are unchanged (:func:`sfw_jax.nm.shift_inside_nm`)."""
        return _nm.shift_inside_nm(x, self.n, self.m, self.radius, axis=self.axis)

    def project(self, x: jax.Array) -> jax.Array:
        """Exact Euclidean projection: per group the K-sparse polytope's projection (K = n)."""
        return _nm.project_nm_sparse(x, self.n, self.m, self.radius, axis=self.axis)


@dataclasses.dataclass(frozen=True)
class LpBall(Constraint):
    """B_p(r) = {x : ||x||_p <= r}, p >= 1 (p = inf allowed); ``n`` (tensor size) is needed for
    the L2 diameter when p > 2. LMO by Hoelder's equality case (:func:`sfw_jax.lmo.lp_ball_lmo`)."""

    p: float
    radius: float
    n: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "p", _lmo.check_p(self.p))
        _check_radius(self.radius)
        if self.n is not None:
            _check_int_k(self.n, "n")

    @staticmethod
    def _l2_to_lp_ratio(p: float, n: Optional[int]) -> float:
        """max ||x||_2 over the unit L_p ball: 1 for p <= 2, n^(1/2 - 1/p) for p > 2."""
        if p <= 2:
            return 1.0
        if n is None:
            raise ValueError(f"the L2 diameter of an L_p ball with p={p} > 2 depends on the "
                             f"tensor size: pass n (got n=None)")
        return float(n) ** (0.5 - (0.0 if math.isinf(p) else 1.0 / p))

    @classmethod
    def from_diameter(cls, p: float, diameter: float, n: Optional[int] = None) -> "LpBall":
        """The ball with L2 diameter D: r = D/2 for p <= 2, r = (D/2) n^(1/p - 1/2) for p > 2."""
        p = _lmo.check_p(p)
        d = _check_radius(diameter, "diameter")
        return cls(p, d / 2.0 / cls._l2_to_lp_ratio(p, n), n)

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius * self._l2_to_lp_ratio(self.p, self.n)

    def lmo(self, g: jax.Array) -> jax.Array:
        return _lmo.lp_ball_lmo(g, self.p, self.radius)

    def gauge(self, x: jax.Array) -> jax.Array:
        return _lmo.lp_norm(x, self.p)

    def project(self, x: jax.Array) -> jax.Array:
        """Exact for p = 1 (Duchi et al. sort), p = 2 (scaling) and p = inf (clipping).
        Other p: NotImplementedError (no closed form; use shift_inside)."""
        if self.p == 2:
            return self.shift_inside(x)
        if math.isinf(self.p):
            return jnp.clip(x, -self.radius, self.radius).astype(x.dtype)
        if self.p == 1:
            return _lmo.project_l1_ball(x, self.radius)
        raise NotImplementedError(
            f"Euclidean projection onto the L_p ball has no closed form for p={self.p}; "
            f"use shift_inside")


@dataclasses.dataclass(frozen=True)
class KSupportNormBall(_TopKSet):
    """conv{x : ||x||_0 <= k, ||x||_2 <= r}; LMO: -r * (top-k part of g) / ||top-k part||_2.

    ``project`` is not provided: the Euclidean projection needs an O(n log n) search over two
    indices (Chatterjee et al.) that we do not implement; ``shift_inside`` scales by the norm.
    """

    @classmethod
    def from_diameter(cls, k: int, diameter: float, method: str = "auto") -> "KSupportNormBall":
        """The ball with L2 diameter D: r = D / 2."""
        return cls(_check_int_k(k), _check_radius(diameter, "diameter") / 2.0, method)

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius

    def lmo(self, g: jax.Array) -> jax.Array:
        return _lmo.k_support_lmo(g, min(self.k, g.size), self.radius, method=self.method)

    def gauge(self, x: jax.Array) -> jax.Array:
        return _lmo.k_support_norm(x, min(self.k, x.size))


@dataclasses.dataclass(frozen=True)
class Unconstrained(Constraint):
    """R^n. No LMO; SFW passes the incoming update through unchanged for such leaves."""

    constrained = False

    @property
    def radius(self) -> float:
        return math.inf

    @property
    def diameter(self) -> float:
        return math.inf

    def lmo(self, g: jax.Array) -> jax.Array:
        raise NotImplementedError("Unconstrained has no LMO (the set is unbounded)")

    def gauge(self, x: jax.Array) -> jax.Array:
        return jnp.zeros((), jnp.float32)

    def contains(self, x: jax.Array) -> jax.Array:
        return jnp.ones((), bool)

    def shift_inside(self, x: jax.Array) -> jax.Array:
        return x

    def project(self, x: jax.Array) -> jax.Array:
        return x


def is_constraint(x: Any) -> bool:
    """True for constraint objects (use as ``is_leaf`` when mapping over constraint trees)."""
    return isinstance(x, Constraint)


# --------------------------------------------------------------------------------------------
# Construction for a whole parameter pytree
# --------------------------------------------------------------------------------------------

def sparsity_k(n: int, k: int, k_frac: float) -> int:
    """K = min(max(k, floor(k_frac * n)), n), the reference's rule."""
    return min(max(int(k), int(math.floor(k_frac * n))), n)


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
    _check_radius(zero_norm, "zero_norm")
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
      kind: 'k_sparse' (KSparsePolytope), 'l1', 'l2', 'linf', 'lp' (LpBall with order ``p``),
        'k_support' (KSupportNormBall), 'nm_sparse' (NMSparsePolytope) or 'unconstrained'.
      k, k_frac: per leaf K = min(max(k, floor(k_frac * n)), n) for 'k_sparse' and 'k_support'.
      value: the radius ('radius' mode), the L2 diameter ('diameter' mode) or tau in
        'initialization' mode, where D = 2 * tau * init_norm of the leaf.
      mode: 'radius', 'diameter' or 'initialization'.
      init_norms: pytree of floats like params (see :func:`expected_init_norms`); required in
        'initialization' mode.
      where: which leaves get constraints: bool pytree or predicate ``(path, leaf) -> bool``; the
        rest get ``Unconstrained()``. Default: every leaf (the reference constrains all tensors,
        BatchNorm scale and bias included).
      p: order for kind 'lp'.
      method: top-k path for 'k_sparse' / 'k_support' LMOs.
      n, m, axis: for 'nm_sparse': n nonzeros in every group of m consecutive entries along
        ``axis`` (default -2, the input features of Flax Dense/Conv kernels). A selected leaf is
        eligible if it has rank >= 2 and its size along ``axis`` is a multiple of m
        (:func:`sfw_jax.nm.nm_eligible`); it gets ``NMSparsePolytope`` with K = n * size / m
        nonzeros per vertex, so in 'diameter'/'initialization' mode r = D / (2 sqrt(K)).
      fallback: for 'nm_sparse', the constraint of the selected leaves that are not eligible
        (biases, BatchNorm parameters, a first conv with 3 input channels): a constraint object
        used as is, or a kind name other than 'nm_sparse' built per leaf from the same ``value``,
        ``mode``, ``k``, ``k_frac`` and ``p``. Default ``Unconstrained()`` (in
        ``sfw_jax.optimizers`` such leaves are trained by SGD at ``rest_lr``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "nm_sparse":
        n, m = _nm.check_nm(n, m)
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ValueError(f"axis must be an int, got {axis!r}")
        if not (is_constraint(fallback) or (fallback in KINDS and fallback != "nm_sparse")):
            raise ValueError(f"fallback must be a constraint object or one of "
                             f"{tuple(x for x in KINDS if x != 'nm_sparse')}, got {fallback!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    k = _check_int_k(k)
    try:
        kf = float(k_frac)
    except (TypeError, ValueError):
        raise ValueError(f"k_frac must be a number in (0, 1], got {k_frac!r}") from None
    if not 0 < kf <= 1:
        raise ValueError(f"k_frac must be a number in (0, 1], got {k_frac!r}")
    _check_radius(value, "value")
    if "lp" in (kind, fallback if kind == "nm_sparse" else None):
        p = _lmo.check_p(p)
    if kind == "unconstrained":
        return jax.tree.map(lambda _: Unconstrained(), params)
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

    def build(path, leaf, sel, init_norm, kind=kind):
        if not sel:
            return Unconstrained()
        size = int(np.prod(np.shape(leaf)))
        if size == 0 or kind == "unconstrained":
            return Unconstrained()
        if kind == "nm_sparse" and not _nm.nm_eligible(np.shape(leaf), m, axis):
            if is_constraint(fallback):
                return fallback
            return build(path, leaf, sel, init_norm, kind=fallback)
        if mode == "initialization":
            norm = float(init_norm)
            if not math.isfinite(norm) or norm <= 0:
                raise ValueError(f"init_norms[{path_str(path)}] must be a finite number > 0, "
                                 f"got {init_norm!r}")
            diameter = 2.0 * float(value) * norm
        elif mode == "diameter":
            diameter = float(value)
        else:
            diameter = None
        if kind == "nm_sparse":
            if diameter is None:
                return NMSparsePolytope(n, m, float(value), size=size, axis=axis)
            return NMSparsePolytope.from_diameter(n, m, diameter, size=size, axis=axis)
        big_k = sparsity_k(size, k, kf)
        if kind == "k_sparse":
            if diameter is None:
                return KSparsePolytope(big_k, float(value), method)
            return KSparsePolytope.from_diameter(big_k, diameter, method)
        if kind == "k_support":
            if diameter is None:
                return KSupportNormBall(big_k, float(value), method)
            return KSupportNormBall.from_diameter(big_k, diameter, method)
        order = {"l1": 1.0, "l2": 2.0, "linf": math.inf}.get(kind, p)
        if diameter is None:
            return LpBall(order, float(value), size)
        return LpBall.from_diameter(order, diameter, size)

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
