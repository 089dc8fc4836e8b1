"""Exact top-k selection masks without a full sort.

``top_k_mask(x, k)`` returns a bool array shaped like ``x`` with exactly ``k`` True entries: the
``k`` largest values of ``x`` (compared in flat, row-major order), ties broken deterministically by
lower flat index first (the order ``jax.lax.top_k`` uses). ``k`` is a static Python int.

Order and special values
------------------------
Values are compared as the backend compares floats, so ``-0.0 == +0.0`` (they tie and the lower
index wins; ``'sort'`` canonicalises ``-0.0`` to ``+0.0`` first, since ``lax.top_k`` orders
``-0.0 < +0.0``) and, where XLA flushes denormals to zero (CPU), float32/bfloat16 subnormals tie
with 0 as well; all methods agree on this. ``+-inf`` are ordinary values.
NaN is **not supported**: with NaN in ``x`` the result is unspecified (it may not even have ``k``
True entries). In SFW the input is ``|m|`` for a finite momentum ``m``.

Methods
-------
``'sort'``
    ``jax.lax.top_k`` on the flattened array, then a scatter into a False mask. On XLA:CPU this is
    a partial sort costing about 390 ms for n = 2.36M, k = 5% (2-core CPU).
``'radix'``
    Exact threshold selection by counting. Each float is mapped to an unsigned integer *key* by
    the order-preserving transform ``key = bits | signbit`` for ``x >= 0`` and ``~bits`` for
    ``x < 0`` (``bits`` = IEEE bit pattern; 16-bit floats are first converted exactly to float32),
    so ``x < y  <=>  key(x) < key(y)``. With ``F(t) = #{i : x_i >= float(t)}`` (non-increasing in
    ``t``) the k-th largest value has key ``t* = max{t : F(t) >= k}``. The search keeps a bracket
    ``lo < hi`` with ``F(lo) >= k > F(hi)``, starting from ``lo = key(-inf)`` (``F = n``) and
    ``hi = key(+inf) + 1`` (``F = 0``), and every pass evaluates ``F`` at 8 keys strictly inside
    the bracket (evenly spaced, so the bracket shrinks >= 9x) until ``hi = lo + 1``, i.e. at most
    ``ceil(32 / log2 9) = 11`` passes for 32-bit keys. Then ``t = lo`` and
    ``mask = (x > t) | ((x == t) & (index <= p))`` where ``p`` is the flat index of the
    ``(k - F(hi))``-th entry equal to ``t``; ``p = n`` when ``F(lo) = k`` (no extra ties, the common
    case); otherwise ``p`` is found by block counts + a cumulative sum inside one block
    (``lax.cond``, so the rare tie path costs nothing when unused).
``'search'``
    The same exact counting search, but the bracket is placed adaptively: the first pass uses
    thresholds taken from a sorted strided sample of 4096 entries around the sample quantile
    ``1 - k/n`` (+-{1/3, 1, 2, 4} sample standard deviations), later passes interpolate the
    target key linearly inside the bracket (``lo + L (F(lo) - k) / (F(lo) - F(hi))``) and put 6
    thresholds at +-{0.3, 1, 3} standard deviations of that estimate plus 2 at ``L/3`` and
    ``2L/3`` (so the bracket still shrinks >= 3x per pass). Typical data needs 3-6 passes.
``'auto'``
    ``'sort'`` for ``n < 32768`` and ``'search'`` otherwise, on every backend (not yet measured
    off CPU). Measured on the 2-core CPU (float32, K = 5%, medians, ``benchmarks/bench_topk.py``):
    n = 16384: sort 0.55 ms, radix 0.60, search 0.88; n = 36864: sort 1.5, radix 4.1, search 1.0;
    n = 147456: sort 13.4, search 5.5; n = 2.36M: sort ~390, radix ~17-20, search ~7-10 (3
    passes; min over reps, the machine is shared).

Why counting passes are fast on XLA:CPU
---------------------------------------
A pass must read ``x`` once and reduce, but XLA:CPU does not fuse an elementwise producer into a
full reduction (it materialises the indicator array), and max/min reductions are slow. It does
fuse a reduction over a *small minor axis*. So a pass reshapes ``x`` to ``[n // 15, 15]`` rows,
packs the 8 indicators ``x >= t_j`` of an entry into 4-bit lanes of one uint32 (``sum_j 1{x >=
t_j} << 4j``), and sums each row in that same fused loop (a lane sums at most 15 ones, so no
carry). The ``n / 15`` row sums are split into two words of 8-bit lanes (even / odd thresholds),
summed in groups of 17 (at most 255 per lane), unpacked and summed. One pass gives 8 exact counts
for about the cost of one plain elementwise pass over ``x`` (about 1.6 ms for n = 2.36M).

All methods work for float16, bfloat16, float32 and float64 (with x64 enabled), any shape, under
``jit`` (``k`` static). Under ``vmap`` the searches' ``while_loop`` / ``cond`` batch (every
batch member runs until all are done and the tie path is computed for all).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

METHODS = ("auto", "sort", "radix", "search")

#: ``'auto'`` uses ``'sort'`` below this many entries and ``'search'`` at or above it.
AUTO_SORT_MAX_N = 32768

_ROW = 15          # entries per fused row sum (4-bit lanes hold <= 15)
_GROUP = 17        # row sums per second-stage group (8-bit lanes hold <= 15 * 17 = 255)
_NT = 8            # thresholds per pass
_SAMPLE = 4096     # sample size for the first 'search' pass
_TIE_BLOCK = 1024  # block size of the tie-break index search


# ----------------------------------------------------------------------------------------------
# Keys


def _work_dtype(dtype: jnp.dtype) -> tuple[jnp.dtype, jnp.dtype]:
    """(float dtype compared in, unsigned key dtype) for an input float dtype."""
    if dtype == jnp.float64:
        return jnp.dtype(jnp.float64), jnp.dtype(jnp.uint64)
    return jnp.dtype(jnp.float32), jnp.dtype(jnp.uint32)


def _to_key(v: jax.Array, kdt: jnp.dtype) -> jax.Array:
    """Order-preserving map float -> unsigned int: ``v < w  <=>  key(v) < key(w)`` (no NaN)."""
    bits = lax.bitcast_convert_type(v, kdt)
    top = jnp.array(1, kdt) << (jnp.iinfo(kdt).bits - 1)
    return jnp.where((bits & top) != 0, ~bits, bits | top)


def _from_key(key: jax.Array, fdt: jnp.dtype, kdt: jnp.dtype) -> jax.Array:
    """Inverse of :func:`_to_key`."""
    top = jnp.array(1, kdt) << (jnp.iinfo(kdt).bits - 1)
    bits = jnp.where((key & top) != 0, key ^ top, ~key)
    return lax.bitcast_convert_type(bits, fdt)


# ----------------------------------------------------------------------------------------------
# One counting pass: F(t_j) = #{x >= t_j} for 8 thresholds


def _counts(xf: jax.Array, ts: jax.Array) -> jax.Array:
    """Exact ``[#(xf >= ts[j]) for j in range(8)]`` (int32) for flat ``xf`` [n], ``ts`` [8].

    Packs the 8 indicators in 4-bit lanes of a uint32, sums rows of 15 entries inside one fused
    loop, then regroups lanes (see module docstring). ``n < 2**31``.
    """
    n = xf.shape[0]
    rows = n // _ROW
    # Materialise the 8 (ascending) thresholds: otherwise XLA fuses their scalar arithmetic into
    # the loop over n and recomputes it for every entry (measured 5x slower). A sort is never
    # fused (lax.optimization_barrier is dropped by the compiler); on sorted input it is a no-op.
    ts = jnp.sort(ts)
    total = jnp.zeros((_NT,), jnp.int32)
    if rows:
        x2 = xf[: rows * _ROW].reshape(rows, _ROW)
        packed = jnp.zeros(x2.shape, jnp.uint32)
        for j in range(_NT):
            packed = packed | ((x2 >= ts[j]).astype(jnp.uint32) << (4 * j))
        s1 = jnp.sum(packed, axis=1, dtype=jnp.uint32)                   # [rows], 4-bit lanes
        pad = (-rows) % _GROUP
        s1 = jnp.pad(s1, (0, pad)).reshape(-1, _GROUP)
        even = jnp.sum(s1 & jnp.uint32(0x0F0F0F0F), axis=1, dtype=jnp.uint32)   # t0,t2,t4,t6
        odd = jnp.sum((s1 >> 4) & jnp.uint32(0x0F0F0F0F), axis=1, dtype=jnp.uint32)
        lanes = jnp.stack([(w >> (8 * i)) & jnp.uint32(255)
                           for i in range(4) for w in (even, odd)])           # [8, groups]
        total = jnp.sum(lanes.astype(jnp.int32), axis=1, dtype=jnp.int32)
    if rows * _ROW < n:
        tail = xf[rows * _ROW:]
        total = total + jnp.sum((tail[:, None] >= ts[None, :]).astype(jnp.int32), axis=0,
                                dtype=jnp.int32)
    return total


def _thresholds(lo: jax.Array, hi: jax.Array, pos: jax.Array, fdt, kdt) -> tuple[jax.Array, ...]:
    """Keys ``lo + clip(floor(L * pos), 1, L - 1)`` (monotone in ``pos``) and their floats."""
    span = hi - lo
    cdt = jnp.float64 if kdt == jnp.uint64 else jnp.float32
    bits = jnp.iinfo(kdt).bits
    big = float(2 ** bits - 2 ** (bits - 24))   # exactly representable, < 2**bits
    off = jnp.clip(jnp.floor(span.astype(cdt) * pos.astype(cdt)), 1.0, big).astype(kdt)
    off = jnp.clip(off, jnp.array(1, kdt), span - jnp.array(1, kdt))
    keys = lo + off
    return keys, _from_key(keys, fdt, kdt)


def _update(lo, hi, f_lo, f_hi, keys, cnts, k):
    """Shrink the bracket with the counts of one pass (keys ascending, counts non-increasing)."""
    ge = cnts >= k
    # Largest key with F >= k (keys ascending) and smallest key with F < k.
    nge = jnp.sum(ge.astype(jnp.int32), dtype=jnp.int32)
    last = jnp.maximum(nge - 1, 0)
    new_lo = jnp.where(nge > 0, keys[last], lo)
    new_flo = jnp.where(nge > 0, cnts[last], f_lo)
    first = jnp.minimum(nge, _NT - 1)
    new_hi = jnp.where(nge < _NT, keys[first], hi)
    new_fhi = jnp.where(nge < _NT, cnts[first], f_hi)
    return new_lo, new_hi, new_flo, new_fhi


def _even_positions(lo, hi, f_lo, f_hi, k):
    del lo, hi, f_lo, f_hi, k
    return jnp.arange(1, _NT + 1, dtype=jnp.float32) / (_NT + 1)


_INTERP_OFFSETS = (-3.0, -1.0, -0.3, 0.3, 1.0, 3.0)


def _interp_positions(lo, hi, f_lo, f_hi, k):
    """Fractions of the bracket: 6 around the linear estimate of t*, plus 1/3 and 2/3."""
    del lo, hi
    m = (f_lo - f_hi).astype(jnp.float32)
    frac = (f_lo - k).astype(jnp.float32) / m + 0.5 / m
    sd = jnp.sqrt(frac * (1.0 - frac) / m) + 0.5 / m
    pos = jnp.concatenate([frac + sd * jnp.array(_INTERP_OFFSETS, jnp.float32),
                           jnp.array([1.0 / 3.0, 2.0 / 3.0], jnp.float32)])
    return jnp.sort(jnp.clip(pos, 0.0, 1.0))


def _search_key(xf: jax.Array, k: int, first_pass: bool, positions) -> tuple[jax.Array, ...]:
    """Exact selection threshold of flat ``xf`` by counting: ``(lo, F(lo), F(hi))``.

    On return either ``F(lo) == k`` (then ``x >= float(lo)`` has exactly k entries, the top k) or
    ``lo = t*`` is the key of the k-th largest entry and ``F(hi) = #(x > float(lo))`` (``hi = lo+1``).
    """
    fdt, kdt = xf.dtype, _work_dtype(xf.dtype)[1]
    n = xf.shape[0]
    lo = _to_key(jnp.array(-jnp.inf, fdt), kdt)
    hi = _to_key(jnp.array(jnp.inf, fdt), kdt) + jnp.array(1, kdt)
    f_lo = jnp.array(n, jnp.int32)
    f_hi = jnp.array(0, jnp.int32)
    if first_pass:
        s = min(n, _SAMPLE)
        stride = n // s
        sample = jnp.sort(_to_key(xf[:: stride][:s], kdt))               # ascending keys
        q = 1.0 - k / n
        sd = math.sqrt(s * q * (1.0 - q)) + 1.0
        idx = [min(max(int(round(q * s + d * sd)), 0), s - 1)
               for d in (-4.0, -2.0, -1.0, -1 / 3, 1 / 3, 1.0, 2.0, 4.0)]
        keys = sample[jnp.array(idx)]
        cnts = _counts(xf, _from_key(keys, fdt, kdt))
        lo, hi, f_lo, f_hi = _update(lo, hi, f_lo, f_hi, keys, cnts, k)

    def cond(state):
        lo, hi, f_lo, _ = state
        # Done when t = lo is pinned (hi = lo + 1) or when exactly k entries are >= lo: then the
        # mask is x >= float(lo) whatever the true k-th key is (often saves 1-2 passes).
        return (hi - lo > jnp.array(1, kdt)) & (f_lo != k)

    def body(state):
        lo, hi, f_lo, f_hi = state
        keys, ts = _thresholds(lo, hi, positions(lo, hi, f_lo, f_hi, k), fdt, kdt)
        cnts = _counts(xf, ts)
        return _update(lo, hi, f_lo, f_hi, keys, cnts, k)

    lo, hi, f_lo, f_hi = lax.while_loop(cond, body, (lo, hi, f_lo, f_hi))
    return lo, f_lo, f_hi


def _tie_cut(eq: jax.Array, need: jax.Array) -> jax.Array:
    """Flat index of the ``need``-th True of ``eq`` (1-based ``need`` <= #True), via block sums."""
    n = eq.shape[0]
    pad = (-n) % _TIE_BLOCK
    blocks = jnp.pad(eq, (0, pad)).reshape(-1, _TIE_BLOCK).astype(jnp.int32)
    per = jnp.sum(blocks, axis=1, dtype=jnp.int32)
    cum = jnp.cumsum(per, dtype=jnp.int32)
    b = jnp.sum((cum < need).astype(jnp.int32), dtype=jnp.int32)
    before = cum[b] - per[b]
    row = jnp.cumsum(lax.dynamic_index_in_dim(blocks, b, axis=0, keepdims=False), dtype=jnp.int32)
    j = jnp.sum((row < need - before).astype(jnp.int32), dtype=jnp.int32)
    return b * _TIE_BLOCK + j


def _top_k_mask_count(x: jax.Array, k: int, adaptive: bool) -> jax.Array:
    fdt, kdt = _work_dtype(x.dtype)
    xf = x.reshape(-1).astype(fdt)
    n = xf.shape[0]
    positions = _interp_positions if adaptive else _even_positions
    t_key, f_lo, f_hi = _search_key(xf, k, first_pass=adaptive, positions=positions)
    t = _from_key(t_key, fdt, kdt)
    # F(lo) == k: every entry equal to t is selected (p = n). Else pick the first k - F(hi) ties.
    cut = lax.cond(f_lo == k,
                   lambda: jnp.array(n, jnp.int32),
                   lambda: _tie_cut(xf == t, k - f_hi).astype(jnp.int32))
    idx = lax.broadcasted_iota(jnp.int32, (n,), 0)
    mask = (xf > t) | ((xf == t) & (idx <= cut))
    return mask.reshape(x.shape)


def _top_k_mask_sort(x: jax.Array, k: int) -> jax.Array:
    flat = x.reshape(-1)
    flat = jnp.where(flat == 0, jnp.zeros_like(flat), flat)    # -0.0 ties with +0.0
    _, idx = lax.top_k(flat, k)
    return jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(x.shape)


def resolve_method(n: int, method: str = "auto", backend: str | None = None) -> str:
    """The concrete method ``top_k_mask`` uses for ``n`` entries (``'auto'`` resolved).

    ``'auto'``: ``'sort'`` if ``n < AUTO_SORT_MAX_N`` else ``'search'`` (same on every backend
    for now; ``backend`` defaults to ``jax.default_backend()``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    del backend  # measured on CPU only; GPU/TPU use the same rule until measured there
    return "sort" if n < AUTO_SORT_MAX_N else "search"


def top_k_mask(x: jax.Array, k: int, *, method: str = "auto") -> jax.Array:
    """Bool mask of the ``k`` largest entries of ``x`` (exactly ``k`` True; ties: lower index).

    Args:
      x: float array (float16, bfloat16, float32, float64), any shape, no NaN; n = x.size.
      k: static Python int, ``1 <= k <= n``.
      method: ``'auto'``, ``'sort'`` (``lax.top_k``), ``'radix'`` (even counting search, <= 11
        passes) or ``'search'`` (sample-guided counting search). All give identical masks.

    Returns:
      bool array of ``x.shape`` with ``mask.sum() == k``: ``mask[i]`` iff fewer than ``k``
      entries ``j`` have ``x[j] > x[i]`` or (``x[j] == x[i]`` and ``j < i``).
    """
    if not isinstance(x, (jax.Array, jnp.ndarray)) and not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
    n = x.size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] for an array of size {n}, got {k!r}")
    if n >= 2 ** 31:
        raise ValueError(f"x must have fewer than 2**31 entries, got size {n}")
    method = resolve_method(n, method)
    if k == n:
        return jnp.ones(x.shape, bool)
    if method == "sort":
        return _top_k_mask_sort(x, k)
    return _top_k_mask_count(x, k, adaptive=(method == "search"))
