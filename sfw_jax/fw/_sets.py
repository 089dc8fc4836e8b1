"""The constraint sets of Frank-Wolfe training, one per parameter tensor, and their kinds.

Each set is a frozen dataclass with static configuration (Python numbers only), so it can sit as
a *leaf* of a pytree shaped like the model parameters. All methods are pure and jit-able in their
array argument.

Sets (r = radius, n = tensor size), each registered under its kind names
(:mod:`sfw_jax.fw._registry`):

  * ``KSparsePolytope(k, r)`` ('k_sparse'): P_K(r) = {x : ||x||_inf <= r, ||x||_1 <= K r}, the
    convex hull of the K-sparse vectors with entries in {0, +-r}. L2 diameter 2 r sqrt(K).
  * ``LpBall(p, r, n)`` ('l1', 'l2', 'linf', 'lp'): {x : ||x||_p <= r}. L2 diameter 2 r for
    p <= 2 and 2 r n^(1/2 - 1/p) for p > 2 (needs n).
  * ``KSupportNormBall(k, r)`` ('k_support'): conv{x : ||x||_0 <= k, ||x||_2 <= r}. L2 diameter
    2 r.
  * ``NMSparsePolytope(n, m, r, size=, axis=)`` ('nm_sparse'): the product, over groups of m
    consecutive entries along ``axis``, of K-sparse polytopes with K = n (:mod:`sfw_jax.fw._nm`);
    its vertices are N:M-sparse. L2 diameter 2 r sqrt(n size / m).
  * ``Unconstrained()`` ('unconstrained'): R^n, no LMO (:func:`sfw_jax.sfw` routes such leaves
    to its ``unconstrained`` transformation).

The sets with a sparsity K take, per tensor of n entries, K = min(max(k, floor(k_frac n)), n)
(:func:`sparsity_k`, the reference's rule; Lu et al., 2022).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import numbers
from typing import Any, Hashable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sfw_jax.fw import _gauges as gauges, _lmo, _nm, _projections as projections, topk as _topk
from sfw_jax.fw._checks import check_int, check_p, check_positive_finite
from sfw_jax.fw._registry import BuildOptions, register_constraint


def sparsity_k(n: int, k: int, k_frac: float) -> int:
    """K = min(max(k, floor(k_frac * n)), n), the reference's rule."""
    return min(max(int(k), int(math.floor(k_frac * n))), n)


def _rtol(dtype: Any) -> float:
    """Relative tolerance of ``contains`` for arrays of ``dtype``: max(1e-5, 8 eps)."""
    return max(1e-5, 8 * float(jnp.finfo(dtype).eps))


def _check_radius(radius: Any, name: str = "radius") -> float:
    check_positive_finite(radius, name)
    return float(radius)


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


def _scale_inside(x: jax.Array, gauge: jax.Array, radius: float) -> jax.Array:
    """x * r / gauge(x) where gauge(x) > r, x elsewhere (in float32, cast back)."""
    acc = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    scale = jnp.where(gauge > radius, radius / jnp.where(gauge > 0, gauge, 1), 1)
    return (x.astype(acc) * scale.astype(acc)).astype(x.dtype)


class SignTopK(NamedTuple):
    """A set whose LMO is the K-sparse sign vertex (:meth:`Constraint.sign_top_k`):
    ``lmo(g) = -radius sign(g)`` on the min(k, n) largest |g_i| (ties to the lower flat index,
    +radius where g_i = 0), 0 elsewhere; ``method`` is the set's top-k path
    (:func:`sfw_jax.fw.topk.resolve_method`)."""

    k: int
    radius: float
    method: str


