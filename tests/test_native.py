"""The native CPU kernel (``sfw_jax.fw.native``, ``sfw(..., cpu_kernel=True)``) against the XLA path.

Its momentum must be bitwise the XLA path's, its selection the exact top-k of ``|m|`` (ties by
lower index, denormals as zero: the NumPy reference of ``test_topk``), and its two squared norms
the float64 sums of the same terms to float32 accuracy.
"""

from __future__ import annotations

import platform
import shutil
import warnings

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings

from sfw_jax import make_constraints, sfw
from sfw_jax.fw import native
from sfw_jax.fw import _sfw as sfw_mod
from sfw_jax.fw import topk
from sfw_jax.fw._constraints import KSparsePolytope, LpBall, NMSparsePolytope
from tests.conftest import fresh_native_kernel
from tests.test_topk import reference_mask


if platform.machine().lower() not in ("x86_64", "amd64"):
    pytest.skip(f"the native kernel is x86-64 only; this machine is {platform.machine()}",
                allow_module_level=True)
if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
    pytest.skip("the native kernel needs a C++ compiler (c++, g++ or clang++ on PATH)",
                allow_module_level=True)

RADIUS = 0.37


def _kernel(g, mp, x, count, mu, k, r=RADIUS):
    f = jax.jit(lambda g, mp, x: native.sfw_select_f32(g, mp, x, jnp.int32(count),
                                                       jnp.float32(mu), k, r))
    return f(jnp.asarray(g), jnp.asarray(mp), jnp.asarray(x))


def _xla_momentum(g, mp, count, mu):
    f = jax.jit(lambda g, mp: sfw_mod._leaf_momentum(g, mp, g, jnp.int32(count), mu))
    return np.asarray(f(jnp.asarray(g), jnp.asarray(mp)))


def _check(g, mp, x, count, mu, k):
    m, (t, cut), sq_m, sq_d = _kernel(g, mp, x, count, mu, k)
    m = np.asarray(m)
    m_ref = _xla_momentum(g, mp, count, mu)
    assert m.dtype == np.float32 and m.shape == np.shape(g)
    np.testing.assert_array_equal(m.view(np.uint32), m_ref.view(np.uint32))
    mask = np.asarray(topk.threshold_mask(jnp.asarray(m), t, cut, absolute=True))
    want = reference_mask(np.abs(m_ref), k)
    np.testing.assert_array_equal(mask, want)
    # the norms: float64 sums of the float32 terms
    m64 = m.astype(np.float64).reshape(-1)
    flat = mask.reshape(-1)
    v = np.where(flat, np.where(m.reshape(-1) >= np.finfo(np.float32).tiny, -1.0, 1.0)
                 * np.float64(np.float32(RADIUS)), 0.0)
    d = v - np.asarray(x, np.float64).reshape(-1)
    np.testing.assert_allclose(float(sq_m), np.sum(m64 * m64), rtol=1e-5)
    np.testing.assert_allclose(float(sq_d), np.sum(d * d), rtol=1e-5)
    return int(cut)


