"""Frank-Wolfe as Optax building blocks (``sfw_jax.frank_wolfe``, ``sfw_jax.sfw_momentum``):
``sfw`` is their chain, the step is the documented rule, they compose with optax (schedules,
``inject_hyperparams``, ``partition``, nnx), and Adam-preconditioned SFW keeps every registered
kind's iterates feasible with LP-optimal vertices."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import sfw_jax as S
from sfw_jax.fw._registry import KINDS
from tests.test_constraint_kinds import BOUNDED_KINDS, build_leaf

SHAPES = {"w": (8, 3), "v": (2, 4, 5), "b": (6,)}


def _params(seed=0, scale=1.0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), len(SHAPES))
    return {n: (scale * jax.random.normal(k, s)).astype(dtype)
            for k, (n, s) in zip(keys, SHAPES.items())}


def _grads(seed, t, dtype=jnp.float32):
    return _params(1000 * seed + t + 1, 1.0 + t, dtype)


def _kind_constraints(kind, radius=0.7):
    """One set of ``kind`` per leaf (an L2 ball where the kind does not apply to the leaf)."""
    return {n: build_leaf(kind, s, radius) or S.LpBall(2.0, radius) for n, s in SHAPES.items()}


def _run(tx, params, grads, jit=True):
    step = jax.jit(tx.update) if jit else tx.update
    state, ups = tx.init(params), []
    for g in grads:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
        ups.append(u)
    return params, state, ups


def _close(a, b, rtol=1e-6, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                   rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# sfw = chain(sfw_momentum, frank_wolfe)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rescale", ["gradient", "fast_gradient", "diameter", None])
@pytest.mark.parametrize("kinds", [("k_sparse", "l2", "linf"), ("k_support", "nm_sparse", "l1")])
def test_sfw_is_the_chain_of_momentum_and_frank_wolfe(rescale, kinds):
    """Five steps of ``sfw`` and of the chain from the same start: the same updates and momentum
    (the XLA path; the kernel path below), for every rescale, with several kinds in one tree."""
    cons = {n: _kind_constraints(k)[n] for n, k in zip(SHAPES, kinds)}
    params = S.make_feasible(_params(), cons)
    grads = [_grads(0, t) for t in range(5)]
    lr = 0.3 if rescale != "diameter" else 2.0
    p1, s1, u1 = _run(S.sfw(lr, cons, momentum=0.8, rescale=rescale, cpu_kernel=False),
                      params, grads)
    chain = optax.chain(S.sfw_momentum(0.8), S.frank_wolfe(lr, cons, rescale=rescale))
    p2, s2, u2 = _run(chain, params, grads)
    _close(u1, u2)
    _close(p1, p2)
    _close(s1.momentum, s2[0].momentum)
    assert int(s1.count) == int(s2[0].count) == int(s2[1].count) == 5
    assert float(jnp.max(jnp.abs(p1["w"] - params["w"]))) > 1e-3     # the steps moved
    assert S.contains_all(p2, cons)


def test_sfw_with_its_cpu_kernel_is_the_chain():
    """Large K-sparse leaves (where sfw's default on a CPU is the fused native kernel) and a
    partitioned unconstrained bias: the chain gives sfw's updates up to float rounding."""
    keys = jax.random.split(jax.random.key(3), 3)
    params = {"conv": 0.05 * jax.random.normal(keys[0], (3, 3, 32, 64)),
              "dense": 0.05 * jax.random.normal(keys[1], (300, 100)),
              "bias": jnp.zeros((100,))}
    cons = S.make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=0.05, mode="radius",
                              where=S.is_kernel)
    params = S.make_feasible(params, cons)
    grads = [jax.tree.map(lambda p, t=t: jnp.sin(jnp.arange(p.size) * (t + 1.0)).reshape(
        p.shape), params) for t in range(4)]
    labels = jax.tree.map(lambda c: "fw" if c.constrained else "sgd", cons,
                          is_leaf=S.is_constraint)
    sfw = S.sfw(0.5, cons, momentum=0.9, unconstrained=optax.sgd(0.1))
    chain = optax.partition({"fw": optax.chain(S.sfw_momentum(0.9), S.frank_wolfe(0.5, cons)),
                             "sgd": optax.sgd(0.1)}, labels)
    p1, _, u1 = _run(sfw, params, grads)
    p2, _, u2 = _run(chain, params, grads)
    _close(u1, u2, rtol=1e-5, atol=1e-7)
    _close(p1, p2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(u2[-1]["bias"]), -0.1 * np.asarray(grads[-1]["bias"]),
                               rtol=1e-6)


