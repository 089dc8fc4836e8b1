"""Tests for sfw_jax.pruning.recalibrate_batch_norm on toy Flax models."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfw_jax.pruning import recalibrate_batch_norm


class DenseBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(4)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Dense(3)(x)
        return nn.BatchNorm(use_running_average=not train, use_fast_variance=False)(x)


class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(5, (3, 3))(x)
        return nn.BatchNorm(use_running_average=not train)(x)


def batches(shape, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=shape) * 2 + 1, jnp.float32) for _ in range(n)]


def np_batch_stats(h, axes):
    h = np.asarray(h, np.float64)
    return h.mean(axes), h.var(axes)  # biased variance


def test_dense_bn_recalibration_equals_direct_statistics():
    model = DenseBN()
    xs = batches((16, 6))
    variables = model.init(jax.random.key(0), xs[0], False)
    # perturb BN params so the second BN's inputs depend on the first BN's normalisation
    variables["params"]["BatchNorm_0"]["scale"] = jnp.linspace(0.5, 2.0, 4)
    variables["params"]["BatchNorm_0"]["bias"] = jnp.linspace(-0.3, 0.3, 4)
    out = recalibrate_batch_norm(functools.partial(model.apply, train=True), variables, xs)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    m0, v0, m1, v1 = [], [], [], []
    for x in xs:
        h0 = np.asarray(x, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        mu, var = np_batch_stats(h0, 0)
        m0.append(mu), v0.append(var)
        z = (h0 - mu) / np.sqrt(var + 1e-5) * p["BatchNorm_0"]["scale"] + p["BatchNorm_0"]["bias"]
        h1 = np.maximum(z, 0) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
        mu, var = np_batch_stats(h1, 0)
        m1.append(mu), v1.append(var)
    stats = out["batch_stats"]
    all_h0 = np.concatenate([np.asarray(x, np.float64) for x in xs]) @ p["Dense_0"]["kernel"]
    pooled_mean = all_h0.mean(0) + p["Dense_0"]["bias"]  # equal-size batches
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], pooled_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], np.mean(m0, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_0"]["var"], np.mean(v0, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_1"]["mean"], np.mean(m1, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_1"]["var"], np.mean(v1, 0), rtol=1e-4, atol=1e-5)
    # parameters untouched, no gradient step
    for a, b in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(a, b)


def test_conv_bn_reduces_over_batch_and_space_and_ignores_old_stats():
    model = ConvBN()
    xs = batches((4, 6, 6, 2), n=2, seed=1)
    variables = model.init(jax.random.key(1), xs[0], False)
    variables["batch_stats"]["BatchNorm_0"]["mean"] = jnp.full((5,), 100.0)
    variables["batch_stats"]["BatchNorm_0"]["var"] = jnp.full((5,), 1e-3)
    out = recalibrate_batch_norm(functools.partial(model.apply, train=True), variables, xs,
                                 jit=False)
    conv = nn.Conv(5, (3, 3))
    pre = [conv.apply({"params": variables["params"]["Conv_0"]}, x) for x in xs]
    stats = [np_batch_stats(h, (0, 1, 2)) for h in pre]
    bn = out["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(bn["mean"], np.mean([s[0] for s in stats], 0), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(bn["var"], np.mean([s[1] for s in stats], 0), rtol=1e-4,
                               atol=1e-5)


def test_single_batch_recalibration_makes_eval_match_train_output():
    model = ConvBN()
    x = batches((4, 5, 5, 2), n=1, seed=2)[0]
    variables = model.init(jax.random.key(2), x, False)
    out = recalibrate_batch_norm(functools.partial(model.apply, train=True), variables, [x])
    train_out, _ = model.apply(variables, x, True, mutable=["batch_stats"])
    np.testing.assert_allclose(model.apply(out, x, False), train_out, rtol=1e-4, atol=1e-4)
    assert not np.allclose(model.apply(variables, x, False), train_out, atol=1e-2)


def test_errors():
    model = DenseBN()
    x = batches((8, 6), n=1)[0]
    variables = model.init(jax.random.key(0), x, False)
    train = functools.partial(model.apply, train=True)
    with pytest.raises(ValueError, match="at least one batch, got 0"):
        recalibrate_batch_norm(train, variables, [])
    with pytest.raises(ValueError, match="no flax.linen.BatchNorm in training mode"):
        recalibrate_batch_norm(functools.partial(model.apply, train=False), variables, [x])
    with pytest.raises(ValueError, match="collection 'batch_stats'"):
        recalibrate_batch_norm(train, {"params": variables["params"]}, [x])
