"""N:M structured sparsity: the LMO (LP optimality, ties, zeros, axes, dtypes), the polytope
(membership, shift_inside, projection, SFW feasibility), make_constraints, nm_mask, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import linprog

import sfw_jax as S
from sfw_jax.pruning import nm_mask
from sfw_jax.fw._sfw import sfw

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
# (shape, axis, m): a few shapes only, every new shape costs XLA compilations
CASES = [((8, 3), -2, 4), ((4, 2), 0, 4), ((2, 6, 3), 1, 3), ((3, 3, 8, 2), -2, 4),
         ((12,), 0, 4), ((2, 8), -1, 8)]


def reference_nm_mask(x, n, m, axis):
    """NumPy: in every group of m consecutive entries along ``axis``, the n largest |x| (ties to
    the lower index)."""
    a = np.moveaxis(np.abs(np.asarray(x, np.float64)), axis, -1)
    keep = np.zeros(a.shape, bool)
    for idx in np.ndindex(a.shape[:-1]):
        for g0 in range(0, a.shape[-1], m):
            order = sorted(range(g0, g0 + m), key=lambda i: (-a[idx][i], i))
            for i in order[:n]:
                keep[idx + (i,)] = True
    return np.moveaxis(keep, -1, axis)


def reference_project_k_sparse(x, k, r):
    """NumPy: projection onto {||x||_inf <= r, ||x||_1 <= k r}, sign(x) clip(|x| - lam, 0, r)
    with the smallest lam >= 0 meeting the L1 bound, found by bisection in float64."""
    a = np.abs(x)

    def l1(lam):
        return np.clip(a - lam, 0, r).sum()

    lo, hi = 0.0, float(a.max())
    if l1(lo) > k * r:
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if l1(mid) > k * r else (lo, mid)
        lo = hi
    return np.sign(x) * np.clip(a - lo, 0, r)


def lp_value_nm(g, n, m, r, axis):
    """min <v, g> over the product of per-group {|v_i| <= t_i <= r, sum_group t <= n r} (LP)."""
    gg = np.moveaxis(np.asarray(g, np.float64), axis, -1).reshape(-1, m)   # one group per row
    size = gg.size
    c = np.concatenate([gg.reshape(-1), np.zeros(size)])
    eye = np.eye(size)
    groups = np.kron(np.eye(size // m), np.ones((1, m)))                   # [G, size]
    a_ub = np.block([[eye, -eye], [-eye, -eye], [np.zeros_like(groups), groups]])
    b_ub = np.concatenate([np.zeros(2 * size), np.full(size // m, n * r)])
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=[(-r, r)] * size + [(0, r)] * size,
                  method="highs")
    assert res.status == 0
    return res.fun


def _array(data, shape, ints):
    """A random array of ``shape``: small integers (many ties and zeros) or floats."""
    size = int(np.prod(shape))
    if ints:
        vals = data.draw(st.lists(st.integers(-2, 2), min_size=size, max_size=size))
    else:
        vals = data.draw(st.lists(st.floats(-10, 10, allow_nan=False, allow_subnormal=False,
                                            width=32), min_size=size, max_size=size))
    return np.asarray(vals, np.float32).reshape(shape)


# ---------------------------------------------------------------- LMO

@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(CASES), data=st.data(), r=st.floats(0.1, 5.0), ints=st.booleans())
def test_nm_lmo_is_lp_optimal_vertex(case, data, r, ints):
    shape, axis, m = case
    n = data.draw(st.integers(1, m))
    g = _array(data, shape, ints)
    v = np.asarray(S.nm_sparse_lmo(jnp.asarray(g), n, m, r, axis=axis), np.float64)
    assert v.shape == g.shape
    val = float(np.sum(v * g))
    assert val == pytest.approx(lp_value_nm(g, n, m, r, axis), rel=1e-5, abs=1e-5)
    # a vertex: exactly the reference's entries (n per group, ties to the lower index), +-r
    keep = reference_nm_mask(g, n, m, axis)
    np.testing.assert_array_equal(v != 0, keep)
    np.testing.assert_array_equal(v[keep], np.float32(r) * np.where(g[keep] >= 0, -1.0, 1.0))
    per_group = np.moveaxis(v != 0, axis, -1).reshape(-1, m).sum(axis=1)
    assert np.all(per_group == n)


def test_zero_gradient_gives_n_per_group_at_lowest_indices():
    """A zero g_i counts as positive (v_i = -r), so g = 0 still gives n nonzeros per group."""
    v = np.asarray(S.nm_sparse_lmo(jnp.zeros((8, 3)), 2, 4, 1.5))
    expected = np.zeros((8, 3))
    expected[[0, 1, 4, 5]] = -1.5
    np.testing.assert_array_equal(v, expected)
    # mixed: ties among zeros and equal magnitudes of both signs; -0.0 counts as zero
    g = jnp.asarray([[0.0], [-1.0], [1.0], [-0.0]])
    np.testing.assert_array_equal(np.asarray(S.nm_sparse_lmo(g, 2, 4, 1.0))[:, 0], [0, 1, -1, 0])
    np.testing.assert_array_equal(np.asarray(S.nm_sparse_lmo(g, 3, 4, 1.0))[:, 0], [-1, 1, -1, 0])
    np.testing.assert_array_equal(np.asarray(S.nm_sparse_lmo(g, 4, 4, 1.0))[:, 0], [-1, 1, -1, -1])


def test_full_group_is_the_k_sparse_lmo():
    """With one group spanning a 1-D array, the N:M LMO is the K-sparse LMO (K = n), but for
    the sign of selected zero entries (-r here, +r there)."""
    g = jnp.asarray(np.random.default_rng(0).integers(-3, 4, 12).astype(np.float32))
    for k in (1, 5, 12):
        ref = np.asarray(S.k_sparse_lmo(g, k, 0.7))
        ref = np.where((np.asarray(g) == 0) & (ref != 0), -ref, ref)
        np.testing.assert_array_equal(np.asarray(S.nm_sparse_lmo(g, k, 12, 0.7, axis=0)), ref)


def test_conv_kernel_groups_run_along_input_channels():
    """axis=-2 of a Flax conv kernel (kh, kw, in, out): groups are 4 consecutive input channels
    at a fixed (kh, kw, out); the result is that of an explicit loop over those groups."""
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 5))
    v = np.asarray(S.nm_sparse_lmo(w, 2, 4, 1.0))
    wn = np.asarray(w)
    for i, j, o in np.ndindex(3, 3, 5):
        for c0 in (0, 4):
            grp = wn[i, j, c0:c0 + 4, o]
            top = sorted(range(4), key=lambda t: (-abs(grp[t]), t))[:2]
            expected = np.zeros(4)
            expected[top] = -np.sign(grp[top])
            np.testing.assert_array_equal(v[i, j, c0:c0 + 4, o], expected)
    # the same as grouping a transposed copy along its first axis
    vt = np.asarray(S.nm_sparse_lmo(jnp.moveaxis(w, 2, 0), 2, 4, 1.0, axis=0))
    np.testing.assert_array_equal(np.moveaxis(vt, 0, 2), v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_under_jit(dtype):
    g = jnp.asarray(np.random.default_rng(2).standard_normal((3, 8, 6)), dtype)
    v = jax.jit(lambda x: S.nm_sparse_lmo(x, 2, 4, 0.75))(g)
    assert v.dtype == dtype and v.shape == g.shape
    g32 = np.asarray(g.astype(jnp.float32))
    keep = reference_nm_mask(g32, 2, 4, -2)
    vv = np.asarray(v.astype(jnp.float32))
    np.testing.assert_array_equal(vv != 0, keep)
    np.testing.assert_array_equal(vv[keep], -0.75 * np.sign(g32[keep]))
    # traced radius
    v2 = jax.jit(lambda x, r: S.nm_sparse_lmo(x, 2, 4, r))(g, jnp.asarray(0.75, dtype))
    np.testing.assert_array_equal(np.asarray(v2.astype(jnp.float32)), vv)


def test_nan_and_inf_still_give_n_per_group():
    g = jnp.asarray([[np.nan], [np.inf], [1.0], [-np.inf]], jnp.float32)
    v = np.asarray(S.nm_sparse_lmo(g, 2, 4, 1.0))
    assert np.count_nonzero(v) == 2 and v[0, 0] != 0        # NaN ranks above inf
    np.testing.assert_array_equal(v[1:, 0], [-1.0, 0.0, 0.0])


# ---------------------------------------------------------------- the polytope

def _poly(shape=(8, 6), n=2, m=4, r=0.3, axis=-2):
    return S.NMSparsePolytope(n, m, r, size=int(np.prod(shape)), axis=axis)


def test_polytope_fields_diameter_and_from_diameter():
    c = _poly((3, 3, 8, 16), 2, 4, 0.3)
    k = 2 * 3 * 3 * 8 * 16 // 4
    assert c.k == k
    assert c.diameter == pytest.approx(2 * 0.3 * math.sqrt(k))
    # the diameter is realised by two opposite vertices
    v = np.asarray(c.lmo(jax.random.normal(jax.random.key(0), (3, 3, 8, 16))), np.float64)
    assert 2 * np.linalg.norm(v) == pytest.approx(c.diameter, rel=1e-6)
    d = S.NMSparsePolytope.from_diameter(1, 4, 5.0, size=64, axis=0)
    assert (d.n, d.m, d.size, d.axis) == (1, 4, 64, 0)
    assert d.radius == pytest.approx(5.0 / (2 * math.sqrt(16)))
    assert d.diameter == pytest.approx(5.0)
    assert not isinstance(c, S.KSparsePolytope)      # never taken by the native K-sparse kernel


@settings(max_examples=20, deadline=None)
@given(case=st.sampled_from(CASES), data=st.data(), r=st.floats(0.05, 2.0),
       scale=st.floats(0.01, 20.0))
def test_lmo_outputs_and_shift_inside_are_members(case, data, r, scale):
    shape, axis, m = case
    n = data.draw(st.integers(1, m))
    c = S.NMSparsePolytope(n, m, r, size=int(np.prod(shape)), axis=axis)
    g = _array(data, shape, ints=False)
    v = c.lmo(jnp.asarray(g))
    assert bool(c.contains(v))
    assert float(c.gauge(v)) == pytest.approx(np.float32(r), rel=1e-6)
    x = jnp.asarray(g * np.float32(scale))
    y = np.asarray(c.shift_inside(x), np.float64)
    assert bool(c.contains(jnp.asarray(y, jnp.float32)))
    # each group is a non-negative multiple (<= 1) of the input group; groups inside unchanged
    xs = np.moveaxis(np.asarray(x, np.float64), axis, -1).reshape(-1, m)
    ys = np.moveaxis(y, axis, -1).reshape(-1, m)
    for xg, yg in zip(xs, ys):
        gauge = max(np.abs(xg).max(), np.abs(xg).sum() / n)
        if gauge <= r:
            # unchanged, up to XLA:CPU flushing float32 subnormals to zero
            ftz = np.where(np.abs(xg) < np.finfo(np.float32).tiny, 0.0, xg)
            assert np.array_equal(yg, xg) or np.array_equal(yg, ftz)
        else:
            np.testing.assert_allclose(yg, xg * (r / gauge), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape, axis, n, m, r", [
    ((8, 6), -2, 2, 4, 0.4), ((2, 6, 3), 1, 1, 3, 0.2), ((3, 3, 8, 2), -2, 3, 4, 0.1)])
def test_project_is_per_group_k_sparse_projection_and_nearest(shape, axis, n, m, r):
    c = S.NMSparsePolytope(n, m, r, size=int(np.prod(shape)), axis=axis)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    xs = np.asarray(x, np.float64)
    p = np.asarray(c.project(x), np.float64)
    assert bool(c.contains(jnp.asarray(p, jnp.float32)))
    # per group the K-sparse polytope's projection (K = n)
    groups = zip(np.moveaxis(xs, axis, -1).reshape(-1, m), np.moveaxis(p, axis, -1).reshape(-1, m))
    for xg, pg in groups:
        np.testing.assert_allclose(pg, reference_project_k_sparse(xg, n, np.float32(r)),
                                   rtol=1e-5, atol=1e-5 * r)
    # variational inequality <x - p, y - p> <= 0 at every vertex y
    for _ in range(50):
        y = np.asarray(c.lmo(jnp.asarray(rng.standard_normal(shape).astype(np.float32))),
                       np.float64)
        assert np.sum((xs - p) * (y - p)) <= 1e-5


def test_two_phase_lmo_equals_lmo():
    c = _poly((3, 3, 16, 8), 2, 4, 0.5)
    g = jax.random.normal(jax.random.key(3), (3, 3, 16, 8)).at[..., :2, :].set(0.0)
    two_phase = jax.jit(lambda g: c.lmo_vertex(g, c.lmo_select(g)))(g)
    np.testing.assert_array_equal(np.asarray(two_phase), np.asarray(jax.jit(c.lmo)(g)))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 16), lr=st.floats(0.05, 1.0), mu=st.floats(0.0, 0.95),
       rescale=st.sampled_from(["gradient", "diameter", None]))
def test_sfw_iterates_stay_feasible(seed, lr, mu, rescale):
    """sfw() over random gradient sequences: every iterate lies in its N:M polytope."""
    params = {"conv": jnp.zeros((3, 3, 8, 4)), "dense": jnp.zeros((12, 5)),
              "bias": jnp.zeros(5)}
    cons = {"conv": S.NMSparsePolytope(2, 4, 0.2, size=288),
            "dense": S.NMSparsePolytope(1, 4, 0.5, size=60), "bias": S.Unconstrained()}
    key = jax.random.key(seed)
    params = S.make_feasible(jax.tree.map(lambda x: jax.random.normal(key, x.shape), params),
                             cons)
    assert S.contains_all(params, cons)
    tx = sfw(lr, cons, momentum=mu, rescale=rescale, unconstrained=optax.identity())
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(12):
        grads = jax.tree.map(lambda x, i: 3 * jax.random.normal(jax.random.fold_in(key, 7 * t + i),
                                                                x.shape),
                             params, {"conv": 1, "dense": 2, "bias": 3})
        updates, state = step(grads, state, params)
        # the unconstrained leaf gets the identity's update: the incoming one
        np.testing.assert_array_equal(np.asarray(updates["bias"]), np.asarray(grads["bias"]))
        updates = {**updates, "bias": jnp.zeros(5)}
        params = optax.apply_updates(params, updates)
        assert S.contains_all(params, cons), t


# ---------------------------------------------------------------- make_constraints

PARAMS = {"conv1": {"kernel": jnp.ones((3, 3, 3, 8))},            # 3 input channels: no groups
          "conv2": {"kernel": jnp.ones((3, 3, 8, 16)), "bias": jnp.zeros(16)},
          "bn": {"scale": jnp.ones(16), "bias": jnp.zeros(16)},
          "fc": {"kernel": jnp.ones((16, 10))}}


def test_make_constraints_nm_sparse():
    norms = jax.tree.map(lambda x: 2.0, PARAMS)
    c = S.make_constraints(PARAMS, "nm_sparse", n=2, m=4, value=7.0, init_norms=norms)
    conv2 = c["conv2"]["kernel"]
    assert conv2 == S.NMSparsePolytope(2, 4, conv2.radius, size=1152, axis=-2)
    k = 2 * 1152 // 4
    assert conv2.radius == pytest.approx(2 * 7.0 * 2.0 / (2 * math.sqrt(k)))   # r = D / (2 sqrt K)
    assert c["fc"]["kernel"].k == 2 * 160 // 4
    for leaf in (c["conv1"]["kernel"], c["conv2"]["bias"], c["bn"]["scale"], c["bn"]["bias"]):
        assert leaf == S.Unconstrained()
    # radius mode, another axis, and the fallback as a kind name or an object
    c = S.make_constraints(PARAMS, "nm_sparse", n=1, m=8, mode="radius", value=0.5, axis=-1,
                           fallback="k_sparse", k=3)
    assert c["conv1"]["kernel"] == S.NMSparsePolytope(1, 8, 0.5, size=216, axis=-1)
    assert c["fc"]["kernel"] == S.KSparsePolytope(8, 0.5)      # 10 outputs: no groups, K = 8
    assert c["bn"]["bias"] == S.KSparsePolytope(3, 0.5)
    ball = S.LpBall(2.0, 1.0)
    c = S.make_constraints(PARAMS, "nm_sparse", mode="radius", value=0.5, fallback=ball,
                           where=lambda path, leaf: path[-1] != "scale")
    assert c["conv2"]["bias"] == ball and c["bn"]["scale"] == S.Unconstrained()
    assert isinstance(c["conv2"]["kernel"], S.NMSparsePolytope)


# ---------------------------------------------------------------- nm_mask

def test_nm_mask_matches_reference_and_the_lmo():
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda x: jnp.asarray(rng.integers(-3, 4, x.shape).astype(np.float32)),
                          PARAMS)
    for n, m in ((2, 4), (1, 4), (4, 4)):
        mask = jax.jit(lambda p, n=n, m=m: nm_mask(p, n, m))(params)
        assert jax.tree.structure(mask) == jax.tree.structure(params)
        for path in (("conv2", "kernel"), ("fc", "kernel")):
            w = np.asarray(params[path[0]][path[1]])
            np.testing.assert_array_equal(np.asarray(mask[path[0]][path[1]]),
                                          reference_nm_mask(w, n, m, -2))
            lmo_support = np.asarray(S.nm_sparse_lmo(jnp.asarray(w), n, m, 1.0)) != 0
            np.testing.assert_array_equal(np.asarray(mask[path[0]][path[1]]), lmo_support)
        for path in (("conv1", "kernel"), ("conv2", "bias"), ("bn", "scale")):
            assert np.all(np.asarray(mask[path[0]][path[1]]))
    # masks nest: 1:4 keeps a subset of 2:4
    m14, m24 = nm_mask(params, 1, 4), nm_mask(params, 2, 4)
    for a, b in zip(jax.tree.leaves(m14), jax.tree.leaves(m24)):
        assert np.all(np.asarray(b)[np.asarray(a)])
    assert S.nm_mask is nm_mask
    # include: an explicit selection, and one that cannot be grouped
    only_fc = nm_mask(params, 2, 4, include=lambda path, leaf: path[0] == "fc")
    assert np.all(np.asarray(only_fc["conv2"]["kernel"]))
    assert int(np.sum(~np.asarray(only_fc["fc"]["kernel"]))) == 80
    with pytest.raises(ValueError, match=r"params leaf 'conv1/kernel' \(shape \(3, 3, 3, 8\)\) "
                                         r"must be a positive multiple of m=4, got 3"):
        nm_mask(params, 2, 4, include=lambda path, leaf: path[-1] == "kernel")


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("args, match", [
    ((jnp.ones((8, 2)), 0, 4, 1.0), r"n must be an int in \[1, m=4\].*got 0"),
    ((jnp.ones((8, 2)), 5, 4, 1.0), r"n must be an int in \[1, m=4\].*got 5"),
    ((jnp.ones((8, 2)), 1.5, 4, 1.0), r"n must be an int in \[1, m=4\].*got 1.5"),
    ((jnp.ones((8, 2)), 1, 0, 1.0), r"m must be an int >= 1.*got 0"),
    ((jnp.ones((8, 2)), 1, 4, 0.0), r"radius must be a finite number > 0, got 0.0"),
    ((jnp.ones((8, 2)), 1, 4, -2.0), r"radius must be a finite number > 0, got -2.0"),
    ((jnp.ones((8, 2)), 1, 4, math.inf), r"radius must be a finite number > 0, got inf"),
    ((jnp.ones((8, 2)), 1, 4, math.nan), r"radius must be a finite number > 0, got nan"),
    ((jnp.ones((6, 2)), 2, 4, 1.0), r"size of axis -2 of g \(shape \(6, 2\)\) must be a "
                                    r"positive multiple of m=4, got 6"),
    ((jnp.ones(8), 2, 4, 1.0), r"axis=-2 is out of range for an array of shape \(8,\) \(rank 1\)"
                               r".*for a 1-D array pass axis=0"),
    ((jnp.ones(()), 2, 4, 1.0), r"axis=-2 is out of range for an array of shape \(\) \(rank 0\)"),
])
def test_lmo_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        S.nm_sparse_lmo(*args)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match=r"axis=2 is out of range for an array of shape \(8, 2\)"):
        S.nm_sparse_lmo(jnp.ones((8, 2)), 2, 4, 1.0, axis=2)
    with pytest.raises(ValueError, match=r"axis must be an int, got 'in'"):
        S.nm_sparse_lmo(jnp.ones((8, 2)), 2, 4, 1.0, axis="in")
    with pytest.raises(ValueError, match=r"size must be a multiple of m=4.*got 10"):
        S.NMSparsePolytope(2, 4, 1.0, size=10)
    with pytest.raises(ValueError, match=r"size must be an int >= 1, got 0"):
        S.NMSparsePolytope(2, 4, 1.0, size=0)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, m=2\].*got 3"):
        S.NMSparsePolytope(3, 2, 1.0, size=8)
    with pytest.raises(ValueError, match=r"radius must be a finite number > 0, got -1"):
        S.NMSparsePolytope(1, 2, -1, size=8)
    with pytest.raises(ValueError, match=r"diameter must be a finite number > 0, got 0"):
        S.NMSparsePolytope.from_diameter(1, 2, 0, size=8)
    with pytest.raises(TypeError):
        S.NMSparsePolytope(1, 2, 1.0, 8)                   # size is keyword-only
    with pytest.raises(ValueError, match=r"fallback must be a constraint object or one of .*"
                                         r"got 'nm_sparse'"):
        S.make_constraints(PARAMS, "nm_sparse", mode="radius", value=1.0, fallback="nm_sparse")
    with pytest.raises(ValueError, match=r"m must be an int >= 1.*got -4"):
        S.make_constraints(PARAMS, "nm_sparse", mode="radius", value=1.0, m=-4)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, m=4\].*got 0"):
        nm_mask(PARAMS, 0, 4)
    with pytest.raises(ValueError, match=r"axis must be an int, got 1.0"):
        nm_mask(PARAMS, 2, 4, axis=1.0)