def test_frank_wolfe_step_by_hand():
    """d = g (no momentum): u = eta (v - x), v = lmo(g), eta = clip(lr ||g|| / ||x - v||, 0, 1);
    the learning-rate schedule reads the step count."""
    cons = {"a": S.KSparsePolytope(2, 0.5), "b": S.LpBall(2.0, 2.0)}
    x = {"a": jnp.array([0.1, 0.2, -0.3, 0.05]), "b": jnp.array([0.5, -0.5])}
    g = {"a": jnp.array([0.0, 0.3, -0.4, 0.0]), "b": jnp.array([3.0, 4.0])}
    tx = S.frank_wolfe(optax.piecewise_constant_schedule(0.2, {1: 0.5}), cons)
    state = tx.init(x)
    for t, lr in enumerate([0.2, 0.1]):
        u, state = tx.update(g, state, x)
        for n in cons:
            v = np.asarray(cons[n].lmo(g[n]), np.float64)
            xn = np.asarray(x[n], np.float64)
            eta = min(lr * np.linalg.norm(np.asarray(g[n])) / np.linalg.norm(xn - v), 1.0)
            assert 0 < eta < 1
            np.testing.assert_allclose(np.asarray(u[n]), eta * (v - xn), rtol=1e-6)
    assert int(state.count) == 2


def test_frank_wolfe_equals_sfw_without_momentum():
    cons = _kind_constraints("k_sparse")
    params = S.make_feasible(_params(1), cons)
    grads = [_grads(1, t) for t in range(3)]
    p1, _, _ = _run(S.sfw(0.4, cons, momentum=0.0, cpu_kernel=False), params, grads)
    p2, _, _ = _run(S.frank_wolfe(0.4, cons), params, grads)
    _close(p1, p2)


