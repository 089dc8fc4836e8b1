"""SFW as an optax transformation: agreement with a NumPy transliteration of the reference step,
feasibility, composition with optax building blocks, and input validation."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import sfw_jax as S
from sfw_jax.fw import topk

SHAPES = {"w": (4, 6), "b": (6,), "v": (3, 2, 2)}


def np_k_sparse_lmo(d, k, r):
    """The reference's KSparsePolytope.lmo in NumPy (torch.topk order: lower index on ties)."""
    flat = d.reshape(-1)
    idx = sorted(range(flat.size), key=lambda i: (-abs(flat[i]), i))[:k]
    v = np.zeros_like(flat)
    v[idx] = np.where(flat[idx] > 0, -r, r)      # sign convention for 0: +r (documented)
    return v.reshape(d.shape)


def np_lp_lmo(d, p, r):
    if p == 2:
        nrm = np.linalg.norm(d)
        return -r * d / nrm if nrm > 1e-10 else np.zeros_like(d)
    if math.isinf(p):
        return np.where(d > 0, -r, r).astype(d.dtype)
    raise NotImplementedError


class NumpySFW:
    """Transliteration of the reference ``SFW.step`` (per tensor; first step m = g)."""

    def __init__(self, lr, momentum, rescale, lmos, diameters):
        self.lr, self.mu, self.rescale = lr, momentum, rescale
        self.lmos, self.diameters, self.buf = lmos, diameters, {}

    def step(self, params, grads):
        out = {}
        for name, p in params.items():
            d_p = grads[name]
            if self.mu > 0:
                if name not in self.buf:
                    self.buf[name] = d_p.copy()
                else:
                    self.buf[name] = self.buf[name] * self.mu + d_p * (1 - self.mu)
                    d_p = self.buf[name]
            v = self.lmos[name](d_p)
            if self.rescale == "diameter":
                factor = 1.0 / self.diameters[name]
            elif self.rescale == "gradient":
                with np.errstate(divide="ignore"):   # x = v: inf, clipped to 1 (a no-op step)
                    factor = np.linalg.norm(d_p) / np.linalg.norm(p - v)
            else:
                factor = 1.0
            lr = max(0.0, min(factor * self.lr, 1.0))
            out[name] = p * (1 - lr) + v * lr
        return out


def _problem(seed, kind):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(np.float64) for k, s in SHAPES.items()}
    jparams = jax.tree.map(jnp.asarray, params)
    if kind == "k_sparse":
        cons = S.make_constraints(jparams, "k_sparse", k=3, k_frac=0.2, mode="diameter", value=4.0)
        lmos = {k: (lambda d, c=cons[k]: np_k_sparse_lmo(d, c.k, c.radius)) for k in SHAPES}
    elif kind == "l2":
        cons = S.make_constraints(jparams, "l2", mode="radius", value=1.5)
        lmos = {k: (lambda d: np_lp_lmo(d, 2, 1.5)) for k in SHAPES}
    else:
        cons = S.make_constraints(jparams, "linf", mode="radius", value=0.3)
        lmos = {k: (lambda d: np_lp_lmo(d, math.inf, 0.3)) for k in SHAPES}
    params = jax.tree.map(np.asarray, S.make_feasible(jparams, cons))
    diameters = {k: cons[k].diameter for k in SHAPES}
    grads = [{k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(6)]
    return params, cons, lmos, diameters, grads


@pytest.fixture(autouse=True, scope="module")
def _x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("kind", ["k_sparse", "l2", "linf"])
@pytest.mark.parametrize("rescale", ["gradient", "diameter", None])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_matches_numpy_reference_step(kind, rescale, momentum):
    params, cons, lmos, diameters, grads = _problem(0, kind)
    ref = NumpySFW(0.7 if rescale != "diameter" else 3.0, momentum, rescale, lmos, diameters)
    tx = S.sfw(ref.lr, cons, momentum=momentum, rescale=rescale)
    jp = jax.tree.map(jnp.asarray, params)
    state = tx.init(jp)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    np_params = params
    for g in grads:
        updates, state = step(jax.tree.map(jnp.asarray, g), state, jp)
        jp = optax.apply_updates(jp, updates)
        np_params = ref.step(np_params, g)
        for k in SHAPES:
            np.testing.assert_allclose(np.asarray(jp[k]), np_params[k], rtol=1e-10, atol=1e-12)
    assert S.contains_all(jp, cons)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["k_sparse", "l1", "l2", "linf", "k_support"]),
       lr=st.floats(0.01, 5.0), mu=st.floats(0.0, 0.99))
