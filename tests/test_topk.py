"""Exactness of every top-k path of ``sfw_jax.fw.topk.top_k_mask`` against a NumPy reference.

Reference: the k largest values with ties broken by lower flat index, i.e. the first k of a stable
argsort on (-value, index). Values are compared as the backend compares float32: -0.0 == +0.0 and,
where the backend flushes denormals to zero (XLA:CPU does), float32 subnormals equal 0, so the
reference flushes them too there.
"""

from __future__ import annotations

import functools
import re

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, HealthCheck

from sfw_jax.fw import segtopk, topk
from sfw_jax.fw.topk import top_k_mask

METHODS = topk.METHODS
EXACT_METHODS = tuple(m for m in METHODS if m != "auto")
COUNTING = topk.THRESHOLD_METHODS
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
SETTINGS = settings(max_examples=6, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.lru_cache(maxsize=None)
def backend_flushes_denormals() -> bool:
    """Whether the default backend compares float32 subnormals equal to 0 (XLA:CPU does)."""
    return bool(jax.jit(lambda v: v == 0)(jnp.float32(1e-45)))


def reference_mask(x: np.ndarray, k: int) -> np.ndarray:
    v = np.asarray(x, np.float64).reshape(-1)
    if np.asarray(x).dtype != np.float64 and backend_flushes_denormals():
        v = np.where(np.abs(v) < np.finfo(np.float32).tiny, 0.0, v)   # denormals-are-zero
    order = np.lexsort((np.arange(v.size), -v))       # primary: -v ascending; then index
    mask = np.zeros(v.size, bool)
    mask[order[:k]] = True
    return mask.reshape(np.shape(x))


@functools.lru_cache(maxsize=None)
def _jitted(method: str, k: int):
    return jax.jit(lambda x: top_k_mask(x, k, method=method))


def _check(x_np: np.ndarray, k: int, dtype, method: str) -> None:
    x = jnp.asarray(x_np, dtype)
    exact = np.asarray(x.astype(jnp.float32) if dtype != jnp.float64 else x)
    got = np.asarray(_jitted(method, k)(x))
    assert got.shape == x.shape and got.dtype == np.bool_
    assert int(got.sum()) == k
    np.testing.assert_array_equal(got, reference_mask(exact, k))


# Values: a mix of continuous numbers, small integers (many ties), zeros of both signs and infs.
_values = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
    st.integers(-3, 3).map(float),
    st.sampled_from([0.0, -0.0, np.inf, -np.inf, 1.0]),
)


@st.composite
def arrays_and_k(draw, max_n: int = 700):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=max_n))
    n = int(np.prod(shape))
    if n > max_n:
        shape = (draw(st.integers(1, max_n)),)
        n = shape[0]
    kind = draw(st.sampled_from(["mixed", "ints", "nonneg", "const"]))
    if kind == "mixed":
        x = draw(hnp.arrays(np.float64, shape, elements=_values))
    elif kind == "ints":
        seed = draw(st.integers(0, 2 ** 31 - 1))
        x = np.random.default_rng(seed).integers(0, draw(st.integers(1, 6)), shape).astype(float)
    elif kind == "nonneg":
        seed = draw(st.integers(0, 2 ** 31 - 1))
        rng = np.random.default_rng(seed)
        x = np.abs(rng.normal(size=shape)) * (rng.random(shape) < draw(st.floats(0.0, 1.0)))
    else:
        x = np.full(shape, draw(st.sampled_from([0.0, 2.5, -1.0])))
    k = draw(st.one_of(st.just(1), st.just(n), st.integers(1, n)))
    return x, k


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("method", EXACT_METHODS)   # 'auto' is 'sort' at these sizes
@SETTINGS
@given(data=arrays_and_k())
def test_matches_reference(method, dtype, data):
    x, k = data
    _check(x, k, dtype, method)


