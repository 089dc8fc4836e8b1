"""Exactness of the LMOs: LP optimality, closed forms, feasibility, homogeneity, symmetry, ties,
dtypes and jit, for every exact top-k path."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import linprog

from sfw_jax.fw import _gauges as gauges, _lmo as lmo, _projections as projections
from sfw_jax.fw.topk import METHODS

TOPK_METHODS = [m for m in METHODS if m != "auto"] + ["auto"]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]

# A few sizes only: every new shape costs XLA compilations.
SIZES = st.sampled_from([1, 3, 8, 12])
vectors = SIZES.flatmap(
    lambda n: st.lists(st.floats(-10, 10, allow_nan=False, allow_subnormal=False, width=32),
                       min_size=n, max_size=n))
tied_vectors = SIZES.flatmap(
    lambda n: st.lists(st.integers(-3, 3), min_size=n, max_size=n))


def lp_value_k_sparse(g, k, r):
    """min <v, g> over {|v_i| <= t_i <= r, sum t <= K r} by scipy's LP solver."""
    n = len(g)
    c = np.concatenate([g, np.zeros(n)])
    eye = np.eye(n)
    a_ub = np.block([[eye, -eye], [-eye, -eye], [np.zeros((1, n)), np.ones((1, n))]])
    b_ub = np.concatenate([np.zeros(2 * n), [k * r]])
    bounds = [(-r, r)] * n + [(0, r)] * n
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun


def lp_value_l1(g, r):
    """min <v, g> over {||v||_1 <= r}."""
    n = len(g)
    c = np.concatenate([g, np.zeros(n)])
    eye = np.eye(n)
    a_ub = np.block([[eye, -eye], [-eye, -eye], [np.zeros((1, n)), np.ones((1, n))]])
    b_ub = np.concatenate([np.zeros(2 * n), [r]])
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * n + [(0, None)] * n,
                  method="highs")
    assert res.status == 0
    return res.fun


def lp_value_linf(g, r):
    res = linprog(np.asarray(g), bounds=[(-r, r)] * len(g), method="highs")
    assert res.status == 0
    return res.fun


def reference_top_k(a, k):
    """Indices of the k largest a (lower index first on ties), in NumPy."""
    order = sorted(range(len(a)), key=lambda i: (-a[i], i))
    return set(order[:k])


# ---------------------------------------------------------------- K-sparse polytope

@pytest.mark.parametrize("method", TOPK_METHODS)
@settings(max_examples=40, deadline=None)
@given(g=vectors, data=st.data(), r=st.floats(0.1, 5.0))
def test_k_sparse_lmo_is_lp_optimal(method, g, data, r):
    g = np.asarray(g, np.float32)
    k = data.draw(st.integers(1, len(g)))
    v = np.asarray(lmo.k_sparse_lmo(jnp.asarray(g), k, r, method=method), np.float64)
    val = float(v @ g)
    best = lp_value_k_sparse(g.astype(np.float64), k, r)
    assert val == pytest.approx(best, rel=1e-5, abs=1e-5)
    # closed form: -r * sum of top-K |g|
    assert val == pytest.approx(-r * np.sort(np.abs(g))[::-1][:k].sum(), rel=1e-5, abs=1e-5)
    # a vertex: exactly K nonzeros, all of magnitude r (float32 r)
    assert np.count_nonzero(v) == k
    np.testing.assert_allclose(np.abs(v[v != 0]), np.float32(r), rtol=1e-6)
    # feasible
    assert np.abs(v).max() <= np.float32(r) * (1 + 1e-6)
    assert np.abs(v).sum() <= k * np.float32(r) * (1 + 1e-6)