def test_iterates_stay_feasible(seed, kind, lr, mu):
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.standard_normal(s) * 5, jnp.float32) for k, s in SHAPES.items()}
    cons = S.make_constraints(params, kind, k=2, k_frac=0.1, mode="radius", value=0.5)
    params = S.make_feasible(params, cons)
    tx = S.sfw(lr, cons, momentum=mu)
    state = tx.init(params)
    for _ in range(5):
        g = {k: jnp.asarray(rng.standard_normal(s) * 10 ** rng.uniform(-3, 3), jnp.float32)
             for k, s in SHAPES.items()}
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        assert S.contains_all(params, cons)


def test_schedule_learning_rate_and_inject_hyperparams():
    params, cons, lmos, diameters, grads = _problem(1, "l2")
    jp = jax.tree.map(jnp.asarray, params)
    sched = optax.piecewise_constant_schedule(0.5, {2: 0.2})   # lr 0.1 from step 2 on
    tx_sched = S.sfw(sched, cons, momentum=0.5)
    tx_inj = optax.inject_hyperparams(S.sfw, static_args=("constraints", "rescale"))(
        learning_rate=0.5, constraints=cons, momentum=0.5)
    s1, s2 = tx_sched.init(jp), tx_inj.init(jp)
    p1 = p2 = jp
    for i, g in enumerate(grads):
        g = jax.tree.map(jnp.asarray, g)
        if i == 2:
            s2.hyperparams["learning_rate"] = jnp.asarray(0.1)
        u1, s1 = jax.jit(tx_sched.update)(g, s1, p1)
        u2, s2 = jax.jit(tx_inj.update)(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(p1[k]), np.asarray(p2[k]), rtol=1e-12)
    # and the schedule really changed the trajectory
    tx_const = S.sfw(0.5, cons, momentum=0.5)
    s3, p3 = tx_const.init(jp), jp
    for g in grads:
        u3, s3 = tx_const.update(jax.tree.map(jnp.asarray, g), s3, p3)
        p3 = optax.apply_updates(p3, u3)
    assert not np.allclose(np.asarray(p3["w"]), np.asarray(p1["w"]))


def test_chain_with_clipping_equals_sfw_on_clipped_gradients():
    params, cons, _, _, grads = _problem(2, "k_sparse")
    jp = jax.tree.map(jnp.asarray, params)
    chained = optax.chain(optax.clip_by_global_norm(0.5), S.sfw(0.3, cons))
    plain = S.sfw(0.3, cons)
    clip = optax.clip_by_global_norm(0.5)
    sc, sp = chained.init(jp), plain.init(jp)
    pc = pp = jp
    for g in grads:
        g = jax.tree.map(jnp.asarray, g)
        uc, sc = chained.update(g, sc, pc)
        gclip, _ = clip.update(g, clip.init(pp))
        up, sp = plain.update(gclip, sp, pp)
        pc, pp = optax.apply_updates(pc, uc), optax.apply_updates(pp, up)
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(pc[k]), np.asarray(pp[k]), rtol=1e-12)


def test_partition_routes_unconstrained_leaves_to_sgd():
    """Kernels get SFW, the rest (e.g. BatchNorm) plain SGD through optax.partition."""
    params, _, _, _, grads = _problem(3, "l2")
    jp = jax.tree.map(jnp.asarray, params)
    labels = {"w": "sfw", "v": "sfw", "b": "sgd"}
    cons = S.make_constraints(jp, "k_sparse", k=2, mode="radius", value=0.4,
                              where=lambda path, leaf: labels[path[0]] == "sfw")
    assert isinstance(cons["b"], S.Unconstrained)
    jp = S.make_feasible(jp, cons)
    tx = optax.partition({"sfw": S.sfw(0.5, cons), "sgd": optax.sgd(0.1)}, labels)
    state = tx.init(jp)
    g = jax.tree.map(jnp.asarray, grads[0])
    u, state = jax.jit(tx.update)(g, state, jp)
    np.testing.assert_allclose(np.asarray(u["b"]), -0.1 * np.asarray(g["b"]), rtol=1e-12)
    sfw_alone = S.sfw(0.5, cons, unconstrained=optax.identity())
    u_ref, _ = sfw_alone.update(g, sfw_alone.init(jp), jp)
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(u_ref["w"]), rtol=1e-12)
    assert S.contains_all(optax.apply_updates(jp, u), cons)