@pytest.mark.parametrize("method", COUNTING)
@pytest.mark.parametrize("case", ["normal", "ties", "zeros", "const", "neg"])
def test_large_arrays_every_counting_path(method, case):
    """n large enough for the sampled first pass, grouped lane sums and multi-block tie search."""
    rng = np.random.default_rng(7)
    n = 40_000 + 7                                 # not a multiple of 15, 17 or 1024
    if case == "normal":
        x = np.abs(rng.normal(size=n))
    elif case == "ties":
        x = rng.integers(0, 4, n).astype(float)    # k-th value shared by ~10k entries
    elif case == "zeros":
        x = np.abs(rng.normal(size=n)) * (rng.random(n) < 0.03)   # k-th largest is 0
    elif case == "const":
        x = np.full(n, 3.0)
    else:
        x = -np.abs(rng.standard_cauchy(n))
    for k in ((1, 2000, n - 1) if case in ("normal", "ties") else (2000,)):
        _check(x, k, jnp.float32, method)


@pytest.mark.parametrize("method", COUNTING)
@pytest.mark.parametrize("case", ["normal", "ties", "clustered"])
def test_block_gathered_candidates(method, case):
    """n > 15 * 4096: the rows holding the bracket's last entries are found through groups of
    17 rows first."""
    rng = np.random.default_rng(11)
    n = 100_003
    if case == "normal":
        x = rng.normal(size=n)
    elif case == "ties":
        x = rng.integers(0, 50, n).astype(float)
    else:                                   # the k-th value sits in a dense cluster near 1
        x = np.where(rng.random(n) < 0.2, 1.0 + 1e-6 * rng.random(n), rng.normal(size=n))
    for k in (1, 5000, 20_000, n - 1):
        _check(x, k, jnp.float32, method)


@pytest.mark.parametrize("method", COUNTING)
def test_tail_entries_outside_row_counts(method):
    """The last n mod 255 (here 254) entries have no row counts; the k-th value sits among them
    and ties span rows and tail."""
    rng = np.random.default_rng(21)
    n = 255 * 160 + 254
    x = rng.normal(size=n)
    x[-254:] = rng.integers(0, 3, 254) + 5.0          # 5, 6, 7 only in the tail ...
    x[:: 997] = 6.0                                   # ... and some 6s in the rows
    for k in (1, 60, 100, 254, 300):
        _check(x, k, jnp.float32, method)


def _search_cut(x: np.ndarray, k: int, method: str) -> tuple[float, int]:
    """(t as a float, cut) straight from :func:`topk.top_k_threshold`."""
    t, cut = jax.jit(lambda v: topk.top_k_threshold(v, k, method=method))(
        jnp.asarray(x, jnp.float32))
    return float(t), int(cut)