@pytest.mark.parametrize("method", TOPK_METHODS)
@settings(max_examples=40, deadline=None)
@given(g=tied_vectors, data=st.data())
def test_k_sparse_lmo_ties_pick_lowest_indices(method, g, data):
    g = np.asarray(g, np.float32)
    k = data.draw(st.integers(1, len(g)))
    v = np.asarray(lmo.k_sparse_lmo(jnp.asarray(g), k, 1.0, method=method))
    assert set(np.flatnonzero(v)) == reference_top_k(np.abs(g), k)
    # sign: -sign(g), zero entries -> +r
    sel = np.flatnonzero(v)
    np.testing.assert_array_equal(v[sel], np.where(g[sel] > 0, -1.0, 1.0))


@pytest.mark.parametrize("method", TOPK_METHODS)
def test_k_sparse_lmo_zero_gradient_is_vertex(method):
    v = np.asarray(lmo.k_sparse_lmo(jnp.zeros((3, 4)), 5, 2.0, method=method))
    assert v.shape == (3, 4)
    assert np.count_nonzero(v) == 5
    np.testing.assert_array_equal(v.reshape(-1)[:5], 2.0)   # lowest flat indices, sign +


@pytest.mark.parametrize("method", TOPK_METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_k_sparse_lmo_dtypes_and_jit(method, dtype):
    rng = np.random.default_rng(0)
    g32 = rng.standard_normal((7, 9)).astype(np.float32)
    g = jnp.asarray(g32, dtype)
    f = jax.jit(lambda x: lmo.k_sparse_lmo(x, 6, 0.75, method=method))
    v = f(g)
    assert v.dtype == dtype and v.shape == (7, 9)
    gl = np.asarray(g.astype(jnp.float32))
    expected = reference_top_k(np.abs(gl).reshape(-1), 6)
    vv = np.asarray(v.astype(jnp.float32)).reshape(-1)
    assert set(np.flatnonzero(vv)) == expected
    np.testing.assert_array_equal(vv[sorted(expected)], -0.75 * np.sign(gl.reshape(-1)[sorted(expected)]))


@settings(max_examples=30, deadline=None)
@given(g=vectors, data=st.data(), c=st.floats(0.01, 100.0))
def test_k_sparse_lmo_homogeneity_and_sign_symmetry(g, data, c):
    g = np.asarray(g, np.float32)
    # sign symmetry needs nonzero entries; XLA flushes subnormals to zero, so keep |g| normal
    g = np.where(np.abs(g) < 1e-6, 1.0, g).astype(np.float32)
    k = data.draw(st.integers(1, len(g)))
    v = np.asarray(lmo.k_sparse_lmo(jnp.asarray(g), k, 1.5))
    # positive homogeneity in the radius and invariance to positive scaling of g
    v2 = np.asarray(lmo.k_sparse_lmo(jnp.asarray(g), k, 1.5 * 2.0))
    np.testing.assert_allclose(v2, 2.0 * v, rtol=1e-6)
    gc = (g.astype(np.float64) * c).astype(np.float32)
    if np.array_equal(np.argsort(-np.abs(gc), kind="stable"), np.argsort(-np.abs(g), kind="stable")):
        np.testing.assert_array_equal(np.asarray(lmo.k_sparse_lmo(jnp.asarray(gc), k, 1.5)), v)
    np.testing.assert_array_equal(np.asarray(lmo.k_sparse_lmo(jnp.asarray(-g), k, 1.5)), -v)


def test_k_sparse_lmo_bad_arguments():
    g = jnp.ones(5)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\].*got 0"):
        lmo.k_sparse_lmo(g, 0, 1.0)
    with pytest.raises(ValueError, match=r"k must .*got 6"):
        lmo.k_sparse_lmo(g, 6, 1.0)
    with pytest.raises(ValueError, match=r"k must .*got 2.5"):
        lmo.k_sparse_lmo(g, 2.5, 1.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="radius must be a finite number > 0"):
            lmo.k_sparse_lmo(g, 2, bad)


# ---------------------------------------------------------------- L_p balls