def _data(rng, n, kind):
    g = rng.standard_normal(n).astype(np.float32)
    mp = rng.standard_normal(n).astype(np.float32)
    x = (0.2 * rng.standard_normal(n)).astype(np.float32)
    if kind == "ties":                     # few distinct values: thousands tie at the threshold
        g, mp = np.round(g * 2) / 2, np.round(mp * 2) / 2
    elif kind == "subnormal":
        g[::7] = np.float32(1e-40)
        mp[::5] = np.float32(-3e-41)
        g[1::7] = np.float32(-0.0)
    elif kind == "zeros":                  # most entries exactly 0: the threshold is 0
        g[n // 50:] = 0.0
        mp[:] = 0.0
    return g.astype(np.float32), mp.astype(np.float32), x


@pytest.mark.parametrize("kind", ["gauss", "ties", "subnormal", "zeros"])
@pytest.mark.parametrize("count", [0, 5])
@pytest.mark.parametrize("n,k", [(40_000, 2_000), (70_001, 3), (33_333, 33_332), (1_000, 50)])
def test_kernel_matches_xla_and_exact_top_k(n, k, count, kind):
    rng = np.random.default_rng(n + k + count)
    _check(*_data(rng, n, kind), count, 0.9, k)


def test_kernel_ties_cut_through_the_threshold():
    rng = np.random.default_rng(0)
    g, mp, x = _data(rng, 100_000, "ties")
    # count 0: m = g has values in steps of 0.5; k = 5000 falls inside a block of equal values
    cut = _check(g, mp, x, 0, 0.9, 5000)
    assert cut < 100_000                   # the cut splits the ties at t


def test_kernel_bracket_miss_falls_back_exactly():
    """The sample (every (n / s)-th entry) sees only small values; the large ones sit between
    the sample positions, so the bracket misses and the second pass must give the same result."""
    n, k = 65_536, 20_000
    rng = np.random.default_rng(1)
    g = (1e-3 * rng.standard_normal(n)).astype(np.float32)
    s = max(1024, n // 128)
    sampled = np.zeros(n, bool)
    sampled[np.arange(s) * n // s] = True
    g[~sampled] += np.where(rng.random((~sampled).sum()) < 0.5, 10.0, 0.0).astype(np.float32)
    mp = rng.standard_normal(n).astype(np.float32)
    x = (0.2 * rng.standard_normal(n)).astype(np.float32)
    _check(g, mp, x, 0, 0.9, k)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3000), data=st.data())
def test_kernel_exact_on_random_small_arrays(n, data):
    k = data.draw(st.integers(1, n))
    levels = data.draw(st.integers(1, 8))      # few levels: many ties
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    g = (rng.integers(-levels, levels + 1, n) / 4).astype(np.float32)
    mp = (rng.integers(-levels, levels + 1, n) / 4).astype(np.float32)
    x = rng.standard_normal(n).astype(np.float32)
    _check(g, mp, x, data.draw(st.sampled_from([0, 1])), 0.5, k)


def test_kernel_is_deterministic():
    rng = np.random.default_rng(2)
    g, mp, x = _data(rng, 1_000_003, "gauss")
    a = _kernel(g, mp, x, 3, 0.9, 50_000)
    b = _kernel(g, mp, x, 3, 0.9, 50_000)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _tree():
    key = jax.random.split(jax.random.key(0), 5)
    return {"big": 0.05 * jax.random.normal(key[0], (64, 3, 3, 80)),          # 46080: kernel
            "conv": 0.05 * jax.random.normal(key[1], (3, 3, 32, 128)),        # 36864: kernel
            "small": 0.05 * jax.random.normal(key[2], (100, 10)),             # 1000: kernel
            "bias": 0.05 * jax.random.normal(key[3], (10,)),                  # K = n: XLA
            "half": (0.05 * jax.random.normal(key[4], (200, 200))).astype(jnp.bfloat16)}


def _run(cpu_kernel, steps=6, lp_small=False):
    params = _tree()
    cons = make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=5.0,
                            mode="initialization",
                            init_norms=jax.tree.map(lambda _: 1.0, params))
    if lp_small:                               # an L2 ball: not on the kernel
        cons = dict(cons, small=LpBall(2.0, 1.0))
    opt = sfw(0.5, cons, momentum=0.9, cpu_kernel=cpu_kernel)
    target = jax.tree.map(lambda p: jnp.ones_like(p), params)

    def loss(p):
        return sum(jnp.sum((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2 * (1 + i))
                   for i, (a, b) in enumerate(zip(jax.tree.leaves(p), jax.tree.leaves(target))))

    @jax.jit
    def step(p, s):
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    s = opt.init(params)
    out = []
    for _ in range(steps):
        params, s = step(params, s)
        out.append((params, s))
    return out


def test_sfw_cpu_kernel_follows_the_xla_path():
    xla, nat = _run(False), _run(True)
    # step 1: identical momentum and selection; eta differs at most in its last bits
    (p1x, s1x), (p1n, s1n) = xla[0], nat[0]
    for name in ("big", "conv", "small", "bias", "half"):
        np.testing.assert_array_equal(np.asarray(s1x.momentum[name], np.float32),
                                      np.asarray(s1n.momentum[name], np.float32))
    for name in ("bias", "half"):              # not on the kernel: bitwise the XLA path
        np.testing.assert_array_equal(np.asarray(p1x[name], np.float32),
                                      np.asarray(p1n[name], np.float32))
    for (px, _), (pn, _) in zip(xla, nat):
        for name in ("big", "conv", "small"):
            np.testing.assert_allclose(np.asarray(pn[name]), np.asarray(px[name]),
                                       rtol=1e-5, atol=1e-6)
    # the steps did move the kernel's leaves (so the comparison above is not vacuous)
    assert float(jnp.max(jnp.abs(nat[-1][0]["big"] - _tree()["big"]))) > 1e-2


def test_sfw_cpu_kernel_leaves_other_leaves_bitwise():
    xla, nat = _run(False, steps=2, lp_small=True), _run(True, steps=2, lp_small=True)
    for (px, sx), (pn, sn) in zip(xla, nat):
        np.testing.assert_array_equal(np.asarray(px["small"]), np.asarray(pn["small"]))
        np.testing.assert_array_equal(np.asarray(sx.momentum["half"], np.float32),
                                      np.asarray(sn.momentum["half"], np.float32))


def test_native_eligibility():
    c = KSparsePolytope(10, 1.0)
    big = jnp.zeros((40_000,))
    assert sfw_mod._native_eligible(c, big, big, big)
    assert sfw_mod._native_eligible(c, big[:1000], big[:1000], big[:1000])     # any size, K < n
    assert not sfw_mod._native_eligible(c, big[:10], big[:10], big[:10])       # K = n
    half = big.astype(jnp.bfloat16)
    assert not sfw_mod._native_eligible(c, half, half, half)
    assert not sfw_mod._native_eligible(LpBall(2.0, 1.0), big, big, big)
    assert not sfw_mod._native_eligible(KSparsePolytope(50_000, 1.0), big, big, big)  # k = n
    assert not sfw_mod._native_eligible(NMSparsePolytope(2, 4, 1.0, size=40_000), big, big, big)


def test_nm_leaves_take_the_xla_path_with_cpu_kernel():
    """N:M leaves beside K-sparse ones: cpu_kernel=True leaves their updates bitwise those of
    the XLA path (the kernel only takes K-sparse leaves)."""
    key = jax.random.key(4)
    params = {"ks": jax.random.normal(key, (4000,)),
              "nm": 0.01 * jax.random.normal(jax.random.fold_in(key, 1), (3, 3, 16, 8))}
    cons = {"ks": KSparsePolytope(200, 0.1), "nm": NMSparsePolytope(2, 4, 0.02, size=1152)}
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(key, x.size), x.shape),
                         params)
    out = []
    for flag in (False, True):
        tx = sfw(0.5, cons, cpu_kernel=flag)
        state = tx.init(params)
        upd = jax.jit(tx.update)
        u1, state = upd(grads, state, params)
        u2, _ = upd(grads, state, jax.tree.map(lambda p, u: p + u, params, u1))
        out.append((u1["nm"], u2["nm"]))
    for a, b in zip(*out):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cpu_kernel_argument_is_validated():
    cons = {"w": KSparsePolytope(3, 1.0)}
    for bad in ("yes", 1, "auto"):
        with pytest.raises(ValueError, match=f"cpu_kernel must be None, True or False, "
                                             f"got {bad!r}"):
            sfw(0.1, cons, cpu_kernel=bad)