class LMOHooks:
    """The optional performance hooks of a constraint set. Each default is right for every set;
    a set overrides one to make the Frank-Wolfe step faster, and ``tests/test_constraint_kinds.py``
    checks every registered kind's overrides against its ``lmo``."""

    def lmo_select(self, g: jax.Array) -> Any:
        """First half of a two-phase LMO: a small pytree ``s`` from which
        :meth:`lmo_vertex` ``(g, s)`` rebuilds ``lmo(g)`` elementwise (so that XLA can fuse the
        vertex into each consumer instead of materialising it). Default: ``s`` is the vertex."""
        return self.lmo(g)

    def lmo_vertex(self, g: jax.Array, selection: Any) -> jax.Array:
        """Second half of the two-phase LMO: ``lmo(g)`` from ``lmo_select(g)``."""
        del g
        return selection

    def batch_key(self, g: jax.Array) -> Optional[Hashable]:
        """For a direction ``g`` (abstract shape and dtype are enough): a key such that, for the
        sets of this class giving equal keys, ``jax.vmap(s.lmo_select)`` over their stacked
        directions gives each set's own selection, for any one set ``s`` of them (the selection
        depends on the key and g only). The Frank-Wolfe step then selects such leaves together
        where it batches (``sfw(batch_select=...)``). Default None: alone."""
        del g
        return None

    def sign_top_k(self) -> Optional[SignTopK]:
        """:class:`SignTopK` where the LMO is the K-sparse sign vertex and :meth:`lmo_vertex`
        accepts the threshold selection ``(t, cut)`` of
        ``sfw_jax.fw.topk.top_k_threshold(g, min(k, n), absolute=True)``: the fused native CPU
        kernel of :func:`sfw_jax.sfw` (:mod:`sfw_jax.fw.native`) may then compute the step's
        momentum, selection and norms, and the Frank-Wolfe step with ``tree_select`` selects
        all such leaves by one segmented search (:func:`sfw_jax.fw._step.tree_front`).
        Default None."""
        return None


class Constraint(LMOHooks, abc.ABC):
    """A compact convex set C of one tensor, given by the maths every set must define:

    * :meth:`lmo` ``(g)``: argmin_{v in C} <v, g>, same shape and dtype as g (jit-able);
    * ``radius`` (attribute or property) and :meth:`gauge` ``(x)``: x in C iff
      gauge(x) <= radius (a scaled Minkowski gauge);
    * :attr:`diameter`: the L2 diameter max ||x - y||_2 over x, y in C.

    From these it derives :meth:`contains` and :meth:`shift_inside`; a set may override them
    with its own rule, and give :meth:`project` and :meth:`full_support`. The performance hooks
    (:class:`LMOHooks`) are optional. ``constrained`` is False for R^n only.
    """

    constrained: bool = True
    radius: float
    """r of ``gauge(x) <= r``: a dataclass field or a property of each set."""

    @abc.abstractmethod
    def lmo(self, g: jax.Array) -> jax.Array:
        """argmin_{v in C} <v, g>, same shape and dtype as g."""

    @abc.abstractmethod
    def gauge(self, x: jax.Array) -> jax.Array:
        """Minkowski gauge of C scaled so that x in C iff gauge(x) <= radius."""

    @property
    @abc.abstractmethod
    def diameter(self) -> float:
        """The L2 diameter of C."""

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

    def full_support(self, size: int) -> "Constraint":
        """The set of the same L2 diameter whose vertices are dense (K = n for the sets with a
        sparsity K, as Zimmer et al.'s ``adjust_diameter``), for a tensor of ``size`` entries;
        the set itself where there is no K."""
        del size
        return self


@dataclasses.dataclass(frozen=True)
class _TopKSet(Constraint):
    """Shared fields of the sets whose LMO selects the k largest |g_i|: ``k``, ``radius`` and the
    exact top-k path ``method`` (:func:`sfw_jax.fw.topk.top_k_mask`)."""

    k: int
    radius: float
    method: str = "auto"

    def __post_init__(self):
        check_int(self.k, "k")
        _check_radius(self.radius)

    @classmethod
    def from_diameter(cls, k: int, diameter: float, method: str = "auto") -> "_TopKSet":
        """The set of L2 diameter ``diameter`` with sparsity ``k`` (each set's own formula)."""
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def build(cls, shape: tuple[int, ...], opts: BuildOptions, radius: Optional[float],
              diameter: Optional[float]) -> "_TopKSet":
        """The builder of the kinds 'k_sparse' and 'k_support': K = :func:`sparsity_k` of the
        leaf's size, the top-k path ``opts.method``."""
        k = sparsity_k(_size(shape), opts.k, opts.k_frac)
        return cls(k, radius, opts.method) if diameter is None else cls.from_diameter(
            k, diameter, opts.method)