def test_inject_hyperparams_and_sfw_momentum_first_step():
    cons = _kind_constraints("l2")
    params = S.make_feasible(_params(2), cons)
    grads = [_grads(2, t) for t in range(4)]
    injected = optax.chain(
        optax.inject_hyperparams(S.sfw_momentum)(momentum=0.5),
        optax.inject_hyperparams(S.frank_wolfe, static_args=("constraints", "rescale"))(
            learning_rate=0.05, constraints=cons, rescale="gradient"))
    sched = optax.chain(S.sfw_momentum(0.5),
                        S.frank_wolfe(optax.piecewise_constant_schedule(0.05, {2: 0.2}), cons))
    s1, s2, p1, p2 = injected.init(params), sched.init(params), params, params
    for t, g in enumerate(grads):
        if t == 2:
            s1[1].hyperparams["learning_rate"] = jnp.asarray(0.01)
        u1, s1 = jax.jit(injected.update)(g, s1, p1)
        u2, s2 = jax.jit(sched.update)(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        if t == 0:           # m_0 = g, not (1 - mu) g
            _close(s2[0].momentum, g)
    _close(p1, p2)
    p3, _, _ = _run(optax.chain(S.sfw_momentum(0.5), S.frank_wolfe(0.05, cons)), params, grads)
    assert not np.allclose(np.asarray(p3["w"]), np.asarray(p2["w"]))


def test_unconstrained_leaves_are_named_and_partition_routes_them():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
    cons = S.make_constraints(params, "k_sparse", k=2, mode="radius", value=1.0,
                              where=S.is_kernel)
    adam_sfw = optax.chain(optax.scale_by_adam(), S.frank_wolfe(0.5, cons))
    with pytest.raises(ValueError, match=r"frank_wolfe init: leaf 'b' is Unconstrained\(\).*"
                                         r"optax.partition"):
        adam_sfw.init(params)
    state = optax.chain(optax.scale_by_adam(), S.frank_wolfe(0.5, {"w": cons["w"],
                                                                   "b": S.LpBall(2, 9.0)})
                        ).init(params)
    with pytest.raises(ValueError, match="frank_wolfe update: leaf 'b' is Unconstrained"):
        adam_sfw.update(params, state, params)
    labels = jax.tree.map(lambda c: "fw" if c.constrained else "adam", cons,
                          is_leaf=S.is_constraint)
    tx = optax.partition({"fw": adam_sfw, "adam": optax.adam(0.1)}, labels)
    p = S.make_feasible(params, cons)
    loss = lambda q: jnp.sum(q["b"] ** 2) + jnp.sum((q["w"] - 2.0) ** 2)  # noqa: E731
    state, adam, b = tx.init(p), optax.adam(0.1), params["b"]
    adam_state = adam.init(b)
    for _ in range(3):
        u, state = jax.jit(tx.update)(jax.grad(loss)(p), state, p)
        p = optax.apply_updates(p, u)
        assert S.contains_all(p, cons)
        ub, adam_state = adam.update(2 * b, adam_state)      # Adam alone on sum(b^2)
        b = optax.apply_updates(b, ub)
    np.testing.assert_allclose(np.asarray(p["b"]), np.asarray(b), rtol=1e-6)
    assert float(b[0]) < 0.75


def test_bad_input():
    cons = _kind_constraints("l2")
    params = _params()
    with pytest.raises(ValueError, match="params"):
        tx = S.frank_wolfe(0.1, cons)
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match=r"rescale must be one of .*got 'grad'"):
        S.frank_wolfe(0.1, cons, rescale="grad")
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number .*got -1"):
        S.frank_wolfe(-1, cons)
    with pytest.raises(ValueError, match="leaves are constraint objects"):
        S.frank_wolfe(0.1, {"w": 1.0})
    with pytest.raises(ValueError, match="constraints must be a pytree of constraint objects"):
        S.frank_wolfe(0.1, {"w": cons["w"]}).init(params)
    with pytest.raises(ValueError, match=r"momentum must be a finite number in \[0.0, 1.0\), "
                                         r"got 1.0"):
        S.sfw_momentum(1.0)


def test_bfloat16_params_and_float32_directions():
    """bfloat16 params with Adam's float32 directions: bfloat16 updates, feasible iterates."""
    cons = _kind_constraints("k_sparse", radius=0.2)
    params = S.make_feasible(_params(4, dtype=jnp.bfloat16), cons)
    tx = optax.chain(optax.scale_by_adam(mu_dtype=jnp.float32),
                     S.frank_wolfe(1.0, cons))
    state = tx.init(params)
    for t in range(3):
        g = _grads(4, t, jnp.float32)
        u, state = jax.jit(tx.update)(g, state, params)
        assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(u))
        params = optax.apply_updates(params, u)
        assert S.contains_all(params, cons)


def test_nnx_optimizer_with_adam_sfw():
    """``nnx.Optimizer`` inits with boxed ``nnx.Param`` leaves: the chain accepts them."""
    from flax import nnx
    model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    pure = nnx.as_pure(nnx.state(model, nnx.Param))
    cons = S.make_constraints(pure, "k_sparse", k=3, mode="radius", value=0.3, where=S.is_kernel)
    nnx.update(model, S.make_feasible(pure, cons))
    labels = jax.tree.map(lambda c: "fw" if c.constrained else "adam", cons,
                          is_leaf=S.is_constraint)
    tx = optax.partition({"fw": optax.chain(optax.scale_by_adam(), S.frank_wolfe(0.1, cons)),
                          "adam": optax.adam(0.01)}, labels)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (16, 8))
    loss = lambda m: jnp.mean((m(x) - 1.0) ** 2)  # noqa: E731
    l0 = float(loss(model))
    for _ in range(5):
        opt.update(model, nnx.grad(loss)(model))
    assert S.contains_all(nnx.as_pure(nnx.state(model, nnx.Param)), cons)
    assert float(loss(model)) < l0