def test_default_is_the_kernel_where_it_builds():
    """cpu_kernel=None on this x86-64 CPU with a compiler: the kernel's custom call is in the
    compiled update (not with cpu_kernel=False), and the run is bitwise cpu_kernel=True's."""
    assert sfw_mod.uses_cpu_kernel(None) and sfw_mod.uses_cpu_kernel(True)
    assert not sfw_mod.uses_cpu_kernel(False)
    params = _tree()
    cons = make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=5.0,
                            mode="initialization", init_norms=jax.tree.map(lambda _: 1.0, params))

    def compiled(flag):
        opt = sfw(0.5, cons, cpu_kernel=flag)
        return jax.jit(opt.update).lower(params, opt.init(params), params).compile().as_text()

    assert native.TARGET in compiled(None) and native.TARGET not in compiled(False)
    auto, on = _run(None, steps=3), _run(True, steps=3)
    for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(on)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_auto_falls_back_to_xla_with_one_notice_when_the_build_fails(monkeypatch, tmp_path):
    fresh_native_kernel(monkeypatch, tmp_path)

    def no_compiler():
        raise native.NativeKernelError("the native kernel needs a C++ compiler: none found\nmore")

    monkeypatch.setattr(native, "_compiler", no_compiler)
    with pytest.warns(RuntimeWarning) as caught:
        assert not sfw_mod.uses_cpu_kernel(None)
        auto = _run(None, steps=2)
    notes = [w for w in caught if "native CPU kernel" in str(w.message)]
    assert len(notes) == 1
    msg = str(notes[0].message)
    assert "needs a C++ compiler: none found" in msg and "XLA path" in msg and "\n" not in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # once per process: no second notice
        sfw(0.1, {"w": KSparsePolytope(3, 1.0)})
    xla = _run(False, steps=2)
    for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(xla)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    with pytest.raises(native.NativeKernelError, match="needs a C\\+\\+ compiler"):
        sfw(0.1, {"w": KSparsePolytope(3, 1.0)}, cpu_kernel=True)