@pytest.mark.parametrize("method", COUNTING)
@pytest.mark.parametrize("n", [100_003, 255 * 160 + 254])
def test_few_ties_at_threshold_cut_from_gathered_entries(method, n):
    """A handful of entries equal to the k-th value, spread over early rows, late rows and the
    tail: the searches resolve the tie cut from the gathered entries (no whole-array pass), and
    the cut is the flat index of the last selected tie."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(np.float32)
    k = n // 20
    v = np.sort(x)[::-1][k - 1]                        # the k-th largest value
    ties = np.array([3, n // 2 + 1, n - 100, n - 2])   # the tail starts at 255 * (n // 255)
    ties = ties[x[ties] < v]                           # turn entries below v into ties ...
    x[ties] = v
    need = k - int((x > v).sum())                      # ... so k - #(x > v) of them are kept
    eq = np.flatnonzero(x == v)
    assert eq.size >= need + 2 >= 3
    t, cut = _search_cut(x, k, method)
    assert t == v and cut == eq[need - 1]
    _check(x, k, jnp.float32, method)


@pytest.mark.parametrize("method", COUNTING)
@pytest.mark.parametrize("where", ["rows", "tail"])
def test_many_ties_pinned_threshold_cut_from_row_counts(method, where):
    """The k-th largest is 0 and ~97% of the entries are 0: the search pins t = 0 (thousands of
    ties, none gathered) and the cut comes from the row counts: the flat index of the
    (k - #(x > 0))-th zero, in the rows or in the last 254 entries (the tail)."""
    rng = np.random.default_rng(5)
    n = 255 * 400 + 254
    x = (np.abs(rng.normal(size=n)) * (rng.random(n) < 0.03)).astype(np.float32)
    zeros = np.flatnonzero(x == 0)
    in_rows = int((zeros < n - 254).sum())
    need = 4000 if where == "rows" else in_rows + 7
    k = int((x > 0).sum()) + need
    t, cut = _search_cut(x, k, method)
    # t may be pinned on a subnormal key, which XLA:CPU compares equal to 0 (see module doc)
    assert 0.0 <= t < np.finfo(np.float32).tiny
    assert cut == zeros[need - 1] and (cut >= n - 254) == (where == "tail")
    _check(x, k, jnp.float32, method)


@pytest.mark.parametrize("method", COUNTING)
def test_no_ties_cut_is_n(method):
    x = np.random.default_rng(8).permutation(100_003).astype(np.float32)
    t, cut = _search_cut(x, 4321, method)
    assert t == 100_003 - 4321 and cut == 100_003


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [700, 40_007, 100_003])
def test_absolute_ranks_magnitudes(method, n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n) * (rng.random(n) < 0.7)
    x[: n // 10] = -x[n // 10: 2 * (n // 10)]         # +-pairs: ties in |x|
    k = max(1, n // 20)
    got = np.asarray(jax.jit(lambda v: top_k_mask(v, k, method=method, absolute=True))(
        jnp.asarray(x, jnp.float32)))
    np.testing.assert_array_equal(got, reference_mask(np.abs(x.astype(np.float32)), k))


@pytest.mark.parametrize("method", COUNTING)
def test_threshold_form_matches_mask(method):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.integers(-6, 7, (3, 5000)).astype(np.float32))
    for k in (1, 777, 14_999):
        t, cut = jax.jit(lambda v, k=k: topk.top_k_threshold(v, k, method=method,
                                                              absolute=True))(x)
        got = np.asarray(topk.threshold_mask(x, t, cut, absolute=True))
        assert got.shape == x.shape
        np.testing.assert_array_equal(got, reference_mask(np.abs(np.asarray(x)), k))


@pytest.mark.parametrize("method", METHODS)
def test_shape_preserved_and_sfw_sizes(method):
    x = jnp.abs(jax.random.normal(jax.random.key(0), (3, 3, 16, 32)))
    k = topk_k = min(max(10, int(0.05 * x.size)), x.size)
    got = np.asarray(top_k_mask(x, k, method=method))
    assert got.shape == x.shape and int(got.sum()) == topk_k
    np.testing.assert_array_equal(got, reference_mask(np.asarray(x), k))


def test_all_methods_identical_under_jit_and_vmap():
    xs = jnp.asarray(np.random.default_rng(1).integers(0, 5, (4, 3000)).astype(np.float32))
    masks = [np.asarray(jax.jit(jax.vmap(lambda x, m=m: top_k_mask(x, 150, method=m)))(xs))
             for m in METHODS]
    for m in masks:
        assert m.shape == (4, 3000)
        np.testing.assert_array_equal(m.sum(axis=1), 150)
        np.testing.assert_array_equal(m, masks[0])
    for i in range(4):
        np.testing.assert_array_equal(masks[0][i], reference_mask(np.asarray(xs[i]), 150))


@pytest.fixture
def x64():
    """float64 on for one test (``jax.config``: ``jax.enable_x64`` is jax >= 0.8 only)."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@st.composite
def array_lists(draw):
    """1 to 4 (array, k) of :func:`arrays_and_k`, each in its own float dtype."""
    items = [draw(arrays_and_k(max_n=300)) for _ in range(draw(st.integers(1, 4)))]
    return [(x, k, draw(st.sampled_from(DTYPES))) for x, k in items]


@SETTINGS
@given(data=array_lists(), absolute=st.booleans())
def test_segmented_selects_every_array_of_a_list(data, absolute):
    """segtopk.top_k_thresholds: one search per key width over all the arrays, each array's
    (t, cut) giving its own reference mask."""
    xs = [jnp.asarray(x, d) for x, _, d in data]
    ks = [k for _, k, _ in data]
    sels = jax.jit(lambda xs: segtopk.top_k_thresholds(xs, ks, absolute=absolute))(xs)
    for x, k, (t, cut) in zip(xs, ks, sels):
        got = np.asarray(topk.threshold_mask(x, t, cut, absolute=absolute))
        v = np.asarray(x.astype(jnp.float32))
        np.testing.assert_array_equal(got, reference_mask(np.abs(v) if absolute else v, k))


def test_select_segments_of_several_arrays_with_traced_counts():
    """The engine on keys: segments of several arrays ranked as their concatenation (ties across
    arrays by position), any k from 0 to n_s as a traced argument, the extreme keys 1 and
    key_top - 1; equal to the host sort (host_select) and to the reference."""
    rng = np.random.default_rng(9)
    top = segtopk.key_top(jnp.uint32)
    sizes, segment_of = (5, 1030, 1, 2048, 700, 3), (0, 0, 1, 2, 2, 2)
    pool = np.array([1, 2, 3, top - 2, top - 1], np.uint32)
    keys = [pool[rng.integers(0, pool.size, n)] for n in sizes]
    lay = segtopk.make_layout(sizes, segment_of)
    f = jax.jit(lambda keys, ks: segtopk.select(keys, ks, lay))
    seg_keys = [np.concatenate([k for k, s in zip(keys, segment_of) if s == g]) for g in range(3)]
    levels = np.array([[0, 0, 0], [1, 1, 1], [1035, 1, 2751], [600, 0, 1400], [3, 1, 2000]])
    host_t, host_cut = segtopk.host_select(keys, segment_of, levels)
    for lv, ks in enumerate(levels):
        t, cut = f([jnp.asarray(k) for k in keys], jnp.asarray(ks, jnp.int32))
        np.testing.assert_array_equal(np.asarray(t), host_t[lv])
        np.testing.assert_array_equal(np.asarray(cut), host_cut[lv])
        for g in range(3):
            got = np.asarray(segtopk.selected(jnp.asarray(seg_keys[g]), t[g], cut[g]))
            np.testing.assert_array_equal(got, reference_mask(seg_keys[g].astype(np.float64),
                                                              int(ks[g])) if ks[g] else 0)
        per_array = [np.asarray(segtopk.selected(jnp.asarray(k), t[s], cut[s], off))
                     for k, s, off in zip(keys, segment_of, lay.offsets)]
        assert [int(sum(m.sum() for m, s in zip(per_array, segment_of) if s == g))
                for g in range(3)] == list(ks)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_float64_with_x64(method, x64):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=3000), np.full(500, 0.25), [1 + 2 ** -40, 1.0]])
    xj = jnp.asarray(x, jnp.float64)
    assert xj.dtype == jnp.float64
    for k in (1, 2, 700, 3000):
        got = np.asarray(jax.jit(lambda v, k=k: top_k_mask(v, k, method=method))(xj))
        np.testing.assert_array_equal(got, reference_mask(x, k))


def test_signed_zero_and_subnormals_tie_with_zero_by_index():
    x = jnp.array([-0.0, 1e-45, 0.0, -1e-40, -1.0, 0.0], jnp.float32)
    if backend_flushes_denormals():             # subnormals tie with +-0: lower index first
        want = {2: [True, True, False, False, False, False],
                4: [True, True, True, True, False, False]}
    else:                                       # 1e-45 > 0 == -0 > -1e-40
        want = {2: [True, True, False, False, False, False],
                4: [True, True, True, False, False, True]}
    for m in METHODS:
        for k, mask in want.items():
            np.testing.assert_array_equal(np.asarray(top_k_mask(x, k, method=m)), mask)
            np.testing.assert_array_equal(mask, reference_mask(np.asarray(x), k))


_KEY_VALUES = {
    "float32": [-np.inf, -3.5, -1e-38, -0.0, 0.0, 1e-45, 2.0, np.inf],
    # 16-bit inputs are keyed by their own 16 bits (no subnormals here: whether converting them
    # flushes to zero is the backend's choice)
    "bfloat16": [-np.inf, -3.5, -2.0 ** -126, -0.0, 0.0, 2.0 ** -126, 2.0, 2.015625, np.inf],
    "float16": [-np.inf, -65504.0, -3.5, -0.0, 0.0, 2.0 ** -14, 2.0, 2.001953125, np.inf],
}


@pytest.mark.parametrize("name", sorted(_KEY_VALUES))
def test_key_transform_is_order_preserving_and_invertible(name):
    dtype = jnp.dtype(name)
    sp = segtopk.key_space(dtype)
    assert sp.kdt == (jnp.uint16 if dtype.itemsize == 2 else jnp.uint32)
    vals = jnp.array(_KEY_VALUES[name], jnp.float32)      # compared as float32, keyed in dtype
    assert np.array_equal(np.asarray(vals.astype(dtype).astype(jnp.float32)), np.asarray(vals))
    keys = segtopk.to_key(vals, sp)
    assert keys.dtype == sp.kdt
    assert np.all(np.diff(np.asarray(keys).astype(np.int64)) > 0)
    if dtype.itemsize == 2:     # adjacent representable values: adjacent keys
        assert int(keys[-2]) - int(keys[-3]) == 1
    back = segtopk.from_key(keys, sp)
    assert back.dtype == jnp.float32
    np.testing.assert_array_equal(np.signbit(np.asarray(back)), np.signbit(np.asarray(vals)))
    np.testing.assert_array_equal(np.asarray(back), np.asarray(vals))
    # the engine's keys: inside [1, key_top - 1], the same except that -0.0 is keyed as +0.0
    eng = np.asarray(segtopk.float_keys(vals.astype(dtype)))
    assert eng.min() >= 1 and eng.max() < segtopk.key_top(sp.kdt)
    plus = np.asarray(segtopk.to_key(jnp.where(vals == 0, 0.0, vals), sp))
    np.testing.assert_array_equal(eng, plus)


def test_counts_pass_exact():
    rng = np.random.default_rng(5)
    x = rng.normal(size=15 * 17 * 3 + 11).astype(np.float32)
    ts = np.sort(rng.normal(size=8)).astype(np.float32)
    got = np.asarray(jax.jit(topk._counts)(jnp.asarray(x), jnp.asarray(ts)))
    np.testing.assert_array_equal(got, (x[:, None] >= ts[None, :]).sum(0))


def test_auto_resolution_per_backend():
    sort_below, large = topk.AUTO_RULES["cpu"]
    assert (sort_below, large) == (32768, "search")
    assert topk.resolve_method(sort_below - 1, "auto", "cpu") == "sort"
    assert topk.resolve_method(sort_below, "auto", "cpu") == "search"
    for backend in ("gpu", "cuda", "rocm", "tpu", "METAL"):
        for n in (1, 1000, 2_359_296):
            assert topk.resolve_method(n, "auto", backend) == "bisect"
    assert topk.resolve_method(100, "radix", "cpu") == "radix"
    assert topk.resolve_method(100, "search", "tpu") == "search"
    assert topk.resolve_method(10 ** 6) == topk.resolve_method(10 ** 6, "auto",
                                                               jax.default_backend())


def test_auto_rules_table_sets_a_backend(monkeypatch):
    """A device measurement sets a backend's rule in one place: AUTO_RULES."""
    monkeypatch.setitem(topk.AUTO_RULES, "gpu", (4096, "search"))
    assert topk.resolve_method(4095, "auto", "cuda") == "sort"
    assert topk.resolve_method(4096, "auto", "gpu") == "search"
    assert topk.resolve_method(4096, "auto", "tpu") == "bisect"


@pytest.mark.parametrize("dtype", ("float32", "bfloat16", "float16", "float64"))
def test_pass_count_pins_the_key(dtype):
    """(T + 1)^passes covers the initial key bracket, and one pass fewer does not ('bisect' and
    the segmented engine, whose bracket is [1, key_top))."""
    sp = segtopk.key_space(jnp.dtype(dtype))
    lo, hi = topk._bisect_bracket(sp)
    p = topk.bisect_passes(jnp.dtype(dtype))
    assert p == {"float32": 8, "bfloat16": 4, "float16": 4, "float64": 16}[dtype]
    assert (topk._BISECT_T + 1) ** (p - 1) < hi - lo <= (topk._BISECT_T + 1) ** p
    assert segtopk.passes(sp.kdt) == p
    assert 16 ** (p - 1) < segtopk.key_top(sp.kdt) - 1 <= 16 ** p
    if dtype != "float64":                      # (jnp float64 arrays need x64)
        keys = segtopk.to_key(jnp.array([-np.inf, np.inf], sp.fdt), sp)
        assert (lo, hi) == (int(keys[0]), int(keys[1]) + 1)


FIXED_PASS_METHODS = ("bisect", "segmented")

# one comparison of the keys against 15 thresholds per pass: [n, 15] for 'bisect', [blocks of
# 32 rows, 32 rows, 15, 32 entries] for 'segmented'
_PASS_COMPARE = {"bisect": r"bool\[120000,15\] = ge", "segmented": r"bool\[118,32,15,32\] = ge"}


def _fixed_fn(method, k, absolute):
    return lambda v: topk.top_k_threshold(v, k, method=method, absolute=absolute)


@pytest.mark.parametrize("method", FIXED_PASS_METHODS)
@pytest.mark.parametrize("dtype", ("float32", "bfloat16", "float16"))
@pytest.mark.parametrize("absolute", [False, True])
def test_fixed_passes_have_no_loops_or_conditionals(method, dtype, absolute):
    """'bisect' and 'segmented' are a fixed sequence of operations: their jaxpr and lowered
    module have no while loop and no conditional (their predicates would be copied to the host
    on a GPU)."""
    x = jnp.zeros((3, 40_000), dtype)
    f = _fixed_fn(method, 1234, absolute)
    jaxpr = str(jax.make_jaxpr(f)(x))
    text = jax.jit(f).lower(x).as_text()
    for word in ("while[", "cond["):
        assert word not in jaxpr, word
    for word in ("stablehlo.while", "stablehlo.case", "stablehlo.if"):
        assert word not in text, word
    # the other counting paths do have them: the check can fail
    other = str(jax.make_jaxpr(lambda v: topk.top_k_threshold(v, 1234, method="search"))(x))
    assert "while[" in other and "cond[" in other
    # the passes are there: one comparison per pass (4 for 16-bit keys, 8 for float32)
    passes = re.findall(_PASS_COMPARE[method], jaxpr)
    assert len(passes) == topk.bisect_passes(jnp.dtype(dtype))


@pytest.mark.parametrize("method", FIXED_PASS_METHODS)
@pytest.mark.parametrize("dtype", ("float32", "bfloat16"))
def test_fixed_passes_under_vmap_match_each_row(method, dtype):
    """vmap of the (t, cut) selection: every row's (t, cut) equals the unbatched call's, and
    its mask the reference."""
    rng = np.random.default_rng(4)
    rows = [rng.normal(size=6000), rng.integers(0, 3, 6000).astype(float),
            np.zeros(6000), np.abs(rng.normal(size=6000)) * (rng.random(6000) < 0.02),
            np.full(6000, -np.inf)]
    xs = jnp.asarray(np.stack(rows), dtype)
    k = 300
    f = _fixed_fn(method, k, True)
    tb, cb = jax.jit(jax.vmap(f))(xs)
    assert tb.shape == cb.shape == (len(rows),)
    for i in range(len(rows)):
        t, c = jax.jit(f)(xs[i])
        assert float(tb[i]) == float(t) and int(cb[i]) == int(c)
        mask = np.asarray(topk.threshold_mask(xs[i], tb[i], cb[i], absolute=True))
        np.testing.assert_array_equal(
            mask, reference_mask(np.abs(np.asarray(xs[i].astype(jnp.float32))), k))


_SPECIAL = {
    "float32": [np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-40, 1e-38, 2.0, -2.0, 3.4e38, -3.4e38],
    "bfloat16": [np.inf, -np.inf, -0.0, 0.0, 2.0 ** -126, -(2.0 ** -126), 2.0, -2.0, 3.0e38],
    "float16": [np.inf, -np.inf, -0.0, 0.0, 2.0 ** -24, -(2.0 ** -24), 2.0 ** -14, 2.0, 65504.0],
}


@pytest.mark.parametrize("dtype", sorted(_SPECIAL))
@pytest.mark.parametrize("method", EXACT_METHODS)
def test_special_values_every_k(method, dtype):
    """Signed zeros, subnormals (float32; float16's are normal float32 values), infinities and
    the extremes, repeated so that each ties; k = 1, 2, 3, 5, n / 2, n - 1."""
    vals = np.asarray(_SPECIAL[dtype])
    x = np.concatenate([vals, vals[::-1], vals[::2]])
    for k in (1, 2, 3, 5, x.size // 2, x.size - 1):
        _check(x, k, jnp.dtype(dtype), method)


@pytest.mark.parametrize("k", [0, -1, 11, 2.0, True, None, "3"])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="k must be an int in \\[1, 10\\]"):
        top_k_mask(jnp.zeros(10), k)


@pytest.mark.parametrize("method", ["fast", "", None, "SORT"])
def test_bad_method_raises(method):
    with pytest.raises(ValueError, match="method must be one of"):
        top_k_mask(jnp.zeros(10), 3, method=method)


def test_non_float_raises():
    with pytest.raises(ValueError, match="x must be a floating-point array"):
        top_k_mask(jnp.arange(10), 3)
