"""SFW-Init: scales respect their minimum, the post-step loss improves over the default init on
held-out batches for several seeds, gradients through the SFW step are finite, zero tensors work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sfw_jax as S
from sfw_jax.training.sfw_init import _default_min_scale, _one_sfw_step, sfw_init


def _problem(seed, n_batches=80, batch=64):
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal((10, 3))
    xs = rng.standard_normal((n_batches, batch, 10)).astype(np.float32)
    ys = np.argmax(xs @ w_true + 0.3 * rng.standard_normal((n_batches, batch, 3)), -1)
    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in zip(xs, ys)]
    k = jax.random.key(seed)
    k1, k2 = jax.random.split(k)
    # an init 3x larger than the usual 1/sqrt(fan_in): tanh saturates, so rescaling pays off
    params = {"h": {"kernel": 3 * jax.random.normal(k1, (10, 32)) / np.sqrt(10), "bias": jnp.zeros(32)},
              "o": {"kernel": 3 * jax.random.normal(k2, (32, 3)) / np.sqrt(32), "bias": jnp.zeros(3)}}

    def loss_fn(p, b):
        x, y = b
        h = jnp.tanh(x @ p["h"]["kernel"] + p["h"]["bias"])
        logits = h @ p["o"]["kernel"] + p["o"]["bias"]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])

    norms = jax.tree.map(lambda w: max(float(jnp.linalg.norm(w)), 1.0), params)
    cons = S.make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=15.0, init_norms=norms)
    return params, cons, loss_fn, batches


def _post_step_loss(params, cons, loss_fn, batches):
    losses = []
    for b1, b2 in zip(batches[:-1], batches[1:]):
        g = jax.grad(loss_fn)(params, b1)
        losses.append(float(loss_fn(_one_sfw_step(params, g, cons, 1.0), b2)))
    return float(np.mean(losses))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learned_init_lowers_post_step_loss(seed):
    params, cons, loss_fn, batches = _problem(seed)
    train, held_out = batches[:61], batches[61:]
    res = sfw_init(loss_fn, params, cons, train, steps=60, adam_lr=2e-2)
    default = _post_step_loss(S.make_feasible(params, cons), cons, loss_fn, held_out)
    learned = _post_step_loss(res.params, cons, loss_fn, held_out)
    assert learned < 0.97 * default, (learned, default)
    assert S.contains_all(res.params, cons)
    assert len(res.losses) == 60 and res.seconds > 0


def test_scales_respect_minimum_and_gradients_finite():
    params, cons, loss_fn, batches = _problem(3)
    # push scales down hard: a loss that prefers tiny weights
    def shrink_loss(p, b):
        return loss_fn(p, b) + 50.0 * sum(jnp.sum(w ** 2) for w in jax.tree.leaves(p))
    res = sfw_init(shrink_loss, params, cons, batches[:41], steps=40, adam_lr=0.2)
    floors = _default_min_scale(params)
    for s, m in zip(jax.tree.leaves(res.scales), jax.tree.leaves(floors)):
        assert float(s) >= m - 1e-7
    assert min(float(s) for s in jax.tree.leaves(res.scales)) < 0.5   # they did move down
    assert np.all(np.isfinite(res.losses))


def test_zero_norm_tensor_is_handled():
    params, cons, loss_fn, batches = _problem(4)
    params["o"]["kernel"] = jnp.zeros_like(params["o"]["kernel"])
    params["h"]["bias"] = jnp.zeros_like(params["h"]["bias"])
    res = sfw_init(loss_fn, params, cons, batches[:6], steps=5)
    for s in jax.tree.leaves(res.scales):
        assert np.isfinite(float(s))
    for w in jax.tree.leaves(res.params):
        assert np.all(np.isfinite(np.asarray(w)))
    # gradient of the post-step loss w.r.t. the scales is finite at a zero tensor
    def f(s):
        x = jax.tree.map(lambda w, si: w * si, params, s)
        g = jax.grad(loss_fn)(x, batches[0])
        return loss_fn(_one_sfw_step(x, g, cons, 1.0), batches[1])
    grads = jax.grad(f)(jax.tree.map(lambda _: jnp.ones([]), params))
    assert all(np.isfinite(float(g)) for g in jax.tree.leaves(grads))


def test_bad_arguments():
    params, cons, loss_fn, batches = _problem(5)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        sfw_init(loss_fn, params, cons, batches, steps=0)
    with pytest.raises(ValueError, match="adam_lr must be a finite number > 0, got -1"):
        sfw_init(loss_fn, params, cons, batches, adam_lr=-1)
    with pytest.raises(ValueError, match="at least steps \\+ 1 = 11 batches, got 4"):
        sfw_init(loss_fn, params, cons, batches[:4], steps=10)
