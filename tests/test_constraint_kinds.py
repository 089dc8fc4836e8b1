"""Every registered constraint kind (``sfw_jax.fw._registry.KINDS``) through the same checks of the
``Constraint`` protocol, so that a newly registered kind is tested on registration: its sets,
built on small shapes, give LP-optimal and feasible ``lmo`` outputs, feasible ``shift_inside``
and ``project`` outputs, a sound ``diameter``, jit and float32 / bfloat16; and its optional
performance hooks (``lmo_select`` / ``lmo_vertex``, ``batch_key``, ``sign_top_k``) agree with
its ``lmo``."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sfw_jax as S
from sfw_jax.fw import topk
from sfw_jax.fw._registry import KINDS, BuildOptions
from tests.test_lmo import lp_value_k_sparse, lp_value_l1, lp_value_linf
from tests.test_topk import reference_mask

BOUNDED_KINDS = tuple(k for k, e in KINDS.items() if e.bounded)
SHAPES = [(8, 3), (2, 4, 5)]
# Two option sets: the defaults' top-k path ('sort' on the CPU at these sizes) and a counting
# path, another p, another N:M pattern.
OPTIONS = [BuildOptions(k=2, k_frac=0.2, p=3.0),
           BuildOptions(k=3, k_frac=0.1, p=1.5, method="bisect", n=1, m=4)]
N = 16                                      # directions / points per batch


def build_leaf(kind, shape, radius, opts=OPTIONS[0]):
    """The set of ``kind`` for a leaf of ``shape`` (radius mode), or None where the kind does
    not apply to it."""
    entry = KINDS[kind]
    if entry.check is not None:
        opts = entry.check(opts)
    return entry.build(tuple(shape), opts, radius if entry.bounded else None, None)


def _sets(kind):
    """The distinct sets of ``kind`` over :data:`SHAPES` and :data:`OPTIONS`: (shape, set)."""
    out = []
    for shape in SHAPES:
        for opts in OPTIONS:
            c = build_leaf(kind, shape, 0.7, opts)
            if c is not None and (shape, c) not in out:
                out.append((shape, c))
    return out


@functools.lru_cache(maxsize=None)
def _batched(c, name):
    """``jax.jit(jax.vmap(c.<name>))`` (one compilation per set, method and input type)."""
    if name == "two_phase":
        return jax.jit(jax.vmap(lambda g: c.lmo_vertex(g, c.lmo_select(g))))
    return jax.jit(jax.vmap(getattr(c, name)))


def _directions(shape, seed, dtype=jnp.float32):
    """N directions: Gaussian at scales 1e-3 .. 1e3, a quarter with ties and zeros (integers
    in [-2, 2]), the first all zeros."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((N,) + shape) * np.exp(rng.uniform(-7, 7, (N,) + (1,) * len(shape)))
    g[: N // 4] = rng.integers(-2, 3, (N // 4,) + shape)
    g[0] = 0.0
    return jnp.asarray(g, dtype)


def _group_rows(c, a):
    """The groups of m entries along ``c.axis`` of an N:M set, as rows."""
    return np.moveaxis(a, c.axis, -1).reshape(-1, c.m)


def exact_lp_value(c, g):
    """min_{z in C} <g, z> by scipy's LP solver where C is a polytope, by the dual norm where it
    is a norm ball; None for a set this test knows no formula for (the sampled checks remain)."""
    g = np.asarray(g, np.float64)
    flat = g.reshape(-1)
    if isinstance(c, S.KSparsePolytope):
        return lp_value_k_sparse(flat, min(c.k, flat.size), c.radius)
    if isinstance(c, S.NMSparsePolytope):
        return sum(lp_value_k_sparse(row, c.n, c.radius) for row in _group_rows(c, g))
    if isinstance(c, S.LpBall):
        if c.p == 1:
            return lp_value_l1(flat, c.radius)
        if math.isinf(c.p):
            return lp_value_linf(flat, c.radius)
        q = c.p / (c.p - 1)
        return -c.radius * np.sum(np.abs(flat) ** q) ** (1 / q)
    if isinstance(c, S.KSupportNormBall):
        return -c.radius * np.linalg.norm(np.sort(np.abs(flat))[::-1][: min(c.k, flat.size)])
    return None


def _flat64(a):
    return np.asarray(a, np.float64).reshape(len(a), -1)


def test_registry_has_the_built_in_kinds():
    assert {"k_sparse", "l1", "l2", "linf", "lp", "k_support", "nm_sparse"} <= set(BOUNDED_KINDS)
    assert {k for k, e in KINDS.items() if not e.bounded} == {"unconstrained"}
    for kind in BOUNDED_KINDS:
        assert len(_sets(kind)) >= 2, kind       # every kind builds on two shapes at least


@pytest.mark.parametrize("kind", BOUNDED_KINDS)
def test_lmo_is_lp_optimal_and_feasible(kind):
    """lmo(g) lies in C and minimises <g, .> over C: the exact LP value where known, and no
    sampled point of C (other vertices, boundary points from shift_inside) does better."""
    for s, (shape, c) in enumerate(_sets(kind)):
        gs = _directions(shape, s)
        vs = _batched(c, "lmo")(gs)
        zs = jnp.concatenate([_batched(c, "lmo")(_directions(shape, s + 50)),
                              _batched(c, "shift_inside")(1e3 * _directions(shape, s + 99))])
        assert vs.shape == gs.shape and vs.dtype == gs.dtype
        assert bool(jnp.all(_batched(c, "contains")(vs))), (kind, c)
        assert bool(jnp.all(_batched(c, "contains")(zs))), (kind, c)
        g64, v64 = _flat64(gs), _flat64(vs)
        vals = np.sum(g64 * v64, axis=1)
        best = np.min(g64 @ _flat64(zs).T, axis=1)
        scale = np.abs(g64).sum(axis=1) * max(c.radius, float(np.abs(v64).max()))
        assert np.all(vals <= best + 1e-5 * scale), (kind, c)
        for g, val, sc in zip(gs, vals, scale):
            exact = exact_lp_value(c, g)
            if exact is not None:
                assert val == pytest.approx(exact, rel=1e-5, abs=1e-5 * sc), (kind, c)


@pytest.mark.parametrize("kind", BOUNDED_KINDS)
def test_shift_inside_project_and_diameter(kind):
    """shift_inside and project (where the set has one) map far points into C and keep points of
    C; no two sampled points of C are further apart than the diameter; a point further than
    the diameter from a point of C is not in C."""
    for s, (shape, c) in enumerate(_sets(kind)):
        far = 1e3 * _directions(shape, s + 7)[1:]
        vs = _batched(c, "lmo")(_directions(shape, s + 8))
        inside = 0.5 * (vs + jnp.roll(vs, 1, axis=0))               # convex combinations
        contains = _batched(c, "contains")
        ys = _batched(c, "shift_inside")(far)
        assert ys.dtype == far.dtype and bool(jnp.all(contains(ys))), (kind, c)
        np.testing.assert_allclose(np.asarray(_batched(c, "shift_inside")(inside)),
                                   np.asarray(inside), rtol=1e-5, atol=1e-7)
        # project at |x_i| <= 5: the float32 projections lose their accuracy at |x_i| >> r
        # (lam ~ |x_i| is rounded to eps |x_i|)
        near = 5.0 * far / jnp.max(jnp.abs(far.reshape(len(far), -1)), axis=1).reshape(
            (-1,) + (1,) * len(shape))
        try:
            ps = _batched(c, "project")(near)
        except NotImplementedError:
            ps = None
        if ps is not None:
            assert bool(jnp.all(contains(ps))), (kind, c)
            np.testing.assert_allclose(np.asarray(_batched(c, "project")(inside)),
                                       np.asarray(inside), rtol=1e-5, atol=1e-6)
            # the nearest point of C: no sampled point of C is closer to x
            dist = np.linalg.norm(_flat64(near) - _flat64(ps), axis=1)
            others = np.linalg.norm(_flat64(near)[:, None] - _flat64(inside)[None], axis=2)
            assert np.all(dist <= others.min(axis=1) * (1 + 1e-5) + 1e-6), (kind, c)
        units = far / jnp.linalg.norm(far.reshape(len(far), -1), axis=1).reshape(
            (-1,) + (1,) * len(shape))
        assert not bool(jnp.any(contains(vs[1:] + (1.01 * c.diameter + 1e-3) * units)))
        pairs = _flat64(vs)[:, None] - _flat64(vs)[None]
        assert np.linalg.norm(pairs, axis=2).max() <= c.diameter * (1 + 1e-5)


@pytest.mark.parametrize("kind", BOUNDED_KINDS)
def test_bfloat16(kind):
    """bfloat16 directions and points: outputs in bfloat16, in C (contains' bfloat16
    tolerance), and the two-phase LMO is the LMO."""
    shape, c = _sets(kind)[0]
    gs = _directions(shape, 3, jnp.bfloat16)
    vs = _batched(c, "lmo")(gs)
    ys = _batched(c, "shift_inside")(100 * gs)
    assert vs.dtype == ys.dtype == jnp.bfloat16 and vs.shape == gs.shape
    assert bool(jnp.all(_batched(c, "contains")(vs))), (kind, c)
    assert bool(jnp.all(_batched(c, "contains")(ys))), (kind, c)
    np.testing.assert_array_equal(np.asarray(_batched(c, "two_phase")(gs), np.float32),
                                  np.asarray(vs, np.float32))


@pytest.mark.parametrize("kind", BOUNDED_KINDS)
def test_performance_hooks_agree_with_lmo(kind):
    """lmo_vertex(g, lmo_select(g)) is lmo(g) (bitwise); sets with equal batch_key give their
    own selections from one vmap of one set's lmo_select; a set with a sign_top_k spec has the
    K-sparse sign vertex as LMO and accepts the threshold selection of top_k_threshold."""
    for s, (shape, c) in enumerate(_sets(kind)):
        gs = _directions(shape, s + 11)
        vs = np.asarray(_batched(c, "lmo")(gs))
        np.testing.assert_array_equal(np.asarray(_batched(c, "two_phase")(gs)), vs)
        if c.batch_key(gs[0]) is not None:
            # the sets of this kind and shape (other options, K + 2, radius 2.5 r): each pair
            # with equal keys selects by one vmap of the first one's lmo_select
            family = [b for sh, b in _sets(kind) if sh == shape] + [
                build_leaf(kind, shape, 1.75, dataclasses.replace(o, k=o.k + 2)) for o in OPTIONS]
            family = [b for b in family + [dataclasses.replace(c, radius=2.5 * c.radius)] if b]
            pairs = [(a, b) for a in family for b in family if a != b and type(a) is type(b)
                     and a.batch_key(gs[0]) is not None
                     and a.batch_key(gs[0]) == b.batch_key(gs[1])]
            assert pairs
            for a, b in pairs:
                sel = jax.jit(jax.vmap(a.lmo_select))(gs[:2])
                for j, (cj, g) in enumerate(((a, gs[0]), (b, gs[1]))):
                    sj = jax.tree.map(lambda t: t[j], sel)
                    np.testing.assert_array_equal(np.asarray(jax.jit(cj.lmo_vertex)(g, sj)),
                                                  np.asarray(jax.jit(cj.lmo)(g)))
        spec = c.sign_top_k()
        if spec is not None:
            k = min(spec.k, math.prod(shape))
            for g, v in zip(np.asarray(gs), vs):
                want = np.where(reference_mask(np.abs(g), k), np.where(g > 0, -1.0, 1.0), 0.0)
                np.testing.assert_array_equal(v, (want * np.float32(spec.radius)).astype(v.dtype))
            if k < math.prod(shape):
                sels = jax.jit(jax.vmap(lambda g: topk.top_k_threshold(
                    g, k, absolute=True, method="bisect")))(gs)
                np.testing.assert_array_equal(
                    np.asarray(jax.jit(jax.vmap(c.lmo_vertex))(gs, sels)), vs)


def test_unbounded_kinds_are_all_of_r_n():
    for kind in (k for k, e in KINDS.items() if not e.bounded):
        c = build_leaf(kind, (4, 3), None)
        x = 1e6 * _directions((4, 3), 1)[1]
        assert not c.constrained and math.isinf(c.diameter)
        assert bool(c.contains(x))
        np.testing.assert_array_equal(np.asarray(c.shift_inside(x)), np.asarray(x))
        np.testing.assert_array_equal(np.asarray(c.project(x)), np.asarray(x))
        with pytest.raises(NotImplementedError):
            c.lmo(x)


def test_a_set_must_give_the_maths():
    """The protocol: lmo, gauge and diameter are required (and radius, which contains reads);
    the performance hooks have defaults that are right for every set."""
    @dataclasses.dataclass(frozen=True)
    class NoGauge(S.Constraint):
        radius: float

        def lmo(self, g):
            return -self.radius * jnp.sign(g)

        @property
        def diameter(self):
            return math.inf

    with pytest.raises(TypeError, match="gauge"):
        NoGauge(1.0)

    @dataclasses.dataclass(frozen=True)
    class Box(NoGauge):
        def gauge(self, x):
            return jnp.max(jnp.abs(x))

    c, g = Box(0.5), jnp.array([1.0, -2.0, 0.0])
    np.testing.assert_array_equal(np.asarray(c.lmo_vertex(g, c.lmo_select(g))),
                                  np.asarray(c.lmo(g)))
    assert c.batch_key(g) is None and c.sign_top_k() is None
    assert bool(c.contains(jnp.array([0.5, -0.5]))) and not bool(c.contains(jnp.array([0.6])))