@dataclasses.dataclass(frozen=True)
class KSparsePolytope(_TopKSet):
    """P_K(r) = {x : ||x||_inf <= r, ||x||_1 <= K r}; LMO: -r sign(g) on the K largest |g_i|.

    ``method`` selects the exact top-k path (:func:`sfw_jax.fw.topk.top_k_mask`).
    """

    @classmethod
    def from_diameter(cls, k: int, diameter: float, method: str = "auto") -> "KSparsePolytope":
        """The polytope with L2 diameter D: r = D / (2 sqrt(K))."""
        k = check_int(k, "k")
        d = _check_radius(diameter, "diameter")
        return cls(k, d / (2.0 * math.sqrt(k)), method)

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius * math.sqrt(self.k)

    def lmo(self, g: jax.Array) -> jax.Array:
        return _lmo.k_sparse_lmo(g, min(self.k, g.size), self.radius, method=self.method)

    def lmo_select(self, g: jax.Array):
        """The top-k threshold ``(t, cut)`` of ``|g|`` on the counting paths (see
        :func:`sfw_jax.fw.topk.top_k_threshold`); the vertex itself on the 'sort' path.
        ``method='auto'`` is resolved for ``jax.default_backend()`` when this is traced
        (:func:`sfw_jax.fw.topk.resolve_method`): to trace for another backend, name the method."""
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

    def batch_key(self, g: jax.Array) -> Optional[tuple]:
        """``(shape, dtype, K, path)`` on the threshold paths with K < n: the selection
        ``(t, cut)`` depends on g, K and the path only (the radius enters the vertex); None on
        the 'sort' path and for K = n (the selection is the vertex)."""
        k = min(self.k, g.size)
        path = _topk.resolve_method(g.size, self.method)
        if k == g.size or path not in _topk.THRESHOLD_METHODS:
            return None
        return (g.shape, jnp.dtype(g.dtype), k, path)

    def sign_top_k(self) -> SignTopK:
        """The LMO is the sign vertex on the top K, and :meth:`lmo_vertex` reads ``(t, cut)``."""
        return SignTopK(self.k, self.radius, self.method)

    def gauge(self, x: jax.Array) -> jax.Array:
        """max(||x||_inf, ||x||_1 / K) (x in P_K(r) iff this is <= r)."""
        return gauges.k_sparse_gauge(x, min(self.k, x.size))

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
        return projections.project_k_sparse(x, min(self.k, x.size), self.radius)

    def full_support(self, size: int) -> "KSparsePolytope":
        """P_n(r sqrt(K / n)): the L_inf ball of radius D / (2 sqrt(n)), D = 2 r sqrt(K) (K =
        min(K, n)), the polytope's L2 diameter."""
        return KSparsePolytope(size, self.radius * math.sqrt(min(self.k, size) / size),
                               self.method)


register_constraint("k_sparse", KSparsePolytope.build, uses_k=True)


@dataclasses.dataclass(frozen=True)
class LpBall(Constraint):
    """B_p(r) = {x : ||x||_p <= r}, p >= 1 (p = inf allowed); ``n`` (tensor size) is needed for
    the L2 diameter when p > 2. LMO by Hoelder's equality case (:func:`sfw_jax.lp_ball_lmo`)."""

    p: float
    radius: float
    n: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "p", check_p(self.p))
        _check_radius(self.radius)
        if self.n is not None:
            check_int(self.n, "n")

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
        p = check_p(p)
        d = _check_radius(diameter, "diameter")
        return cls(p, d / 2.0 / cls._l2_to_lp_ratio(p, n), n)

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius * self._l2_to_lp_ratio(self.p, self.n)

    def lmo(self, g: jax.Array) -> jax.Array:
        return _lmo.lp_ball_lmo(g, self.p, self.radius)

    def gauge(self, x: jax.Array) -> jax.Array:
        return gauges.lp_norm(x, self.p)

    def project(self, x: jax.Array) -> jax.Array:
        """Exact for p = 1 (Duchi et al. sort), p = 2 (scaling) and p = inf (clipping).
        Other p: NotImplementedError (no closed form; use shift_inside)."""
        if self.p == 2:
            return self.shift_inside(x)
        if math.isinf(self.p):
            return jnp.clip(x, -self.radius, self.radius).astype(x.dtype)
        if self.p == 1:
            return projections.project_l1_ball(x, self.radius)
        raise NotImplementedError(
            f"Euclidean projection onto the L_p ball has no closed form for p={self.p}; "
            f"use shift_inside")

    @classmethod
    def build(cls, shape: tuple[int, ...], opts: BuildOptions, radius: Optional[float],
              diameter: Optional[float], *, p: Optional[float] = None) -> "LpBall":
        """The kinds 'l1', 'l2', 'linf' (``p`` 1, 2, inf) and 'lp' (``p = opts.p``)."""
        order = opts.p if p is None else p
        size = _size(shape)
        return cls(order, radius, size) if diameter is None else cls.from_diameter(
            order, diameter, size)