def test_unconstrained_leaves_need_a_transformation():
    """f = sum(b^2) on a bias b = 1 with K-sparse kernels (``where=is_kernel``): sfw never adds
    the raw gradient to b (which would give b = 3, 9, 27): without ``unconstrained`` it names the
    leaf; with ``unconstrained=optax.sgd(0.1)`` b decreases as SGD's b <- b - 0.1 * 2b;
    ``optax.identity()`` passes the incoming update through (for a chain that pre-transforms)."""
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
    cons = S.make_constraints(params, "k_sparse", k=2, mode="radius", value=1.0,
                              where=S.is_kernel)
    assert isinstance(cons["b"], S.Unconstrained) and isinstance(cons["w"], S.KSparsePolytope)
    loss = lambda p: jnp.sum(p["b"] ** 2) + jnp.sum(p["w"])  # noqa: E731
    tx = S.sfw(0.5, cons)
    with pytest.raises(ValueError, match=r"leaf 'b' is Unconstrained\(\).*unconstrained=.*"
                                         r"optax.partition"):
        tx.init(params)
    live_state = S.sfw(0.5, cons, unconstrained=optax.identity()).init(params)
    with pytest.raises(ValueError, match="sfw update: leaf 'b' is Unconstrained"):
        tx.update(jax.grad(loss)(params), live_state.inner_states["sfw"].inner_state, params)

    tx = S.sfw(0.5, cons, unconstrained=optax.sgd(0.1))
    state, p, bs = tx.init(params), params, []
    for _ in range(3):
        u, state = jax.jit(tx.update)(jax.grad(loss)(p), state, p)
        p = optax.apply_updates(p, u)
        bs.append(float(p["b"][0]))
    np.testing.assert_allclose(bs, [0.8, 0.64, 0.512], rtol=1e-6)
    assert S.contains_all(p, cons)

    tx = S.sfw(0.5, cons, unconstrained=optax.identity())
    g = jax.grad(loss)(params)
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(g["b"]))
    with pytest.raises(ValueError, match="unconstrained must be an optax.GradientTransformation"):
        S.sfw(0.5, cons, unconstrained=0.1)


def test_unconstrained_matches_an_explicit_partition():
    """``sfw(..., unconstrained=sgd)`` is bitwise the documented partition of the two."""
    params, _, _, _, grads = _problem(4, "l2")
    jp = jax.tree.map(jnp.asarray, params)
    cons = S.make_constraints(jp, "l2", mode="radius", value=2.0,
                              where=lambda path, leaf: path[0] != "b")
    routed = S.sfw(0.5, cons, unconstrained=optax.sgd(0.1, momentum=0.9))
    labels = {"w": "sfw", "v": "sfw", "b": "sgd"}
    explicit = optax.partition({"sfw": S.sfw(0.5, cons), "sgd": optax.sgd(0.1, momentum=0.9)},
                               labels)
    s1, s2, p1, p2 = routed.init(jp), explicit.init(jp), jp, jp
    for g in grads[:3]:
        g = jax.tree.map(jnp.asarray, g)
        u1, s1 = routed.update(g, s1, p1)
        u2, s2 = explicit.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for k in SHAPES:
        np.testing.assert_array_equal(np.asarray(p1[k]), np.asarray(p2[k]))


def test_apply_if_finite_skips_non_finite_steps():
    params, cons, _, _, grads = _problem(5, "linf")
    jp = jax.tree.map(jnp.asarray, params)
    tx = optax.apply_if_finite(S.sfw(0.5, cons), max_consecutive_errors=3)
    state = tx.init(jp)
    bad = jax.tree.map(lambda x: jnp.full_like(jnp.asarray(x), jnp.nan), grads[0])
    u, state = tx.update(bad, state, jp)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u))
    assert int(state.notfinite_count) == 1
    u, state = tx.update(jax.tree.map(jnp.asarray, grads[1]), state, jp)
    assert int(state.notfinite_count) == 0
    assert float(jnp.abs(u["w"]).max()) > 0


def test_momentum_state_and_first_step():
    """First step uses m = g (not (1 - mu) g); the state holds m."""
    params, cons, _, _, grads = _problem(6, "l2")
    jp = jax.tree.map(jnp.asarray, params)
    tx = S.sfw(0.5, cons, momentum=0.9)
    s = tx.init(jp)
    g0, g1 = (jax.tree.map(jnp.asarray, g) for g in grads[:2])
    _, s = tx.update(g0, s, jp)
    np.testing.assert_allclose(np.asarray(s.momentum["w"]), np.asarray(g0["w"]))
    _, s = tx.update(g1, s, jp)
    np.testing.assert_allclose(np.asarray(s.momentum["w"]),
                               0.9 * np.asarray(g0["w"]) + 0.1 * np.asarray(g1["w"]), rtol=1e-12)
    assert int(s.count) == 2