@settings(max_examples=30, deadline=None)
@given(g=vectors, r=st.floats(0.1, 5.0))
def test_l1_and_linf_lmo_are_lp_optimal(g, r):
    g = np.asarray(g, np.float32)
    v1 = np.asarray(lmo.lp_ball_lmo(jnp.asarray(g), 1, r), np.float64)
    assert float(v1 @ g) == pytest.approx(lp_value_l1(g.astype(np.float64), r), rel=1e-5, abs=1e-5)
    assert np.count_nonzero(v1) == 1
    vi = np.asarray(lmo.lp_ball_lmo(jnp.asarray(g), math.inf, r), np.float64)
    assert float(vi @ g) == pytest.approx(lp_value_linf(g.astype(np.float64), r), rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(np.abs(vi), np.float32(r), rtol=1e-6)


@pytest.mark.parametrize("p", [1.0, 1.3, 1.5, 2.0, 3.0, 4.5, 10.0, math.inf])
@settings(max_examples=20, deadline=None)
@given(g=vectors, r=st.floats(0.1, 5.0))
def test_lp_lmo_hoelder_closed_form(p, g, r):
    g = np.asarray(g, np.float64)
    if np.abs(g).max() < 1e-3:
        g = g + 1.0
    v = np.asarray(lmo.lp_ball_lmo(jnp.asarray(g, jnp.float32), p, r), np.float64)
    q = lmo.dual_order(p)
    g32 = g.astype(np.float32).astype(np.float64)
    gq = np.linalg.norm(g32, ord=q)
    assert float(v @ g32) == pytest.approx(-r * gq, rel=2e-4)
    assert np.linalg.norm(v, ord=p) == pytest.approx(r, rel=2e-4)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lp_lmo_zero_gradient_no_nan_and_dtypes(p, dtype):
    v = jax.jit(lambda g: lmo.lp_ball_lmo(g, p, 2.0))(jnp.zeros((4, 3), dtype))
    assert v.dtype == dtype and v.shape == (4, 3)
    vf = np.asarray(v.astype(jnp.float32))
    assert np.all(np.isfinite(vf))
    assert np.linalg.norm(vf.reshape(-1), ord=p) <= 2.0 * (1 + 1e-6)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, math.inf])
def test_lp_lmo_sign_symmetry_and_homogeneity(p):
    rng = np.random.default_rng(1)
    g = jnp.asarray(rng.standard_normal(20).astype(np.float32))
    v = np.asarray(lmo.lp_ball_lmo(g, p, 1.0))
    np.testing.assert_allclose(np.asarray(lmo.lp_ball_lmo(-g, p, 1.0)), -v, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lmo.lp_ball_lmo(3.0 * g, p, 1.0)), v, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(lmo.lp_ball_lmo(g, p, 2.5)), 2.5 * v, rtol=1e-6)


def test_lp_lmo_large_p_and_tiny_gradients_do_not_overflow():
    g = jnp.asarray([1e-30, -2e-30, 3e-30], jnp.float32)
    v = np.asarray(lmo.lp_ball_lmo(g, 50.0, 1.0))
    assert np.all(np.isfinite(v)) and np.linalg.norm(v, 50.0) == pytest.approx(1.0, rel=1e-4)


def test_lp_bad_p():
    for bad in (0.5, -1, math.nan, "two"):
        with pytest.raises(ValueError, match="p must be a number >= 1"):
            lmo.lp_ball_lmo(jnp.ones(3), bad, 1.0)


# ---------------------------------------------------------------- k-support norm ball

@pytest.mark.parametrize("method", TOPK_METHODS)
@settings(max_examples=30, deadline=None)
@given(g=vectors, data=st.data(), r=st.floats(0.1, 5.0))
def test_k_support_lmo_matches_brute_force(method, g, data, r):
    g = np.asarray(g, np.float32).astype(np.float64)
    n = len(g)
    k = data.draw(st.integers(1, n))
    v = np.asarray(lmo.k_support_lmo(jnp.asarray(g, jnp.float32), k, r, method=method),
                   np.float64)
    # the set is conv{||x||_0 <= k, ||x||_2 <= r}; min over it = min over supports S, |S| = k
    best = min(-r * np.linalg.norm(g[list(s)]) for s in itertools.combinations(range(n), k))
    assert float(v @ g) == pytest.approx(best, rel=1e-5, abs=1e-6)
    assert np.count_nonzero(v) <= k
    assert np.linalg.norm(v) <= r * (1 + 1e-5)
    assert np.all(np.isfinite(v))