register_constraint("l1", functools.partial(LpBall.build, p=1.0))
register_constraint("l2", functools.partial(LpBall.build, p=2.0))
register_constraint("linf", functools.partial(LpBall.build, p=math.inf))
register_constraint("lp", LpBall.build,
                    check=lambda opts: dataclasses.replace(opts, p=check_p(opts.p)))


@dataclasses.dataclass(frozen=True)
class KSupportNormBall(_TopKSet):
    """conv{x : ||x||_0 <= k, ||x||_2 <= r}; LMO: -r * (top-k part of g) / ||top-k part||_2.

    ``project`` is not provided: the Euclidean projection needs an O(n log n) search over two
    indices (Chatterjee et al.) that we do not implement; ``shift_inside`` scales by the norm.
    """

    @classmethod
    def from_diameter(cls, k: int, diameter: float, method: str = "auto") -> "KSupportNormBall":
        """The ball with L2 diameter D: r = D / 2."""
        return cls(check_int(k, "k"), _check_radius(diameter, "diameter") / 2.0, method)

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius

    def lmo(self, g: jax.Array) -> jax.Array:
        return _lmo.k_support_lmo(g, min(self.k, g.size), self.radius, method=self.method)

    def gauge(self, x: jax.Array) -> jax.Array:
        return gauges.k_support_norm(x, min(self.k, x.size))

    def full_support(self, size: int) -> "KSupportNormBall":
        """The L2 ball of radius r (K = n; the diameter 2 r does not depend on K)."""
        return KSupportNormBall(size, self.radius, self.method)


register_constraint("k_support", KSupportNormBall.build, uses_k=True)


@dataclasses.dataclass(frozen=True)
class NMSparsePolytope(Constraint):
    """P_{n:m}(r) = {x : ||x_g||_inf <= r, ||x_g||_1 <= n r for every group g of m consecutive
    entries along ``axis``}, the product of per-group K-sparse polytopes (K = n); its vertices are
    the N:M-sparse arrays with entries in {0, +-r} (:mod:`sfw_jax.fw._nm`).

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
        check_int(self.size, "size")
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
        size = check_int(size, "size")
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
        (:func:`sfw_jax.fw._nm.nm_top_mask`), so :meth:`lmo_vertex` rebuilds the vertex from ``g``
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
        are unchanged (:func:`sfw_jax.fw._nm.shift_inside_nm`)."""
        return _nm.shift_inside_nm(x, self.n, self.m, self.radius, axis=self.axis)

    def project(self, x: jax.Array) -> jax.Array:
        """Exact Euclidean projection: per group the K-sparse polytope's projection (K = n)."""
        return _nm.project_nm_sparse(x, self.n, self.m, self.radius, axis=self.axis)

    @classmethod
    def build(cls, shape: tuple[int, ...], opts: BuildOptions, radius: Optional[float],
              diameter: Optional[float]) -> Optional["NMSparsePolytope"]:
        """The kind 'nm_sparse': the pattern ``opts.n:opts.m`` along ``opts.axis``; None for a
        leaf without such groups (:func:`sfw_jax.fw._nm.nm_eligible`: rank < 2, or a size along
        the axis that m does not divide)."""
        if not _nm.nm_eligible(shape, opts.m, opts.axis):
            return None
        size = _size(shape)
        if diameter is None:
            return cls(opts.n, opts.m, radius, size=size, axis=opts.axis)
        return cls.from_diameter(opts.n, opts.m, diameter, size=size, axis=opts.axis)


def _check_nm_options(opts: BuildOptions) -> BuildOptions:
    n, m = _nm.check_nm(opts.n, opts.m)
    if isinstance(opts.axis, bool) or not isinstance(opts.axis, numbers.Integral):
        raise ValueError(f"axis must be an int, got {opts.axis!r}")
    return dataclasses.replace(opts, n=n, m=m)


register_constraint("nm_sparse", NMSparsePolytope.build, check=_check_nm_options)


@dataclasses.dataclass(frozen=True)
class Unconstrained(Constraint):
    """R^n. No LMO: :func:`sfw_jax.sfw` trains such leaves with its ``unconstrained``
    transformation."""

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


register_constraint("unconstrained", lambda shape, opts, radius, diameter: Unconstrained(),
                    bounded=False)


def is_constraint(x: Any) -> bool:
    """True for constraint objects (use as ``is_leaf`` when mapping over constraint trees)."""
    return isinstance(x, Constraint)
