"""Constraint schedules (``sfw_jax.scheduled_sfw``): feasibility across changes of the set
(K and radius shrinking and growing, other kinds), bitwise agreement with ``sfw()`` inside a
phase, composition with optax, the builders and the config-level phases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import sfw_jax as S
from sfw_jax.training import config as config_lib
from sfw_jax.training import optimizers as opt_lib
from sfw_jax.fw._constraint_schedule import (check_phases, delayed_lmo, full_support, phase_index,
                                             scheduled_sfw, step_at, tightening_phases)

SHAPES = {"w": (6, 5), "b": (17,), "c": (2, 3, 4)}


def _params(seed=0, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), len(SHAPES))
    return {n: scale * jax.random.normal(k, s) for k, (n, s) in zip(keys, SHAPES.items())}


def _grads(seed, t, scale=1.0):
    return _params(1000 * seed + t + 1, scale)


def _bits(tree):
    return [(a.dtype.str, a.shape, a.tobytes()) for a in map(np.asarray, jax.tree.leaves(tree))]


def _cons(kind="k_sparse", k_frac=0.2, radius=1.0):
    return S.make_constraints(_params(), kind, k=1, k_frac=k_frac, value=radius, mode="radius")


def _active(phases, t):
    return [c for s, c in phases if s <= t][-1]


# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rescale", ["gradient", "fast_gradient"])
def test_inside_a_phase_the_update_is_bitwise_sfw(rescale):
    """Each step is compared with ``sfw(lr, C_i)`` from the same state and params: bitwise
    while the params lie in C_i; on the first step of a phase whose set does not contain them,
    the update is (x' - x) + sfw's update from x' = shift_inside(x)."""
    phases = [(0, _cons(k_frac=0.3, radius=1.0)), (4, _cons(k_frac=0.1, radius=0.4)),
              (7, _cons(k_frac=0.5, radius=0.8))]
    # the XLA path on both sides: with the native kernel XLA fuses the code around the custom
    # call differently inside lax.switch, which moves the last bits of eta * (v - x)
    tx = scheduled_sfw(0.3, phases, momentum=0.8, rescale=rescale, cpu_kernel=False)
    refs = [jax.jit(S.sfw(0.3, c, momentum=0.8, rescale=rescale, cpu_kernel=False).update)
            for _, c in phases]
    step = jax.jit(tx.update)
    params = S.make_feasible(_params(), phases[0][1])
    state = tx.init(params)
    compared = moved = 0
    for t in range(10):
        g = _grads(0, t)
        cons = _active(phases, t)
        ref = refs[[s for s, _ in phases].index(max(s for s, _ in phases if s <= t))]
        u, new_state = step(g, state, params)
        if S.contains_all(params, cons):
            u_ref, s_ref = ref(g, state, params)
            assert _bits(u) == _bits(u_ref) and _bits(new_state) == _bits(s_ref)
            compared += 1
        else:
            x1 = S.make_feasible(params, cons)
            u_ref, s_ref = ref(g, state, x1)
            want = jax.tree.map(lambda a, b, c: (a - b) + c, x1, params, u_ref)
            for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(want)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
            assert _bits(new_state) == _bits(s_ref)
            moved += 1
        params, state = optax.apply_updates(params, u), new_state
        assert S.contains_all(params, cons)
    assert moved == 1 and compared == 9        # the change to the smaller set at step 4 only
    assert int(state.count) == 10


def _schedules():
    """Fixed schedules (each compiled once), each with its own rescale: K and radius shrinking
    and growing; changes of kind; the delayed LMO (L_inf ball, then a K-sparse polytope)."""
    return [
        ("gradient", [(0, _cons(k_frac=0.5, radius=1.0)), (3, _cons(k_frac=0.05, radius=0.2)),
                      (6, _cons(k_frac=0.2, radius=2.0)), (8, _cons(k_frac=0.05, radius=0.1))]),
        ("fast_gradient", [(0, _cons("l2", radius=1.5)), (2, _cons(k_frac=0.05, radius=0.3)),
                           (5, _cons("linf", radius=0.1)), (8, _cons("k_support", radius=0.5))]),
        (None, delayed_lmo(_cons(k_frac=0.05, radius=0.5), _params(), 4)),
        ("diameter", [(0, _cons("l1", radius=0.2)), (5, _cons(k_frac=1.0, radius=0.5))]),
    ]


SCHEDULES = _schedules()
_STEPS = {}


def _feasibility_step(i):
    """Jitted ``(lr, mu, g, state, params) -> (updates, state)`` of schedule i (lr and momentum
    traced, so one compilation serves every example)."""
    if i not in _STEPS:
        rescale, phases = SCHEDULES[i]
        _STEPS[i] = jax.jit(lambda lr, mu, g, s, p: scheduled_sfw(
            lr, phases, momentum=mu, rescale=rescale).update(g, s, p))
    return _STEPS[i]


@settings(max_examples=20, deadline=None)
@given(i=st.integers(0, len(SCHEDULES) - 1), seed=st.integers(0, 10_000),
       lr=st.floats(0.01, 5.0), mu=st.sampled_from([0.0, 0.5, 0.9]),
       gscale=st.sampled_from([1e-3, 1.0, 1e3]), pscale=st.sampled_from([0.01, 10.0]))
def test_iterate_is_feasible_after_every_step(i, seed, lr, mu, gscale, pscale):
    """Random gradient sequences, step sizes and starting points (inside or far outside the
    first set) on the schedules above: after every step the params lie in the active set."""
    rescale, phases = SCHEDULES[i]
    step = _feasibility_step(i)
    params = _params(seed, scale=pscale)
    state = scheduled_sfw(lr, phases, rescale=rescale).init(params)
    starts = {s for s, _ in phases}
    for t in range(10):
        u, state = step(jnp.float32(lr), jnp.float32(mu), _grads(seed, t, gscale), state, params)
        new = optax.apply_updates(params, u)
        cons = _active(phases, t)
        if t in starts:         # a move into the set: exact up to the additive update's rounding
            assert _within_rounding(new, params, cons), (i, t)
        else:
            assert S.contains_all(new, cons), (i, t)
        params = new
    assert int(state.count) == 10


def _within_rounding(new, old, cons):
    """gauge(x_new) <= r (1 + rtol) + gauge(e), e = 4 eps max(|x_old|, |x_new|): the set's
    containment up to the float rounding of x_old + (x_new - x_old) (gauges are absolute norms,
    so sublinear and monotone in |x|)."""
    def ok(c, x1, x0):
        eps = float(jnp.finfo(x1.dtype).eps)
        e = 4 * eps * jnp.maximum(jnp.abs(x0), jnp.abs(x1))
        return bool(c.gauge(x1) <= c.radius * (1 + 1e-5) + c.gauge(e))
    return all(jax.tree.leaves(jax.tree.map(ok, cons, new, old, is_leaf=S.is_constraint)))


def test_composes_with_partition_and_inject_hyperparams():
    """Inside ``optax.partition`` (the SGD leaf sees MaskedNode) and with
    ``inject_hyperparams``: the leaves follow the wrapper with ``unconstrained=sgd`` bitwise;
    without a transformation for the Unconstrained leaf the wrapper refuses it."""
    phases = [(0, _cons(radius=1.0)), (2, _cons(k_frac=0.05, radius=0.3))]
    cons_b = {**phases[0][1], "b": S.Unconstrained()}
    sub = [(s, {**c, "b": S.Unconstrained()}) for s, c in phases]
    labels = {"w": "sfw", "b": "sgd", "c": "sfw"}
    inj = optax.inject_hyperparams(scheduled_sfw, static_args=("phases", "rescale"))
    tx = optax.partition({"sfw": inj(learning_rate=0.5, phases=sub), "sgd": optax.sgd(0.1)},
                         labels)
    plain = scheduled_sfw(0.5, sub, unconstrained=optax.sgd(0.1))
    params = S.make_feasible(_params(), cons_b)
    s, sp, pp = tx.init(params), plain.init(params), params
    for t in range(4):
        g = _grads(1, t)
        u, s = jax.jit(tx.update)(g, s, params)
        up, sp = jax.jit(plain.update)(g, sp, pp)
        for name in ("w", "b", "c"):
            np.testing.assert_array_equal(np.asarray(u[name]), np.asarray(up[name]))
        np.testing.assert_allclose(np.asarray(u["b"]), -0.1 * np.asarray(g["b"]), rtol=1e-6)
        params, pp = optax.apply_updates(params, u), optax.apply_updates(pp, up)
    assert S.contains_all({k: params[k] for k in ("w", "c")},
                          {k: phases[1][1][k] for k in ("w", "c")})
    with pytest.raises(ValueError, match="leaf 'b' is Unconstrained"):
        scheduled_sfw(0.5, sub).init(params)


def test_phase_index_and_bad_phases():
    starts = [0, 3, 7]
    assert [int(phase_index(jnp.int32(t), starts)) for t in range(9)] == [0] * 3 + [1] * 4 + [2] * 2
    c = _cons()
    with pytest.raises(ValueError, match="phases must be a non-empty sequence"):
        check_phases([])
    with pytest.raises(ValueError, match=r"start steps \[1, 3\]"):
        check_phases([(1, c), (3, c)])
    with pytest.raises(ValueError, match=r"start steps \[0, 3, 3\]"):
        check_phases([(0, c), (3, c), (3, c)])
    with pytest.raises(ValueError, match=r"start steps \[0, True\]"):
        check_phases([(0, c), (True, c)])
    with pytest.raises(ValueError, match=r"phases\[1\] must be a \(start_step, constraints\) pair"):
        check_phases([(0, c), c])
    with pytest.raises(ValueError, match=r"phases\[1\] constraints must have the structure"):
        check_phases([(0, c), (2, {"w": c["w"]})])
    with pytest.raises(ValueError, match=r"phases\[1\] constraints must constrain the same "
                                         r"leaves.*leaf 'b'"):
        check_phases([(0, c), (2, {**c, "b": S.Unconstrained()})])
    with pytest.raises(ValueError, match=r"phases\[0\] constraints must be a pytree of "
                                         r"constraint objects, got a leaf 1.0"):
        check_phases([(0, {**c, "b": 1.0})])


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

def test_full_support_keeps_the_diameter():
    params = _params()
    cons = {"w": S.KSparsePolytope(3, 0.4), "b": S.KSupportNormBall(2, 0.7),
            "c": S.LpBall(1.0, 2.0)}
    wide = full_support(cons, params)
    assert wide["w"] == S.KSparsePolytope(30, 0.4 * math.sqrt(3 / 30))
    assert wide["w"].diameter == pytest.approx(cons["w"].diameter, rel=1e-12)
    assert wide["b"] == S.KSupportNormBall(17, 0.7) and wide["c"] == cons["c"]
    # K = n: the L_inf ball of radius D / (2 sqrt(n)) (gauge max|x|, vertex -r sign(g))
    x = params["w"]
    assert float(wide["w"].gauge(x)) == pytest.approx(float(jnp.max(jnp.abs(x))), rel=1e-6)
    np.testing.assert_allclose(np.asarray(wide["w"].lmo(x)),
                               -wide["w"].radius * np.sign(np.asarray(x)), rtol=1e-6)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    assert full_support(cons, shapes) == wide
    assert delayed_lmo(cons, params, 5) == [(0, wide), (5, cons)]
    with pytest.raises(ValueError, match="switch_step must be an int >= 1, got 0"):
        delayed_lmo(cons, params, 0)


def test_tightening_phases_and_step_at():
    phases = tightening_phases(lambda tau, k_frac: (tau, k_frac), {"tau": 15, "k_frac": 0.05},
                               {"tau": 7.0, "k_frac": 0.01}, 4, 10)
    assert [s for s, _ in phases] == [0, 3, 7, 10]          # floor(i * 10 / 3 + 1/2)
    taus, kfs = zip(*[v for _, v in phases])
    np.testing.assert_allclose(taus, [15, 15 - 8 / 3, 15 - 16 / 3, 7])
    np.testing.assert_allclose(kfs, [0.05, 0.05 - 0.04 / 3, 0.05 - 0.08 / 3, 0.01])
    assert taus[-1] == 7.0 and kfs[-1] == 0.01 and taus[0] == 15
    with pytest.raises(ValueError, match="n_phases must be an int >= 2, got 1"):
        tightening_phases(dict, {"tau": 1}, {"tau": 2}, 1, 10)
    with pytest.raises(ValueError, match="end_step must be an int >= n_phases - 1 = 3"):
        tightening_phases(dict, {"tau": 1}, {"tau": 2}, 4, 2)
    with pytest.raises(ValueError, match="start and end must have the same non-empty keys"):
        tightening_phases(dict, {"tau": 1}, {"k_frac": 2}, 2, 10)
    assert (step_at(1 / 3, 2106), step_at(0.5, 2106), step_at(2 / 3, 2106)) == (702, 1053, 1404)
    assert step_at(0.3333, 2106) == 702 and step_at(1.0, 7) == 7
    with pytest.raises(ValueError, match="fraction must be a number in \\[0, 1\\], got 1.5"):
        step_at(1.5, 10)


# ---------------------------------------------------------------------------------------------
# Config-level phases (sfw_jax.training.optimizers)
# ---------------------------------------------------------------------------------------------

def _cfg(**kw):
    return config_lib.validate(config_lib.TrainConfig(
        arch="mlp", dataset="tiny", constraint="k_sparse", k=2, k_frac=0.02, tau=7.0,
        lr_schedule="constant", **kw))


def test_config_phases_delayed_lmo():
    params, norms = _params(), jax.tree.map(lambda _: 2.0, _params())
    cfg = _cfg(delay_lmo=1 / 3)
    phases = opt_lib.build_constraint_phases(cfg, params, norms, total_steps=30)
    target = opt_lib.build_constraints(cfg, params, norms)
    assert [s for s, _ in phases] == [0, 10] and phases[1][1] == target
    for name, c in phases[0][1].items():
        n = int(np.prod(SHAPES[name]))
        assert c.k == n and c.diameter == pytest.approx(2 * 7.0 * 2.0, rel=1e-12)
    with pytest.raises(ValueError, match="total_steps must be the number of training steps"):
        opt_lib.build_constraint_phases(cfg, params, norms)
    with pytest.raises(ValueError, match="delay_lmo=0.01 of 30 steps puts the switch at step 0"):
        opt_lib.build_constraint_phases(_cfg(delay_lmo=0.01), params, norms, total_steps=30)
    assert opt_lib.build_constraint_phases(_cfg(), params, norms) == [(0, target)]


def test_config_phases_tightening():
    params, norms = _params(), jax.tree.map(lambda _: 2.0, _params())
    cfg = _cfg(tau_start=15.0, k_frac_start=0.5, schedule_phases=3, schedule_end=0.5)
    phases = opt_lib.build_constraint_phases(cfg, params, norms, total_steps=40)
    assert [s for s, _ in phases] == [0, 10, 20]
    for (_, cons), tau, kf in zip(phases, [15.0, 11.0, 7.0], [0.5, 0.26, 0.02]):
        for name, c in cons.items():
            n = int(np.prod(SHAPES[name]))
            assert c.k == S.sparsity_k(n, 2, kf)
            assert c.diameter == pytest.approx(2 * tau * 2.0, rel=1e-12)
    assert phases[-1][1] == opt_lib.build_constraints(cfg, params, norms)
    with pytest.raises(ValueError, match="schedule_phases=3 needs at least 2 steps before "
                                         "schedule_end, got 1"):
        opt_lib.build_constraint_phases(cfg, params, norms, total_steps=2)
    tx = opt_lib.build_optimizer(cfg, phases=phases)
    state = tx.init(S.make_feasible(params, phases[0][1]))
    assert isinstance(state.inner_state.inner_states["sfw"].inner_state, S.SFWState)
