"""Tests for the weight statistics of sfw_jax.pruning: threshold counts, log histograms, CDFs."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from sfw_jax.pruning import (DEFAULT_THRESHOLDS, count_above_thresholds, magnitude_cdf,
                             magnitude_histogram)


def small_params():
    return {"conv": {"kernel": jnp.asarray([[0.0, 1e-11], [5e-6, -0.5]], jnp.float32),
                     "bias": jnp.asarray([1.0, -2.0, 20.0], jnp.float32)},
            "dense": {"kernel": jnp.asarray([[-30.0, 0.25, np.nan]], jnp.float32)}}


def test_default_thresholds_are_the_reference_levels():
    assert DEFAULT_THRESHOLDS == (10.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8,
                                  1e-9, 1e-10)


def test_count_above_thresholds_hand_computed():
    out = count_above_thresholds(small_params())
    # |w| finite: 0, 1e-11, 5e-6, 0.5, 1, 2, 20, 30, 0.25; strict '>' so |w| == 1 is not > 1.
    expected = {10.0: 2, 1.0: 3, 0.1: 6, 0.01: 6, 1e-3: 6, 1e-4: 6, 1e-5: 6, 1e-6: 7,
                1e-7: 7, 1e-8: 7, 1e-9: 7, 1e-10: 7}
    assert out["global"] == expected
    assert out["size"] == 10
    assert out["per_leaf"]["conv/bias"] == {"size": 3, "counts": {
        t: int(np.sum(np.abs([1.0, -2.0, 20.0]) > t)) for t in DEFAULT_THRESHOLDS}}
    for t in DEFAULT_THRESHOLDS:
        assert sum(r["counts"][t] for r in out["per_leaf"].values()) == out["global"][t]
    only = count_above_thresholds(small_params(), [0.3], include=lambda p, x: x.ndim >= 2)
    assert only["global"] == {0.3: 2} and set(only["per_leaf"]) == {"conv/kernel",
                                                                   "dense/kernel"}
    json.dumps(out)
    with pytest.raises(ValueError, match="thresholds"):
        count_above_thresholds(small_params(), [1.0, float("nan")])


def test_histogram_matches_numpy_and_accounts_for_every_entry():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 30)) * 10.0 ** rng.uniform(-8, 1, size=(40, 30))
    w[:3] = 0.0
    params = {"a": jnp.asarray(w, jnp.float32), "b": jnp.asarray(rng.normal(size=50), jnp.float32)}
    out = magnitude_histogram(params, bins=20)
    a = np.abs(np.asarray(params["a"], np.float64)).ravel()
    b = np.abs(np.asarray(params["b"], np.float64)).ravel()
    edges = np.asarray(out["edges"])
    allv = np.log10(np.concatenate([a[a > 0], b[b > 0]]))
    assert edges[0] == pytest.approx(allv.min()) and edges[-1] == pytest.approx(allv.max())
    np.testing.assert_array_equal(out["per_leaf"]["a"]["counts"],
                                  np.histogram(np.log10(a[a > 0]), edges)[0])
    g = out["global"]
    assert g["zeros"] == 90 and g["nonfinite"] == 0
    assert sum(g["counts"]) + g["zeros"] + g["underflow"] + g["overflow"] == g["size"] == 1250
    explicit = magnitude_histogram(params, bins=[-4.0, -2.0, 0.0])
    ha = explicit["per_leaf"]["a"]
    assert ha["underflow"] == int(np.sum(np.log10(a[a > 0]) < -4))
    assert ha["overflow"] == int(np.sum(np.log10(a[a > 0]) > 0))
    assert sum(ha["counts"]) + ha["zeros"] + ha["underflow"] + ha["overflow"] == a.size
    lin = magnitude_histogram(params, bins=5, log=False)
    assert lin["edges"][-1] == pytest.approx(max(a.max(), b.max()))
    json.dumps(out)
    with pytest.raises(ValueError, match="bins"):
        magnitude_histogram(params, bins=0)
    with pytest.raises(ValueError, match="bins"):
        magnitude_histogram(params, bins=[1.0, 0.0])


def test_cdf_matches_brute_force_and_is_monotone():
    params = small_params()
    pts = [0.0, 1e-11, 1e-6, 0.3, 1.0, 25.0, 100.0]
    out = magnitude_cdf(params, pts)
    finite_abs = np.array([0, 1e-11, 5e-6, 0.5, 1.0, 2.0, 20.0, 30.0, 0.25], np.float32)
    expected = [(finite_abs <= np.float32(x)).sum() / 10 for x in pts]
    np.testing.assert_allclose(out["global"], expected)
    assert out["global"][-1] == pytest.approx(0.9)  # the NaN is never <= x
    np.testing.assert_allclose(out["per_leaf"]["conv/bias"], [0, 0, 0, 0, 1 / 3, 1, 1])
    default = magnitude_cdf({"w": jnp.linspace(-1, 1, 101)})
    assert len(default["points"]) == 111 and np.all(np.diff(default["global"]) >= 0)
    json.dumps(out)
