"""SFW driven by a Flax NNX ``nnx.Optimizer`` (flax >= 0.11 API: ``Optimizer(model, tx, wrt=...)``,
``optimizer.update(model, grads)``).

What ``nnx.Optimizer`` hands to the Optax transformation (flax 0.12.8):

* ``tx.init(nnx.state(model, wrt))``: an ``nnx.State`` whose leaves are still wrapped in
  ``nnx.Param`` variables (each ``Param`` is a pytree node around its array);
* ``tx.update(grads, opt_state, params)``: ``nnx.as_pure(...)`` of the same states, an
  ``nnx.State`` of plain arrays.

The constraints are therefore built on the pure state, ``nnx.as_pure(nnx.state(model, nnx.Param))``,
which is the structure ``update`` sees; ``sfw``'s ``init`` must accept the Variable-wrapped form
of the same tree. The toy problem is a 2-layer ReLU regression, ``y = X w*`` with a sparse ``w*``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sfw_jax
from sfw_jax import make_constraints, sfw

N_IN, N_HIDDEN = 8, 16


class TinyNet(nnx.Module):
    """x (N, 8) -> Linear(16) -> ReLU -> Linear(1) -> (N, 1)."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(N_IN, N_HIDDEN, rngs=rngs)
        self.out = nnx.Linear(N_HIDDEN, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))


def _data():
    x = jax.random.normal(jax.random.key(1), (64, N_IN))
    w_true = jnp.zeros((N_IN, 1)).at[0, 0].set(1.0).at[3, 0].set(-0.5)
    return x, x @ w_true


def _loss(model: TinyNet, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def _pure_params(model: TinyNet) -> nnx.State:
    return nnx.as_pure(nnx.state(model, nnx.Param))


def _contained(params: nnx.State, constraints) -> list[bool]:
    flags = jax.tree.map(lambda c, p: bool(c.contains(p)), constraints, params,
                         is_leaf=sfw_jax.is_constraint)
    return jax.tree.leaves(flags)


def _feasible_model_and_constraints(kind: str, mode: str, seed: int = 0):
    """TinyNet whose params were moved into their constraint sets (``make_feasible``)."""
    model = TinyNet(nnx.Rngs(seed))
    params = _pure_params(model)
    kw = dict(k=3, k_frac=0.1)
    if mode == "initialization":
        # E||W_init|| per leaf from the NNX constructor itself (zero-init biases fall back to 1).
        init_norms = sfw_jax.expected_init_norms(
            lambda key: _pure_params(TinyNet(nnx.Rngs(key))), jax.random.key(7), 16)
        constraints = make_constraints(params, kind, mode=mode, value=2.0, init_norms=init_norms,
                                       **kw)
    else:
        constraints = make_constraints(params, kind, mode=mode, value=1.0, **kw)
    nnx.update(model, sfw_jax.make_feasible(params, constraints))
    return model, constraints


@nnx.jit
def _train_step(model: TinyNet, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


@pytest.mark.parametrize("kind,mode", [("k_sparse", "radius"), ("k_sparse", "initialization"),
                                       ("k_support", "radius"), ("l2", "radius")])
def test_nnx_optimizer_sfw_lowers_loss_and_stays_feasible(kind, mode):
    x, y = _data()
    model, constraints = _feasible_model_and_constraints(kind, mode)
    assert all(_contained(_pure_params(model), constraints))
    optimizer = nnx.Optimizer(model, sfw(0.1, constraints, momentum=0.9), wrt=nnx.Param)

    loss0 = float(_loss(model, x, y))
    before = _pure_params(model)
    n_steps = 40
    for _ in range(n_steps):
        _train_step(model, optimizer, x, y)
        assert all(_contained(_pure_params(model), constraints))
    loss = float(_loss(model, x, y))

    assert loss < 0.5 * loss0, (loss0, loss)
    assert int(optimizer.step[...]) == n_steps
    # Every parameter leaf moved (all are constrained, as in the reference).
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, _pure_params(model))
    assert all(jax.tree.leaves(moved))


def test_nnx_optimizer_matches_functional_optax_sfw():
    """Same params after 5 steps as plain ``tx.init/update`` + ``optax.apply_updates`` on the
    pure state (``nnx.split``/``nnx.merge`` for the loss)."""
    x, y = _data()
    model, constraints = _feasible_model_and_constraints("k_sparse", "radius")
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.as_pure(params)

    tx = sfw(0.2, constraints, momentum=0.5)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def pure_loss(p):
        return _loss(nnx.merge(graphdef, p), x, y)

    @jax.jit
    def pure_step(p, s):
        g = jax.grad(pure_loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    loss0 = float(pure_loss(params))
    for _ in range(5):
        _train_step(model, optimizer, x, y)
        params, state = pure_step(params, state)

    got = _pure_params(model)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, params)
    assert float(pure_loss(params)) < loss0


def test_nnx_optimizer_state_is_sfw_state_with_first_gradient_as_momentum():
    """After one step the SFW momentum held by ``optimizer.opt_state`` is the first gradient
    (m_0 = g) and the step count is 1."""
    x, y = _data()
    model, constraints = _feasible_model_and_constraints("k_sparse", "radius")
    optimizer = nnx.Optimizer(model, sfw(0.1, constraints), wrt=nnx.Param)
    grads = nnx.grad(_loss)(model, x, y)
    optimizer.update(model, grads)

    state = nnx.as_pure(optimizer.opt_state)
    assert isinstance(state, sfw_jax.SFWState)
    assert int(state.count) == 1
    jax.tree.map(lambda m, g: np.testing.assert_allclose(m, g, rtol=1e-6, atol=1e-7),
                 state.momentum, nnx.as_pure(nnx.state(grads, nnx.Param)))
