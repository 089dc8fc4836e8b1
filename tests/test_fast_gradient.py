"""The 'fast_gradient' step-size rescale: eta = clip(lr ||m||_2 / (D / 2), 0, 1), D the L2
diameter of the leaf's set (the 'fast_gradient' option of Zimmer, Spiegel & Pokutta's
compression-aware SFW code), checked against steps computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sfw_jax as S
from sfw_jax.training import config as config_lib
from sfw_jax.fw._sfw import RESCALES, sfw_leaf_step

R = 1 / math.sqrt(2)                       # K = 2: D = 2 R sqrt(2) = 2, D / 2 = 1
CONS = {"a": S.KSparsePolytope(2, R), "b": S.LpBall(2.0, 2.0)}       # b: D = 4, D / 2 = 2
X = {"a": jnp.array([0.1, 0.2, -0.3, 0.05]), "b": jnp.array([0.5, -0.5])}
G = {"a": jnp.array([0.0, 0.3, -0.4, 0.0]), "b": jnp.array([3.0, 4.0])}
V = {"a": np.array([0.0, -R, R, 0.0]),     # top-2 |g| at indices 2, 1: -r sign(g)
     "b": -2.0 * np.array([3.0, 4.0]) / 5.0}  # -r g / ||g||


def _first_update(lr, rescale="fast_gradient"):
    tx = S.sfw(lr, CONS, momentum=0.9, rescale=rescale)
    u, _ = jax.jit(tx.update)(G, tx.init(X), X)
    return {k: np.asarray(v) for k, v in u.items()}


def test_first_step_by_hand():
    # ||m|| = ||g||: 0.5 for a, 5 for b. lr 0.2: eta_a = 0.2 * 0.5 / 1 = 0.1,
    # eta_b = 0.2 * 5 / 2 = 0.5.
    u = _first_update(0.2)
    np.testing.assert_allclose(u["a"], 0.1 * (V["a"] - np.asarray(X["a"])), rtol=1e-6)
    np.testing.assert_allclose(u["b"], 0.5 * (V["b"] - np.asarray(X["b"])), rtol=1e-6)
    # the 'gradient' rescale divides by ||x - v|| instead (another step here)
    g = _first_update(0.2, "gradient")
    eta_a = 0.2 * 0.5 / np.linalg.norm(np.asarray(X["a"]) - V["a"])
    np.testing.assert_allclose(g["a"], eta_a * (V["a"] - np.asarray(X["a"])), rtol=1e-6)
    assert abs(eta_a - 0.1) > 0.01


def test_eta_is_clipped_to_one():
    # lr 1: eta_b = 5 / 2 -> 1, so x_b lands on v_b; eta_a = 0.5
    u = _first_update(1.0)
    np.testing.assert_allclose(u["b"], V["b"] - np.asarray(X["b"]), rtol=1e-6)
    np.testing.assert_allclose(u["a"], 0.5 * (V["a"] - np.asarray(X["a"])), rtol=1e-6)


def test_second_step_uses_the_momentum():
    tx = S.sfw(0.2, CONS, momentum=0.9, rescale="fast_gradient")
    step = jax.jit(tx.update)
    u1, s = step(G, tx.init(X), X)
    x1 = optax.apply_updates(X, u1)
    g2 = {"a": jnp.array([1.0, 0.0, 0.0, -2.0]), "b": jnp.array([-1.0, 0.0])}
    u2, _ = step(g2, s, x1)
    m = 0.9 * np.asarray(G["a"]) + 0.1 * np.asarray(g2["a"])       # [0.1, 0.27, -0.36, -0.2]
    v = np.array([0.0, -R, R, 0.0])                                 # top-2 |m|: 0.36, 0.27
    eta = 0.2 * np.linalg.norm(m) / 1.0
    np.testing.assert_allclose(np.asarray(u2["a"]), eta * (v - np.asarray(x1["a"])), rtol=1e-6)


def test_leaf_step_matches_sfw():
    for name in CONS:
        u, m = sfw_leaf_step(CONS[name], G[name], jnp.zeros_like(G[name]), X[name],
                             jnp.int32(0), 0.2, 0.9, "fast_gradient")
        np.testing.assert_allclose(np.asarray(u), _first_update(0.2)[name], rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(m), np.asarray(G[name]))


def test_rescale_names_are_defined_once():
    assert "fast_gradient" in RESCALES
    assert config_lib.OPTIONS["rescale"].choices is RESCALES and "none" in RESCALES
    with pytest.raises(ValueError, match="rescale must be one of"):
        S.sfw(0.1, CONS, rescale="fast")
