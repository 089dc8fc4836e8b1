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
  * ``Unconstrained()``: R^n; SFW passes updates of such leaves through unchanged.

Construction for a whole model follows the reference implementation (Lu et al., 2022, built on
Pokutta et al.'s SFW code): per tensor K = min(max(k, floor(k_frac * n)), n) and, in
'initialization' mode, L2 diameter D = 2 * value * E||W_init||_2 of that tensor's initializer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sfw_jax import lmo as _lmo
from sfw_jax import topk as _topk
from sfw_jax._tree import PyTree, Selector, path_str, select_leaves

KINDS = ("k_sparse", "l1", "l2", "linf", "lp", "k_support", "unconstrained")
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


def expected_init_norms(init_fn: Callable[[jax.Array], PyTree], rng: jax.Array,
                        n_samples: int = 100, *, zero_norm: float = 1.0) -> PyTree:
    """E||W_init||_2 per leaf, the mean L2 norm over ``n_samples`` draws of ``init_fn(key)``.

    ``init_fn(key) -> params`` is the model's own initializer (e.g.
    ``lambda key: model.init(key, x)['params']``). Norms are computed leaf by leaf: unlike the
    reference, which keys the averages by tensor *shape* (so every same-shaped tensor, e.g. each
    BatchNorm scale and bias of one width, shares one norm), each leaf gets the expected norm of
    its own initializer. A leaf whose expected norm is 0 (zero-initialized biases, BatchNorm bias)
    gets ``zero_norm`` (1.0, the reference's fallback). Draws run sequentially under one jit
    (``lax.map``), so memory is that of one draw. Returns a pytree of Python floats.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    _check_radius(zero_norm, "zero_norm")

    @jax.jit
    def mean_norms(keys):
        def one(key):
            return jax.tree.map(lambda w: jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)))),
                                init_fn(key))
        return jax.tree.map(lambda a: jnp.mean(a, axis=0), jax.lax.map(one, keys))

    norms = mean_norms(jax.random.split(rng, int(n_samples)))
    return jax.tree.map(lambda v: float(v) if float(v) > 0 else float(zero_norm), norms)


def make_constraints(params: PyTree, kind: str, *, k: int = 10, k_frac: float = 0.05,
                     value: float = 15.0, mode: str = "initialization",
                     init_norms: Optional[PyTree] = None, where: Selector = None,
                     p: float = 2.0, method: str = "auto") -> PyTree:
    """A pytree like ``params`` of constraint objects, one per leaf.

    Args:
      params: parameter pytree (arrays or ShapeDtypeStructs).
      kind: 'k_sparse' (KSparsePolytope), 'l1', 'l2', 'linf', 'lp' (LpBall with order ``p``),
        'k_support' (KSupportNormBall) or 'unconstrained'.
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
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
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
    if kind == "lp":
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

    def build(path, leaf, sel, init_norm):
        if not sel:
            return Unconstrained()
        n = int(np.prod(np.shape(leaf)))
        if n == 0:
            return Unconstrained()
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
        big_k = sparsity_k(n, k, kf)
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
            return LpBall(order, float(value), n)
        return LpBall.from_diameter(order, diameter, n)

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
