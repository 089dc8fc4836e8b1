"""Tests for sfw_jax.pruning: exact counts, ordering, ties, nesting, scope, filters, optax."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfw_jax.pruning import (apply_mask, keep_masked, magnitude_mask, masks_for_sweep,
                             random_mask, sparsity_summary)

# Fixed leaf shapes keep the number of compiled programs small; values vary.
SHAPES = {"Conv_0": {"kernel": (2, 2, 2, 3), "bias": (3,)}, "Dense_0": {"kernel": (4, 5)},
          "Dense_1": {"kernel": (5, 2), "bias": (2,)}}
SPARSITIES = np.linspace(0.0, 1.0, 41).tolist() + [0.123, 0.5, 0.875, 0.999]


def make_params(values):
    """Params with SHAPES filled row-major from ``values`` (leaf order = jax.tree.leaves)."""
    shapes, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    out, pos = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(jnp.asarray(np.asarray(values[pos:pos + n], np.float32).reshape(s)))
        pos += n
    return jax.tree.unflatten(treedef, out)


N_TOTAL = sum(int(np.prod(s)) for s in jax.tree.leaves(
    SHAPES, is_leaf=lambda x: isinstance(x, tuple)))


def random_params(seed, scale=1.0):
    return make_params(np.random.default_rng(seed).normal(size=N_TOTAL) * scale)


def flat(tree):
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)])


def eligible_flags(params):
    return np.concatenate([np.full(x.size, x.ndim >= 2) for x in jax.tree.leaves(params)])


def stable_reference_mask(params, sparsity, scope):
    """NumPy reference: prune the first round(s*n) of the stable |w| order of eligible entries."""
    kept = []
    leaves = jax.tree.leaves(params)
    if scope == "global":
        elig = [np.abs(np.asarray(x)).ravel() for x in leaves if x.ndim >= 2]
        scores = np.concatenate(elig)
        order = np.argsort(scores, kind="stable")
        m = np.ones(scores.size, bool)
        m[order[:round(sparsity * scores.size)]] = False
        parts = np.split(m, np.cumsum([e.size for e in elig])[:-1])
        it = iter(parts)
        return np.concatenate([next(it) if x.ndim >= 2 else np.ones(x.size, bool)
                               for x in leaves])
    for x in leaves:
        a = np.abs(np.asarray(x)).ravel()
        m = np.ones(a.size, bool)
        if x.ndim >= 2:
            m[np.argsort(a, kind="stable")[:round(sparsity * a.size)]] = False
        kept.append(m)
    return np.concatenate(kept)


def torch_global_unstructured_l1(tensors, amount):
    """NumPy transliteration of torch.nn.utils.prune.global_unstructured(L1Unstructured).

    parameters_to_vector of the |importance scores| (default: the parameters), default mask of
    ones, ``nparams_toprune = round(amount * tensor_size)`` (_compute_nparams_toprune for a float
    amount), ``mask.view(-1)[torch.topk(|t|, k, largest=False).indices] = 0``, then the vector
    mask is cut back into the tensors' shapes.
    """
    t = np.concatenate([np.asarray(x).reshape(-1) for x in tensors])
    mask = np.ones_like(t)
    nparams_toprune = round(amount * t.size)
    if nparams_toprune != 0:
        topk_indices = np.argpartition(np.abs(t), nparams_toprune - 1)[:nparams_toprune]
        mask[topk_indices] = 0
    out, pos = [], 0
    for x in tensors:
        out.append(mask[pos:pos + x.size].reshape(x.shape).astype(bool))
        pos += x.size
    return out


# --------------------------------------------------------------------------- exact counts


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_counts_exact_and_ordered_at_many_sparsities(scope):
    params = random_params(0)
    elig = eligible_flags(params)
    mags = np.abs(flat(params))
    for s in SPARSITIES:
        kept = flat(magnitude_mask(params, s, scope=scope))
        assert kept[~elig].all(), "non-eligible leaves must be all-kept"
        if scope == "global":
            assert (~kept).sum() == round(s * elig.sum())
            if 0 < (~kept).sum() < elig.sum():
                assert mags[~kept].max() <= mags[kept & elig].min()
        for leaf, m in zip(jax.tree.leaves(params),
                           jax.tree.leaves(magnitude_mask(params, s, scope=scope))):
            m = np.asarray(m)
            assert m.shape == leaf.shape and m.dtype == bool
            if scope == "layerwise" and leaf.ndim >= 2:
                assert (~m).sum() == round(s * leaf.size)
                a = np.abs(np.asarray(leaf))
                if 0 < (~m).sum() < leaf.size:
                    assert a[~m].max() <= a[m].min()


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.integers(-3, 3), min_size=N_TOTAL, max_size=N_TOTAL),
       sparsity=st.floats(0.0, 1.0), scope=st.sampled_from(["global", "layerwise"]))
def test_matches_stable_sort_reference_with_many_ties(values, sparsity, scope):
    params = make_params(values)
    got = flat(magnitude_mask(params, sparsity, scope=scope))
    np.testing.assert_array_equal(got, stable_reference_mask(params, sparsity, scope))


def test_ties_pruned_in_global_flat_position_order():
    params = make_params(np.ones(N_TOTAL))
    elig = eligible_flags(params)
    n = elig.sum()
    for k in [1, 7, 20, n - 1]:
        kept = flat(magnitude_mask(params, k / n))
        pruned_positions = np.flatnonzero(~kept)
        np.testing.assert_array_equal(pruned_positions, np.flatnonzero(elig)[:k])


def test_nonfinite_and_extreme_magnitudes_order():
    vals = np.zeros(N_TOTAL, np.float32)
    elig_pos = np.flatnonzero(eligible_flags(make_params(vals)))
    special = [np.nan, np.inf, 3.4e38, 1e-45, 0.0, 1.0, 65536.0, 2.0 ** -20]
    vals[:] = 7.0
    vals[elig_pos[:len(special)]] = special
    params = make_params(vals)
    n = len(elig_pos)
    kept = flat(magnitude_mask(params, (n - 1) / n))  # keep exactly one: NaN ranks largest
    assert kept[elig_pos].sum() == 1 and kept[elig_pos[0]]
    kept = flat(magnitude_mask(params, 2 / n))  # prune 0.0 then the denormal 1e-45
    np.testing.assert_array_equal(np.flatnonzero(~kept), np.sort(elig_pos[[3, 4]]))


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_masks_nest_and_sweep_equals_single_masks(scope):
    params = random_params(1)
    levels = [0.0, 0.1, 0.3, 0.5, 0.77, 0.9, 1.0]
    sweep = masks_for_sweep(params, levels, scope=scope)
    assert len(sweep) == len(levels)
    prev = None
    for s, m in zip(levels, sweep):
        single = flat(magnitude_mask(params, s, scope=scope))
        np.testing.assert_array_equal(flat(m), single)
        if prev is not None:
            assert not (single & ~prev).any(), "kept at higher sparsity must be kept at lower"
        prev = single


def test_sweep_with_ties_matches_reference():
    params = make_params(np.random.default_rng(2).integers(0, 3, N_TOTAL))
    levels = [0.05, 0.35, 0.6, 0.95]
    for scope in ["global", "layerwise"]:
        for s, m in zip(levels, masks_for_sweep(params, levels, scope=scope)):
            np.testing.assert_array_equal(flat(m), stable_reference_mask(params, s, scope))


def test_jit_with_static_sparsity_matches_eager():
    params = random_params(3)
    jitted = jax.jit(magnitude_mask, static_argnames=("sparsity", "scope"))
    for scope in ["global", "layerwise"]:
        np.testing.assert_array_equal(flat(jitted(params, sparsity=0.6, scope=scope)),
                                      flat(magnitude_mask(params, 0.6, scope=scope)))


# --------------------------------------------------------------------------- torch reference


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), amount=st.floats(0.0, 1.0))
def test_agrees_with_torch_global_unstructured_l1(seed, amount):
    params = random_params(seed)  # distinct values: tie-breaking cannot differ
    everything = lambda path, leaf: True
    ours = jax.tree.leaves(magnitude_mask(params, amount, include=everything))
    ref = torch_global_unstructured_l1(jax.tree.leaves(params), amount)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(np.asarray(a), b)


# --------------------------------------------------------------------------- include / scope


def test_default_scope_is_kernels_and_include_variants():
    params = random_params(4)
    default = magnitude_mask(params, 1.0)
    assert all(np.asarray(default[k]["bias"]).all() for k in ("Conv_0", "Dense_1"))
    assert not any(np.asarray(default[k]["kernel"]).any() for k in SHAPES)
    everything = flat(magnitude_mask(params, 1.0, include=lambda p, x: True))
    assert not everything.any()
    only_dense0 = magnitude_mask(params, 0.5, include=lambda p, x: p[0] == "Dense_0")
    assert (~np.asarray(only_dense0["Dense_0"]["kernel"])).sum() == 10
    assert flat({k: v for k, v in only_dense0.items() if k != "Dense_0"}).all()
    as_tree = jax.tree.map(lambda x: x.ndim == 1, params)  # bool pytree: biases only
    m = magnitude_mask(params, 0.4, include=as_tree)
    assert (~np.asarray(m["Conv_0"]["bias"])).sum() + (~np.asarray(m["Dense_1"]["bias"])).sum() == 2
    assert np.asarray(m["Dense_0"]["kernel"]).all()
    with pytest.raises(ValueError, match="include"):
        magnitude_mask(params, 0.5, include={"Conv_0": True})


def test_no_eligible_leaves_gives_all_kept():
    params = {"b": jnp.arange(4.0)}
    assert flat(magnitude_mask(params, 0.9)).all()
    assert all(flat(m).all() for m in masks_for_sweep(params, [0.2, 0.9]))


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_filter_masks_prune_whole_filters_by_norm(scope):
    params = random_params(5)
    kernels = {k: np.asarray(params[k]["kernel"]) for k in SHAPES}
    n_filters = sum(w.shape[-1] for w in kernels.values())
    for s in [0.1, 0.3, 0.5, 0.7, 1.0]:
        mask = magnitude_mask(params, s, scope=scope, structure="filter")
        pruned_norms, kept_norms, total_pruned = [], [], 0
        for k, w in kernels.items():
            m = np.asarray(mask[k]["kernel"])
            per_filter = m.reshape(-1, w.shape[-1])
            assert (per_filter.all(0) | ~per_filter.any(0)).all(), "whole filters only"
            norms = np.sqrt((w.reshape(-1, w.shape[-1]) ** 2).sum(0))
            gone = ~per_filter[0]
            total_pruned += gone.sum()
            if scope == "layerwise":
                assert gone.sum() == round(s * w.shape[-1])
            pruned_norms += norms[gone].tolist()
            kept_norms += norms[~gone].tolist()
        if scope == "global":
            assert total_pruned == round(s * n_filters)
            if pruned_norms and kept_norms:
                assert max(pruned_norms) <= min(kept_norms) * (1 + 1e-6)
    swept = masks_for_sweep(params, [0.3, 0.7], scope=scope, structure="filter")
    np.testing.assert_array_equal(
        flat(swept[1]), flat(magnitude_mask(params, 0.7, scope=scope, structure="filter")))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), float("inf"), "half", True])
def test_bad_sparsity_raises_naming_value(bad):
    params = random_params(6)
    with pytest.raises(ValueError, match=r"sparsity must be.*" + str(bad)[:3]):
        magnitude_mask(params, bad)
    with pytest.raises(ValueError, match=r"sparsity"):
        random_mask(jax.random.key(0), params, bad)
    with pytest.raises(ValueError, match=r"sparsities\[1\]"):
        masks_for_sweep(params, [0.5, bad])


def test_bad_scope_structure_and_mask_raise():
    params = random_params(6)
    with pytest.raises(ValueError, match="scope must be one of.*'local'"):
        magnitude_mask(params, 0.5, scope="local")
    with pytest.raises(ValueError, match="structure must be one of.*'channel'"):
        magnitude_mask(params, 0.5, structure="channel")
    with pytest.raises(ValueError, match="mask"):
        apply_mask(params, {"Conv_0": True})
    with pytest.raises(ValueError, match="include must not select 0-d"):
        magnitude_mask({"w": jnp.ones(())}, 0.5, include=lambda p, x: True, structure="filter")


# --------------------------------------------------------------------------- random baseline


def test_random_mask_exact_counts_nesting_and_determinism():
    params = random_params(7)
    elig = eligible_flags(params)
    key = jax.random.key(42)
    prev = None
    for s in [0.0, 0.25, 0.5, 0.9, 1.0]:
        m = flat(random_mask(key, params, s))
        assert (~m).sum() == round(s * elig.sum()) and m[~elig].all()
        if prev is not None:
            assert not (m & ~prev).any()
        prev = m
    a = flat(random_mask(key, params, 0.5))
    np.testing.assert_array_equal(a, flat(random_mask(key, params, 0.5)))
    assert (a != flat(random_mask(jax.random.key(43), params, 0.5))).any()
    assert (a != flat(magnitude_mask(params, 0.5))).any()
    lw = random_mask(key, params, 0.5, scope="layerwise", structure="filter")
    assert (~np.asarray(lw["Dense_0"]["kernel"])).sum() == 4 * round(0.5 * 5)


# --------------------------------------------------------------------------- apply / summary


def test_apply_mask_and_summary_counts():
    params = random_params(8)
    mask = magnitude_mask(params, 0.5)
    pruned = apply_mask(params, mask)
    p, m, q = flat(params), flat(mask), flat(pruned)
    np.testing.assert_array_equal(q[m], p[m])
    assert (q[~m] == 0).all()
    summary = sparsity_summary(pruned, mask)
    assert summary.size == N_TOTAL and summary.pruned == (~m).sum()
    assert summary.kept + summary.pruned == summary.size
    assert summary.zeros == (q == 0).sum()
    assert summary.sparsity == pytest.approx((~m).sum() / N_TOTAL)
    rows = {r.path: r for r in summary.leaves}
    assert rows["Dense_0/kernel"].pruned == (~np.asarray(mask["Dense_0"]["kernel"])).sum()
    assert rows["Dense_1/bias"].pruned == 0 and rows["Dense_1/bias"].kept == 2
    nonzero = sparsity_summary(pruned)  # mask=None: nonzero entries are kept
    assert nonzero.pruned == (q == 0).sum()
    table = summary.table()
    lines = table.splitlines()
    assert len(lines) == len(summary.leaves) + 4 and lines[-1].startswith("total")
    assert str(summary) == table
    col = lines[0].index("size") + len("size")
    assert all(line[col - 1].isdigit() for line in lines[2:-2])  # sizes right-aligned
    assert json.loads(json.dumps(summary.to_dict()))["total"]["pruned"] == summary.pruned
    only = sparsity_summary(pruned, mask, include=lambda p, x: x.ndim >= 2)
    assert only.size == eligible_flags(params).sum() and only.pruned == summary.pruned


# --------------------------------------------------------------------------- keep_masked


def test_keep_masked_keeps_pruned_weights_zero_through_momentum_and_decay():
    rng = np.random.default_rng(9)
    w0 = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    params = {"w": w0, "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
    mask = magnitude_mask(params, 0.5)
    start = apply_mask(params, mask)

    def train(tx, steps=6):
        p, state = start, tx.init(start)
        history = []
        for _ in range(steps):
            updates, state = tx.update(jax.grad(loss)(p), state, p)
            p = optax.apply_updates(p, updates)
            history.append(p)
        return history

    base = [optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9)]
    masked = train(optax.chain(*base, keep_masked(mask)))
    m = np.asarray(mask["w"])
    for p in masked:
        assert (np.asarray(p["w"])[~m] == 0.0).all()
    final = np.asarray(masked[-1]["w"])
    assert (final[m] != np.asarray(start["w"])[m]).all(), "kept weights must move"
    assert (np.asarray(masked[-1]["b"]) != np.asarray(start["b"])).all()
    assert masked[-1]["w"].dtype == jnp.float32
    assert loss(masked[-1]) < loss(start)
    unmasked = train(optax.chain(*base))  # control: without keep_masked zeros do not survive
    assert (np.asarray(unmasked[-1]["w"])[~m] != 0.0).any()
    with pytest.raises(ValueError, match="mask"):
        keep_masked({"w": mask["w"]}).init(params)


def test_pruning_api_at_the_top_level_and_keep_masked_takes_extra_args():
    """``import sfw_jax`` gives the pruning half; ``keep_masked`` is a
    GradientTransformationExtraArgs, so it composes with ``sfw`` (which reads ``params``) and
    with extra arguments such as optax's ``value``."""
    import sfw_jax
    import sfw_jax.pruning as pruning

    for name in ("magnitude_mask", "apply_mask", "keep_masked", "masks_for_sweep",
                 "sparsity_summary", "nm_mask", "random_mask"):
        assert getattr(sfw_jax, name) is getattr(pruning, name) and name in sfw_jax.__all__
    params = {"w": jnp.asarray([[3.0, -0.1], [0.2, -4.0]]), "b": jnp.asarray([1.0, 2.0])}
    mask = magnitude_mask(params, 0.5)
    tx = keep_masked(mask)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    g = jax.tree.map(jnp.ones_like, params)
    u, _ = tx.update(g, tx.init(params), params, value=jnp.float32(1.0))
    np.testing.assert_array_equal(np.asarray(u["w"]), [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(u["b"]), [1.0, 1.0])
    cons = sfw_jax.make_constraints(params, "l2", mode="radius", value=10.0)
    chain = optax.chain(sfw_jax.sfw(0.5, cons), keep_masked(mask))
    u, _ = chain.update(g, chain.init(params), params, value=jnp.float32(1.0))
    assert (np.asarray(u["w"])[~np.asarray(mask["w"])] == 0.0).all()
    assert (np.asarray(u["w"])[np.asarray(mask["w"])] != 0.0).all()