def test_bfloat16_params():
    rng = np.random.default_rng(7)
    params = {"w": jnp.asarray(rng.standard_normal((8, 8)), jnp.bfloat16)}
    cons = S.make_constraints(params, "k_sparse", k=5, mode="radius", value=0.2)
    params = S.make_feasible(params, cons)
    tx = S.sfw(1.0, cons)
    s = tx.init(params)
    for _ in range(3):
        u, s = jax.jit(tx.update)({"w": jnp.asarray(rng.standard_normal((8, 8)), jnp.bfloat16)},
                                  s, params)
        assert u["w"].dtype == jnp.bfloat16
        params = optax.apply_updates(params, u)
    assert params["w"].dtype == jnp.bfloat16 and S.contains_all(params, cons)


def test_bad_input():
    params, cons, _, _, grads = _problem(8, "l2")
    jp = jax.tree.map(jnp.asarray, params)
    tx = S.sfw(0.5, cons)
    with pytest.raises(ValueError, match="params"):
        tx.update(jax.tree.map(jnp.asarray, grads[0]), tx.init(jp))
    with pytest.raises(ValueError, match=r"rescale must be one of .*got 'grad'"):
        S.sfw(0.5, cons, rescale="grad")
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number in \[0.0, inf\), got -1"):
        S.sfw(-1, cons)
    with pytest.raises(ValueError, match=r"momentum must be a finite number in \[0.0, 1.0\), got 1.0"):
        S.sfw(0.5, cons, momentum=1.0)
    with pytest.raises(ValueError, match="constraints must be a pytree of constraint objects"):
        S.sfw(0.5, {"w": cons["w"]}).init(jp)
    with pytest.raises(ValueError, match="leaves are constraint objects"):
        S.sfw(0.5, {"w": 1.0})
    with pytest.raises(ValueError, match="batch_select must be None, True or False, got 'on'"):
        S.sfw(0.5, cons, batch_select="on")
    with pytest.raises(ValueError, match="tree_select must be None, True or False, got 1"):
        S.sfw(0.5, cons, tree_select=1)


def _same_shape_tree(dtype):
    """Three (120, 100) leaves (n = 12000), two (6, 6, 40) leaves, one odd leaf and an L2 ball."""
    rng = np.random.default_rng(3)
    shapes = {"a": (120, 100), "b": (120, 100), "c": (120, 100), "d": (6, 6, 40),
              "e": (6, 6, 40), "f": (70, 3), "g": (120, 100)}
    params = {k: jnp.asarray(rng.standard_normal(s) * 0.05, dtype) for k, s in shapes.items()}
    grads = [{k: jnp.asarray(rng.standard_normal(s) * 0.1 + (k == "b"), dtype)
              for k, s in shapes.items()} for _ in range(3)]
    return params, grads


def _sfw_steps(params, grads, cons, **kw):
    tx = S.sfw(0.5, cons, momentum=0.9, cpu_kernel=False, **kw)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    state = tx.init(params)
    for g in grads:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state, jax.make_jaxpr(step)(grads[0], state, params)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["bisect", "search"])
def test_batched_selection_is_bitwise_the_per_leaf_path(method, dtype):
    """batch_select=True computes the (t, cut) of each group of same-shaped leaves by one vmap;
    params and momentum after SFW steps are bitwise those of the per-leaf selections."""
    params, grads = _same_shape_tree(dtype)
    cons = S.make_constraints(params, "k_sparse", k=10, k_frac=0.05, mode="radius",
                              value=0.05, method=method)
    cons["g"] = S.LpBall(2.0, 1.0)                   # same shape, another set: not grouped
    params = S.make_feasible(params, cons)
    on = _sfw_steps(params, grads, cons, batch_select=True, tree_select=False)
    off = _sfw_steps(params, grads, cons, batch_select=False, tree_select=False)
    for a, b in zip(jax.tree.leaves(on[:2]), jax.tree.leaves(off[:2])):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    assert float(jnp.max(jnp.abs(on[0]["a"].astype(jnp.float32) - params["a"]))) > 0
    if method == "bisect":          # grouped: one [3, n, 15] comparison per pass, not three
        text_on, text_off = str(on[2]), str(off[2])
        assert text_on.count("bool[3,12000,15] = ge") == topk.bisect_passes(dtype)
        assert "bool[3,12000,15]" not in text_off
        assert text_off.count("bool[12000,15] = ge") == 3 * topk.bisect_passes(dtype)