# ---------------------------------------------------------------------------------------------
# Adam-preconditioned SFW: every registered kind
# ---------------------------------------------------------------------------------------------

_STEPS = {}


def _adam_fw_step(kind, rescale):
    """Jitted ``(lr, g, state, params) -> (updates, state)`` of the Adam-SFW chain over the
    sets of ``kind`` (lr traced: one compilation serves every example)."""
    if (kind, rescale) not in _STEPS:
        cons = _kind_constraints(kind)
        tx = optax.chain(optax.scale_by_adam(), optax.inject_hyperparams(
            S.frank_wolfe, static_args=("constraints", "rescale"))(
                learning_rate=0.1, constraints=cons, rescale=rescale))

        def step(lr, g, state, params):
            state[1].hyperparams["learning_rate"] = lr
            return tx.update(g, state, params)

        _STEPS[kind, rescale] = (cons, tx, jax.jit(step))
    return _STEPS[kind, rescale]


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(BOUNDED_KINDS), rescale=st.sampled_from(["gradient", "none"]),
       seed=st.integers(0, 10_000), lr=st.floats(0.01, 2.0),
       gscale=st.sampled_from([1e-4, 1.0, 1e4]))
def test_adam_sfw_iterates_feasible_and_vertices_lp_optimal(kind, rescale, seed, lr, gscale):
    """From a feasible start, every iterate of ``chain(scale_by_adam(), frank_wolfe)`` lies in
    its set; with eta = 1 ('none', lr 1) the iterate is the vertex v, LP-optimal for Adam's
    direction d: <d, v> = <d, lmo(d)> <= <d, z> for z the previous iterates and other vertices
    (Adam's first directions are near +-1 everywhere: near-ties, so v may be another optimal
    vertex than an eager lmo(d))."""
    cons, tx, step = _adam_fw_step(kind, rescale)
    rng = np.random.default_rng(seed)
    params = S.make_feasible(_params(seed, scale=10.0), cons)
    state, adam, adam_state = tx.init(params), optax.scale_by_adam(), None
    adam_state = adam.init(params)
    seen = [params]
    for _ in range(4):
        g = {n: jnp.asarray(rng.standard_normal(s) * gscale, jnp.float32)
             for n, s in SHAPES.items()}
        eta_one = rescale == "none" and rng.random() < 0.5
        u, state = step(jnp.float32(1.0 if eta_one else lr), g, state, params)
        d, adam_state = adam.update(g, adam_state, params)
        params = optax.apply_updates(params, u)
        assert S.contains_all(params, cons)
        if eta_one:              # the iterate is the vertex v: <d, v> = min over C of <d, .>
            for n, c in cons.items():
                v = np.asarray(params[n], np.float64).reshape(-1)
                dn = np.asarray(d[n], np.float64).reshape(-1)
                others = [z[n] for z in seen] + [c.lmo(d[n])] + [
                    c.lmo(jnp.asarray(rng.standard_normal(SHAPES[n]), jnp.float32))
                    for _ in range(8)]
                vals = [float(dn @ np.asarray(z, np.float64).reshape(-1)) for z in others]
                tol = 1e-5 * np.abs(dn).sum() * (c.radius + np.abs(v).max())
                assert float(dn @ v) <= min(vals) + tol
                assert float(dn @ v) == pytest.approx(vals[len(seen)], abs=tol)   # lmo(d)'s
        seen.append(params)


def test_every_bounded_kind_is_covered():
    """The property test above draws from every registered kind with an LMO."""
    assert set(BOUNDED_KINDS) == {k for k, e in KINDS.items() if e.bounded}
    assert {"k_sparse", "l1", "l2", "linf", "lp", "k_support", "nm_sparse"} <= set(BOUNDED_KINDS)
    assert math.isinf(S.Unconstrained().diameter)