def test_k_support_lmo_zero_gradient_vertex():
    v = np.asarray(lmo.k_support_lmo(jnp.zeros(6), 4, 2.0))
    np.testing.assert_allclose(v, [1, 1, 1, 1, 0, 0], rtol=1e-6)   # 2/sqrt(4)
    assert np.linalg.norm(v) == pytest.approx(2.0)


@settings(max_examples=40, deadline=None)
@given(x=vectors, data=st.data())
def test_k_support_norm_is_dual_of_top_k_l2(x, data):
    """Closed-form checks of the k-support norm: L1 for k = 1, L2 for k = n, between them
    otherwise, and the dual-norm (Hoelder) inequality <x, g> <= ||x||_sp * ||top-k of g||_2."""
    x = np.asarray(x, np.float32).astype(np.float64)
    n = len(x)
    k = data.draw(st.integers(1, n))
    nrm = float(gauges.k_support_norm(jnp.asarray(x, jnp.float32), k))
    if k == 1:
        assert nrm == pytest.approx(np.abs(x).sum(), rel=1e-5, abs=1e-6)
    if k == n:
        assert nrm == pytest.approx(np.linalg.norm(x), rel=1e-5, abs=1e-6)
    assert np.linalg.norm(x) - 1e-5 <= nrm <= np.abs(x).sum() + 1e-5
    rng = np.random.default_rng(len(x) * 31 + k)
    for _ in range(20):
        g = rng.standard_normal(n)
        dual = np.linalg.norm(np.sort(np.abs(g))[::-1][:k])
        assert x @ g <= nrm * dual * (1 + 1e-5) + 1e-6
    # equality at the maximizing g: the k-support unit ball's LMO at -x gives the tight direction
    if nrm > 0:
        v = np.asarray(lmo.k_support_lmo(jnp.asarray(-x, jnp.float32), k, 1.0), np.float64)
        # <x, v> = ||x_topk||_2 <= ||x||_sp (dual inequality with ||v||_sp <= 1)
        assert x @ v <= nrm * (1 + 1e-5) + 1e-6


# ---------------------------------------------------------------- projections

@settings(max_examples=30, deadline=None)
@given(x=vectors, data=st.data(), r=st.floats(0.1, 3.0))
def test_project_k_sparse_is_euclidean_projection(x, data, r):
    x = np.asarray(x, np.float32).astype(np.float64)
    k = data.draw(st.integers(1, len(x)))
    p = np.asarray(projections.project_k_sparse(jnp.asarray(x), k, r), np.float64)
    assert np.abs(p).max() <= r * (1 + 1e-5) + 1e-6
    assert np.abs(p).sum() <= k * r * (1 + 1e-5) + 1e-5
    # variational inequality: <x - p, y - p> <= 0 for all y in the set (vertices suffice)
    rng = np.random.default_rng(7)
    for _ in range(30):
        y = np.asarray(lmo.k_sparse_lmo(jnp.asarray(rng.standard_normal(len(x)), jnp.float32), k, r),
                       np.float64)
        assert (x - p) @ (y - p) <= 1e-4 * (1 + np.abs(x).sum())


@settings(max_examples=30, deadline=None)
@given(x=vectors, r=st.floats(0.1, 3.0))
def test_project_l1_ball_is_euclidean_projection(x, r):
    x = np.asarray(x, np.float32).astype(np.float64)
    p = np.asarray(projections.project_l1_ball(jnp.asarray(x), r), np.float64)
    assert np.abs(p).sum() <= r * (1 + 1e-5) + 1e-6
    for i in range(len(x)):
        for s in (-1.0, 1.0):
            y = np.zeros(len(x))
            y[i] = s * r
            assert (x - p) @ (y - p) <= 1e-4 * (1 + np.abs(x).sum())