def test_auto_builds_nothing_off_the_cpu(monkeypatch, tmp_path):
    """With another default backend, cpu_kernel=None resolves to the XLA path without trying
    to build (and without a notice)."""
    fresh_native_kernel(monkeypatch, tmp_path)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")

    def must_not_build():
        raise AssertionError("build attempted")

    monkeypatch.setattr(native, "build", must_not_build)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not sfw_mod.uses_cpu_kernel(None)
        sfw(0.1, {"w": KSparsePolytope(3, 1.0)})


def test_build_without_compiler_names_the_problem(monkeypatch, tmp_path):
    monkeypatch.setenv("SFW_JAX_CACHE", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))                 # no compiler on PATH
    with pytest.raises(native.NativeKernelError, match="needs a C\\+\\+ compiler"):
        native.build()


def test_training_with_cpu_kernel_follows_the_xla_run():
    from sfw_jax.training import loop as train_lib
    from sfw_jax.fw._constraints import contains_all
    from tests.test_train import small_config, tiny_dataset
    ds = tiny_dataset()
    runs = [train_lib.train(small_config(epochs=2, cpu_kernel=flag), ds) for flag in (False, True)]
    assert contains_all(runs[1].state.params, runs[1].constraints)
    for a, b in zip(runs[0].history, runs[1].history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    for a, b in zip(jax.tree.leaves(runs[0].state.params), jax.tree.leaves(runs[1].state.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_cpu_kernel_config_is_validated():
    from sfw_jax.training import config as config_lib
    from sfw_jax.training import presets
    with pytest.raises(ValueError, match="cpu_kernel must be None, True or False, got 'yes'"):
        config_lib.validate(presets.from_preset("quickstart-digits", cpu_kernel="yes"))
    assert config_lib.TrainConfig().cpu_kernel is None
    assert presets.from_preset("paper-resnet18-cifar10").cpu_kernel is None
    # the presets whose runs must reproduce bitwise pin the XLA path
    for name in ("quickstart-digits", "cpu-simplecnn-cifar10"):
        assert presets.from_preset(name).cpu_kernel is False


def test_fast_gradient_with_cpu_kernel_follows_the_xla_path():
    """'fast_gradient' reads only the kernel's ||m||^2: the kernel path gives the XLA path's
    steps (up to that norm's summation order), and eta = clip(lr ||m|| / (D / 2), 0, 1)."""
    params = {k: v for k, v in _tree().items() if k in ("conv", "small", "bias")}
    cons = make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=0.5, mode="radius")
    grads = [jax.tree.map(lambda p, t=t: jnp.sin(jnp.arange(p.size) * (t + 1.0)).reshape(
        p.shape), params) for t in range(3)]
    runs = {}
    for flag in (False, True):
        tx = sfw(0.01, cons, rescale="fast_gradient", cpu_kernel=flag)
        step, s, p, ups = jax.jit(tx.update), tx.init(params), params, []
        for g in grads:
            u, s = step(g, s, p)
            p = optax.apply_updates(p, u)
            ups.append(u)
        runs[flag] = ups
    for ux, un in zip(runs[False], runs[True]):
        for name in params:
            np.testing.assert_allclose(np.asarray(un[name]), np.asarray(ux[name]),
                                       rtol=1e-5, atol=1e-7)
    c = cons["small"]
    g = np.asarray(grads[0]["small"], np.float64)
    eta = min(0.01 * np.linalg.norm(g) / (c.diameter / 2), 1.0)
    assert 0.05 < eta < 1                                  # neither clipped nor negligible
    v = np.asarray(c.lmo(jnp.asarray(grads[0]["small"])), np.float64)
    np.testing.assert_allclose(np.asarray(runs[True][0]["small"]),
                               eta * (v - np.asarray(params["small"], np.float64)),
                               rtol=1e-5, atol=1e-8)