# one pass of the segmented search: every key of the blocked view against 15 thresholds
_TREE_PASS = re.compile(r"bool\[\d+,32,15,32\] = ge")


def _assert_close_steps(got, want, dtype):
    """Params after steps agree to the rounding of eta (the tree's norms are summed in another
    order); the momenta are bitwise equal."""
    rtol = 1e-5 if dtype == jnp.float32 else 2 ** -7
    for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0])):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=rtol, atol=rtol * 0.05)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_tree_selection_is_the_per_leaf_selection(dtype):
    """tree_select=True selects every K-sparse leaf with K < n (all shapes) by one segmented
    search: the masks of the per-leaf selections (their (t, cut) may differ where no entry
    tells them apart: 'search' stops at any t with F(t) = K, 'bisect' at a subnormal tied with
    0 where the backend flushes them), the norms summed on the flat view (to rounding); an L2
    ball, a K >= n leaf and a leaf with zero momentum (every entry tied) among them."""
    params, grads = _same_shape_tree(dtype)
    cons = S.make_constraints(params, "k_sparse", k=10, k_frac=0.05, mode="radius",
                              value=0.05, method="search")
    cons["g"] = S.LpBall(2.0, 1.0)
    cons["f"] = S.KSparsePolytope(500, 0.05)             # K >= n = 210: the dense vertex
    params = S.make_feasible(params, cons)
    grads[0]["d"] = jnp.zeros_like(grads[0]["d"])
    on = _sfw_steps(params, grads, cons, tree_select=True, batch_select=False)
    off = _sfw_steps(params, grads, cons, tree_select=False, batch_select=False)
    _assert_close_steps(on, off, dtype)
    text = str(on[2])
    assert len(_TREE_PASS.findall(text)) == topk.bisect_passes(dtype)   # one search for all
    assert "while[" not in text                           # no per-leaf 'search'
    ms = [jnp.asarray(grads[0][k]) for k in "abcde"]
    ks = [S.sparsity_k(m.size, 10, 0.05) for m in ms]
    from sfw_jax.fw import _step
    sels = _step.tree_front([cons[k] for k in "abcde"], ms, [params[k] for k in "abcde"],
                            range(5))
    for j, (m, k) in enumerate(zip(ms, ks)):
        mask = np.asarray(topk.threshold_mask(m, *sels[j][0], absolute=True))
        assert mask.sum() == k
        for method in ("bisect", "search"):
            sel = topk.top_k_threshold(m, k, absolute=True, method=method)
            np.testing.assert_array_equal(mask, topk.threshold_mask(m, *sel, absolute=True))


def test_accelerator_defaults_off_the_cpu(monkeypatch):
    """With a non-CPU default backend, sfw() with default arguments takes the XLA path with one
    segmented search over the tree (no while loop or conditional in the update): its steps are
    bitwise those of the explicit settings, and to rounding those of the per-leaf 'bisect'
    selections."""
    params, grads = _same_shape_tree(jnp.float32)
    cons = S.make_constraints(params, "k_sparse", k=10, k_frac=0.05, mode="radius", value=0.05)
    params = S.make_feasible(params, cons)
    explicit = S.make_constraints(params, "k_sparse", k=10, k_frac=0.05, mode="radius",
                                  value=0.05, method="bisect")
    want = _sfw_steps(params, grads, explicit, batch_select=True, tree_select=True)
    per_leaf = _sfw_steps(params, grads, explicit, batch_select=False, tree_select=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert topk.resolve_method(12000) == "bisect"
    tx = S.sfw(0.5, cons, momentum=0.9)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    state, p = tx.init(params), params
    for g in grads:
        u, state = step(g, state, p)
        p = optax.apply_updates(p, u)
    text = str(jax.make_jaxpr(step)(grads[0], state, p))
    assert "while[" not in text and "cond[" not in text
    assert len(_TREE_PASS.findall(text)) == topk.bisect_passes(jnp.float32)
    for a, b in zip(jax.tree.leaves((p, state)), jax.tree.leaves(want[:2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _assert_close_steps((p, state), per_leaf, jnp.float32)
