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
True entries). In SFW the input is ``|m|`` (``absolute=True``) for a finite momentum ``m``.

Methods
-------
``'sort'``
    ``jax.lax.top_k`` on the flattened array, then a scatter into a False mask. On XLA:CPU this is
    a partial sort, O(n log n) and far slower than the counting paths for large n.
``'radix'``
    Exact threshold selection by counting. Each float is mapped to an unsigned integer *key* by
    the order-preserving transform ``key = bits | signbit`` for ``x >= 0`` and ``~bits`` for
    ``x < 0`` (``bits`` = IEEE bit pattern of the input dtype: 16-bit keys for float16 and
    bfloat16, whose values are compared after an exact conversion to float32; 32-bit keys for
    float32, 64-bit for float64), so ``x < y  <=>  key(x) < key(y)``. With
    ``F(t) = #{i : x_i >= float(t)}`` (non-increasing in ``t``) the k-th largest value has key
    ``t* = max{t : F(t) >= k}``. The search keeps a bracket
    ``lo < hi`` with ``F(lo) >= k > F(hi)``, starting from ``lo = key(-inf)`` (``F = n``) and
    ``hi = key(+inf) + 1`` (``F = 0``), and every pass over ``x`` evaluates ``F`` at 8 keys
    strictly inside the bracket (evenly spaced, so the bracket shrinks >= 9x). Passes stop as
    soon as ``F(lo) = k``, ``hi = lo + 1``, or at most 128 entries lie in ``[lo, hi)``. In the
    last case those entries are *gathered*: every pass also keeps its counts per row of 15
    entries, so the per-row count of bracket entries is known (one fused loop over the rows);
    a ``nonzero`` over it (in two levels above 4096 rows: first over groups of 17 rows) and a
    gather give the at most 128 rows holding them, and ``t`` is read off ``lax.top_k`` of
    those <= 1920 values (plus the < 255 tail entries) for far less than a pass. Then ``t`` is
    the k-th largest value and
    ``mask = (x > t) | ((x == t) & (index <= p))`` where ``p`` is the flat index of the
    ``(k - #(x > t))``-th entry equal to ``t``; ``p = n`` when ``F(t) = k`` (no extra ties, the
    common case). After the gathered finish every entry equal to ``t`` is among the gathered
    ones, in flat order, so ``p`` is read off their indices (a cumulative sum over <= 2175
    entries). When the passes pin ``t`` itself (``hi = lo + 1``, e.g. many zeros, or bfloat16
    data with thousands of equal values) the per-row counts of ``[lo, hi)`` are the per-row
    counts of the entries equal to ``t``: a cumulative sum over them finds the row of the cut,
    one over that row's 15 entries its position (no pass over ``x`` either).
``'search'``
    The same exact counting search, but the bracket is placed adaptively: the first pass uses
    thresholds taken from a strided sample (``n // 128`` entries, between 512 and 4096; its top
    values by ``lax.top_k``)
    around the sample quantile ``1 - k/n`` (+-{1/3, 1, 2, 4} sample standard deviations), later
    passes interpolate the target key linearly inside the bracket
    (``lo + L (F(lo) - k) / (F(lo) - F(hi))``) and put 6 thresholds at +-{0.3, 1, 3} standard
    deviations of that estimate plus 2 at ``L/3`` and ``2L/3`` (so the bracket still shrinks
    >= 3x per pass). Typical data needs 2 passes over ``x`` (n = 2.36M, K = 5%), then the
    gathered finish. The first two passes are not inside a ``while_loop`` (XLA would hoist
    ``|x|`` out of the loop and write it to memory); further passes run in a loop under a
    ``lax.cond``.
``'bisect'``
    The same counting over the same keys, data-independent (for GPU/TPU, where a ``while_loop``
    or ``cond`` whose predicate lives on the device copies it to the host every iteration): a
    fixed number of passes, unrolled, no loop and no conditional. The bracket starts at
    ``[key(-inf), key(+inf) + 1)``; each pass evaluates ``F`` at the ``T = 15`` keys
    ``min(lo + j s, hi)``, ``j = 1..15``, ``s = ceil((hi - lo) / 16)``, by one compare of the
    ``n`` values against the 15 thresholds and a sum over ``n`` (one reduction fusion), and
    keeps ``lo + j* s <= t* < min(lo + (j* + 1) s, hi)`` (``j*`` = how many have ``F >= k``),
    so the bracket shrinks 16x per pass: 4 passes pin ``t* = lo`` (``hi = lo + 1``) for 16-bit
    keys, 8 for float32, 16 for float64 (:func:`bisect_passes`). The tie cut follows from one
    more pass that counts ``#(x > t)``, ``#(x == t)`` and the entries equal to ``t`` per row of
    about ``sqrt(n)`` entries: a cumulative sum over the row counts finds the row of the
    ``(k - #(x > t))``-th such entry, one over that row's entries its position (``cut = n``
    when ``#(x >= t) = k``, selected, not branched on). Under ``vmap`` every operation batches
    as it is. On XLA:CPU each pass materialises the ``[n, 15]`` comparison, which makes it
    far slower than ``'search'`` there: not a CPU path.
``'segmented'``
    The engine of :mod:`sfw_jax.fw.segtopk` on one segment: the same fixed passes (15
    thresholds, 16x per pass) on integer keys laid out in blocks of 32 x 32, whose counts
    XLA:CPU fuses; its :func:`sfw_jax.fw.segtopk.top_k_thresholds` selects in every array of a
    list at once (the SFW update's and the pruning masks' engine).
``'auto'``
    Per backend, from :data:`AUTO_RULES`: on the CPU ``'sort'`` for ``n < 32768`` and
    ``'search'`` otherwise; on every other backend (GPU, TPU) ``'bisect'``: on an H100 the
    device suite measured it fastest at 7 of 8 float32 sizes from 36,864 to 2,359,296 entries
    (0.11-0.25 ms at K = 5 %, ``lax.top_k`` 0.16-0.29 ms; ``docs/performance.md``).
    ``resolve_method`` reads ``jax.default_backend()`` when the caller is traced, so a function
    traced for the default backend keeps that choice.
    ``benchmarks/bench_topk.py`` times every method per size and backend (the CPU rule is its
    crossover of 'sort' and 'search').

``top_k_threshold`` returns the exact selection as ``(t, cut)`` and ``threshold_mask`` evaluates
it elementwise, so a consumer (the SFW update) can fuse the mask into its own loops.

Why counting passes are fast on XLA:CPU
---------------------------------------
A pass must read ``x`` once and reduce, but XLA:CPU does not fuse an elementwise producer into a
full reduction (it materialises the indicator array), and max/min reductions are slow. It does
fuse a reduction over a *small minor axis*. So a pass reshapes ``x`` to ``[n // 15, 15]`` rows,
packs the 8 indicators ``x >= t_j`` of an entry into 4-bit lanes of one uint32 (``sum_j 1{x >=
t_j} << 4j``), and sums each row in that same fused loop (a lane sums at most 15 ones, so no
carry). The ``n / 15`` row sums are split into two words of 8-bit lanes (even / odd thresholds),
summed in groups of 17 (at most 255 per lane), unpacked and summed. One pass gives 8 exact counts
for about the cost of one plain elementwise pass over ``x``.

All methods work for float16, bfloat16, float32 and float64 (with x64 enabled), any shape, under
``jit`` (``k`` static). Under ``vmap`` the searches' ``while_loop`` / ``cond`` batch (every
batch member runs until all are done and the tie path is computed for all); ``'bisect'`` and
``'segmented'`` have none.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sfw_jax.fw import segtopk
from sfw_jax.fw.segtopk import KeySpace, from_key, key_space, to_key

__all__ = [
    "METHODS", "THRESHOLD_METHODS", "AUTO_RULES", "bisect_passes", "top_k_threshold",
    "threshold_mask", "backend_name", "resolve_method", "top_k_mask",
]


METHODS = ("auto", "sort", "radix", "search", "bisect", "segmented")

#: The methods whose selection is the threshold ``(t, cut)`` of :func:`top_k_threshold`.
THRESHOLD_METHODS = ("radix", "search", "bisect", "segmented")

#: ``'auto'`` per backend: ``(sort_below, method)`` = ``'sort'`` for fewer than ``sort_below``
#: entries, else ``method``. ``'cpu'``: the crossover that ``benchmarks/bench_topk.py``
#: measures; ``'default'`` covers every other backend (GPU, TPU): the data-independent
#: ``'bisect'``, whose fixed passes copy no loop predicate to the host, until a measured entry
#: (e.g. ``'gpu'``, ``'tpu'``) is set here.
AUTO_RULES: dict[str, tuple[int, str]] = {"cpu": (32768, "search"), "default": (0, "bisect")}

_ROW = 15          # entries per fused row sum (4-bit lanes hold <= 15)
_GROUP = 17        # row sums per second-stage group (8-bit lanes hold <= 15 * 17 = 255)
_NT = 8            # thresholds per pass
_SAMPLE = 4096     # sample size for the first 'search' pass (at most; n // 128 ...)
_SAMPLE_MIN = 512  # ... but at least this many entries


# ----------------------------------------------------------------------------------------------
# One counting pass: F(t_j) = #{x >= t_j} for 8 thresholds (and the same counts per row of 15)


def _prep_fn(fdt: jnp.dtype, absolute: bool):
    """The values compared: ``x`` (or ``|x|``) converted to the working float dtype. Applied
    inside every pass so that XLA fuses it into the pass instead of materialising a copy."""
    def prep(v):
        v = v.astype(fdt)
        return jnp.abs(v) if absolute else v
    return prep


def _identity(v):
    return v


def _nrows(n: int) -> int:
    """Rows of 15 entries that a pass counts per row: whole groups of 17 rows (255 entries);
    the last ``n - 15 * nrows < 255`` entries (the *tail*) are counted without row counts."""
    return (n // (_ROW * _GROUP)) * _GROUP


def _count_pass(xf: jax.Array, ts: jax.Array, prep=_identity) -> tuple[jax.Array, jax.Array]:
    """Exact counts of one pass over flat ``xf`` [n] for 8 thresholds ``ts``.

    Returns ``(total, rows)``: ``total[j] = #(prep(xf) >= ts[j])`` (int32 [8], ``ts`` sorted
    ascending first) and ``rows`` (uint32 [:func:`_nrows` (n)]) whose 4-bit lane j holds the
    same count over the entries ``15 r .. 15 r + 14`` (the tail entries are only in ``total``).
    Packs the 8 indicators in 4-bit lanes of a uint32, sums rows of 15 entries inside one fused
    loop, then regroups lanes per group of 17 rows (see module docstring). ``n < 2**31``.
    """
    n = xf.shape[0]
    nrows = _nrows(n)
    # Materialise the 8 (ascending) thresholds: otherwise XLA fuses their scalar arithmetic into
    # the loop over n and recomputes it for every entry (several times slower). A sort is never
    # fused (lax.optimization_barrier is dropped by the compiler); on sorted input it is a no-op.
    ts = jnp.sort(ts)
    total = jnp.zeros((_NT,), jnp.int32)
    s1 = jnp.zeros((0,), jnp.uint32)
    if nrows:
        x2 = prep(xf[: nrows * _ROW].reshape(nrows, _ROW))
        packed = jnp.zeros(x2.shape, jnp.uint32)
        for j in range(_NT):
            packed = packed | ((x2 >= ts[j]).astype(jnp.uint32) << (4 * j))
        s1 = jnp.sum(packed, axis=1, dtype=jnp.uint32)                   # [rows], 4-bit lanes
        s2 = s1.reshape(-1, _GROUP)
        even = jnp.sum(s2 & jnp.uint32(0x0F0F0F0F), axis=1, dtype=jnp.uint32)   # t0,t2,t4,t6
        odd = jnp.sum((s2 >> 4) & jnp.uint32(0x0F0F0F0F), axis=1, dtype=jnp.uint32)
        lanes = jnp.stack([(w >> (8 * i)) & jnp.uint32(255)
                           for i in range(4) for w in (even, odd)])           # [8, groups]
        total = jnp.sum(lanes.astype(jnp.int32), axis=1, dtype=jnp.int32)
    if nrows * _ROW < n:
        tail = prep(xf[nrows * _ROW:])
        total = total + jnp.sum((tail[:, None] >= ts[None, :]).astype(jnp.int32), axis=0,
                                dtype=jnp.int32)
    return total, s1


def _counts(xf: jax.Array, ts: jax.Array, prep=_identity) -> jax.Array:
    """Exact ``[#(prep(xf) >= ts[j]) for j in range(8)]`` (int32) for flat ``xf`` [n], ``ts`` [8]
    (see :func:`_count_pass`)."""
    return _count_pass(xf, ts, prep)[0]


def _lane(s1: jax.Array, j: jax.Array) -> jax.Array:
    """Per-row count of threshold ``j`` (traced int) from the packed row sums of a pass."""
    return (s1 >> (jnp.uint32(4) * j.astype(jnp.uint32))) & jnp.uint32(15)


def _thresholds(lo: jax.Array, hi: jax.Array, pos: jax.Array, kdt) -> jax.Array:
    """Keys ``lo + clip(floor(L * pos), 1, L - 1)`` (monotone in ``pos``), ``L = hi - lo``."""
    span = hi - lo
    cdt = jnp.float64 if kdt == jnp.uint64 else jnp.float32
    bits = jnp.iinfo(kdt).bits
    big = float(2 ** bits - 2 ** (bits - 24))   # exactly representable, < 2**bits
    off = jnp.clip(jnp.floor(span.astype(cdt) * pos.astype(cdt)), 1.0, big).astype(kdt)
    off = jnp.clip(off, jnp.array(1, kdt), span - jnp.array(1, kdt))
    return lo + off


def _update(lo, hi, f_lo, f_hi, keys, cnts, k):
    """Shrink the bracket with the counts of one pass (keys ascending, counts non-increasing).

    Returns the new ``(lo, hi, f_lo, f_hi)`` and the indices into ``keys`` of the new bounds
    (-1 where a bound was kept)."""
    ge = cnts >= k
    # Largest key with F >= k (keys ascending) and smallest key with F < k.
    nge = jnp.sum(ge.astype(jnp.int32), dtype=jnp.int32)
    last = jnp.maximum(nge - 1, 0)
    new_lo = jnp.where(nge > 0, keys[last], lo)
    new_flo = jnp.where(nge > 0, cnts[last], f_lo)
    first = jnp.minimum(nge, _NT - 1)
    new_hi = jnp.where(nge < _NT, keys[first], hi)
    new_fhi = jnp.where(nge < _NT, cnts[first], f_hi)
    return (new_lo, new_hi, new_flo, new_fhi,
            jnp.where(nge > 0, last, -1), jnp.where(nge < _NT, first, -1))


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


def _pass(xf, k, bracket, keys, prep, sp):
    """One counting pass at the ascending ``keys``: the new bracket ``(lo, hi, F(lo), F(hi))``
    and the pass record ``(rows, i_lo, i_hi)`` for :func:`_apply_record`."""
    lo, hi, f_lo, f_hi = bracket
    cnts, s1 = _count_pass(xf, from_key(keys, sp), prep)
    lo, hi, f_lo, f_hi, i_lo, i_hi = _update(lo, hi, f_lo, f_hi, keys, cnts, k)
    return (lo, hi, f_lo, f_hi), (s1, i_lo, i_hi)


def _positioned_pass(xf, k, bracket, positions, prep, sp):
    """:func:`_pass` at the keys ``positions`` places inside ``bracket``."""
    keys = _thresholds(bracket[0], bracket[1], positions(*bracket, k), bracket[0].dtype)
    return _pass(xf, k, bracket, keys, prep, sp)


def _apply_record(rc_lo, rc_hi, record):
    """Per-row counts of the bracket bounds after a pass: a bound the pass moved (index >= 0)
    takes that threshold's lane of the pass's row sums; a kept bound keeps its counts."""
    s1, i_lo, i_hi = record
    return (jnp.where(i_lo >= 0, _lane(s1, jnp.maximum(i_lo, 0)), rc_lo),
            jnp.where(i_hi >= 0, _lane(s1, jnp.maximum(i_hi, 0)), rc_hi))


def _pass_step(xf, k, state, positions, prep, sp):
    """One loop pass: ``state = (lo, hi, F(lo), F(hi), rc_lo, rc_hi)`` -> the next state."""
    bracket, rec = _positioned_pass(xf, k, tuple(state[:4]), positions, prep, sp)
    return (*bracket, *_apply_record(*state[4:], rec))


def _open(state, k, cap: int) -> jax.Array:
    """Whether the bracket still needs passes: not pinned, F(lo) != k, > cap entries inside."""
    lo, hi, f_lo, f_hi = state[:4]
    return (hi - lo > jnp.array(1, lo.dtype)) & (f_lo != k) & (f_lo - f_hi > cap)


def _bracket_loop(xf, k, state, positions, prep, cap: int, sp):
    """Counting passes over ``xf`` shrinking the bracket ``F(lo) >= k > F(hi)`` of ``state`` =
    ``(lo, hi, F(lo), F(hi), rc_lo, rc_hi)`` until ``lo`` is pinned (``hi = lo + 1``),
    ``F(lo) = k``, or at most ``cap`` entries lie in ``[lo, hi)``. ``k`` may be traced."""
    return lax.while_loop(lambda s: _open(s, k, cap),
                          lambda s: _pass_step(xf, k, s, positions, prep, sp), tuple(state))


def _bounds_rows(records, nrows: int) -> tuple[jax.Array, jax.Array]:
    """Per-row counts ``(rc_lo, rc_hi)`` (uint32 [nrows]) of the entries ``>= lo`` and ``>= hi``
    of the bracket after the passes ``records`` = ``[(rows, i_lo, i_hi), ...]`` (in order; a pass
    whose ``i_lo`` / ``i_hi`` is -1 kept that bound). Elementwise, so XLA fuses it into its
    consumer instead of writing per-pass copies."""
    rc = (jnp.full((nrows,), _ROW, jnp.uint32),     # lo = key(-inf): every entry
          jnp.zeros((nrows,), jnp.uint32))           # hi = key(+inf) + 1: none
    for rec in records:
        rc = _apply_record(*rc, rec)
    return rc


def _nonzero_rows(nz: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """The first ``size`` indices where ``nz`` (bool [m]) is True, and which of them are real."""
    idx = jnp.nonzero(nz, size=size, fill_value=0)[0].astype(jnp.int32)
    return idx, jnp.arange(size, dtype=jnp.int32) < jnp.sum(nz.astype(jnp.int32))


def _candidates(xf, lo, hi, rc, prep, sp,
                cap: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The entries of ``prep(xf)`` in ``[float(lo), float(hi))``, at most ``cap`` of them, given
    ``rc`` = their count per row of 15 (:func:`_nrows` rows): ``(values, inside, index)``, flat
    arrays of ``min(cap, rows) * 15`` gathered row entries plus the tail, ``values = -inf`` where
    not ``inside`` the bracket, ``index`` their flat index in ``xf``. The entries ``inside`` are
    in increasing flat order (rows ascending, then the tail).

    At most ``cap`` rows have a nonzero count, so a ``nonzero`` over the row counts finds them.
    Above ``_ROW_BLOCKS_MAX`` rows that ``nonzero`` would cost too much, so it runs in two levels:
    first over the counts of the groups of 17 rows (<= ``cap`` groups hold entries), then over
    the rows of those groups. Only those rows of ``xf`` are read: far less than a pass.
    """
    n = xf.shape[0]
    nrows = _nrows(n)
    vals, ok, pos = [], [], []
    if nrows:
        rc = rc.astype(jnp.int32)
        if nrows <= _ROW_BLOCKS_MAX:
            rows, valid = _nonzero_rows(rc > 0, min(cap, nrows))
        else:
            groups = nrows // _GROUP
            gc = jnp.sum(rc.reshape(groups, _GROUP), axis=1, dtype=jnp.int32)
            blk, valid_blk = _nonzero_rows(gc > 0, min(cap, groups))
            ridx = (blk[:, None] * _GROUP + jnp.arange(_GROUP, dtype=jnp.int32)[None, :])
            nz = valid_blk[:, None] & (rc[ridx] > 0)                        # [blocks, 17]
            sel, valid = _nonzero_rows(nz.reshape(-1), min(cap, nz.size))
            rows = ridx.reshape(-1)[sel]
        x2 = xf[: nrows * _ROW].reshape(nrows, _ROW)
        v = prep(x2[rows])                                                  # [<= cap, 15]
        vals.append(v.reshape(-1))
        ok.append(jnp.broadcast_to(valid[:, None], v.shape).reshape(-1))
        pos.append((rows[:, None] * _ROW + jnp.arange(_ROW, dtype=jnp.int32)[None, :]).reshape(-1))
    if nrows * _ROW < n:
        tail = prep(xf[nrows * _ROW:])
        vals.append(tail)
        ok.append(jnp.ones(tail.shape, bool))
        pos.append(jnp.arange(nrows * _ROW, n, dtype=jnp.int32))
    vals = jnp.concatenate(vals)
    ok = jnp.concatenate(ok)
    pos = jnp.concatenate(pos)
    flo, fhi = from_key(lo, sp), from_key(hi, sp)
    # hi may be key(+inf) + 1, whose float is a NaN: then ~(v >= fhi) is True for every v.
    inside = ok & (vals >= flo) & ~(vals >= fhi)
    return jnp.where(inside, vals, jnp.array(-jnp.inf, sp.fdt)), inside, pos


_CAP = 128         # the search stops its passes over x once <= _CAP entries are in the bracket
_ROW_BLOCKS_MAX = 4096   # above this many rows, candidates are found by groups of 17 rows first


def _search_key(xf: jax.Array, k: int, first_pass: bool, positions,
                prep=_identity) -> tuple[jax.Array, ...]:
    """Exact selection of the top k of ``prep(xf)`` (flat) by counting: ``(t, cut)``.

    ``t`` is the key of a value such that the top k are ``x > t`` plus the first
    ``k - #(x > t)`` entries equal to ``t``, i.e. those with flat index ``<= cut``; when
    ``F(t) = #(x >= t) == k`` no tie-break is needed and ``cut = n``.
    Passes over ``xf`` run until the bracket holds at most ``_CAP`` entries; those are gathered
    (:func:`_candidates`), the k-th largest is read off ``lax.top_k`` of them and ``cut`` off
    their flat indices. When the passes pin ``t`` itself (``hi = lo + 1``: the bracket holds
    only entries equal to ``t``, possibly many) the cut comes from the passes' row counts
    (:func:`_pinned_cut`).
    """
    sp = key_space(xf.dtype)
    kdt = sp.kdt
    n = xf.shape[0]
    nrows = _nrows(n)
    bracket = (to_key(jnp.array(-jnp.inf, sp.fdt), sp),
               to_key(jnp.array(jnp.inf, sp.fdt), sp) + jnp.array(1, kdt),
               jnp.array(n, jnp.int32), jnp.array(0, jnp.int32))
    records = []
    if n > _CAP:
        if first_pass:
            s = min(n, max(_SAMPLE_MIN, min(_SAMPLE, n // 128)))
            stride = n // s
            q = 1.0 - k / n
            sd = math.sqrt(s * q * (1.0 - q)) + 1.0
            idx = tuple(min(max(int(round(q * s + d * sd)), 0), s - 1)
                        for d in (-4.0, -2.0, -1.0, -1 / 3, 1 / 3, 1.0, 2.0, 4.0))
            # order statistics idx (ascending) of the sample = positions s-1-idx of its top
            # s - min(idx) values (lax.top_k: ~3x cheaper than sorting the sample on XLA:CPU)
            top = lax.top_k(prep(xf[:: stride][:s]), s - idx[0])[0]      # descending
            keys = to_key(top[jnp.array([s - 1 - i for i in idx])], sp)
            bracket, rec = _pass(xf, k, bracket, keys, prep, sp)
            records.append(rec)
        # One more pass unconditionally, outside any loop: XLA hoists loop-invariant work such as
        # |x| out of a while loop and materialises it, so the common case (two passes, then the
        # candidates) runs without a loop; the loop (inside a cond) only handles the rest.
        bracket, rec = _positioned_pass(xf, k, bracket, positions, prep, sp)
        records.append(rec)

    def in_bracket(_):
        # per-row counts of [lo, hi) from the passes' row counts (one fused loop over the rows)
        rc_lo, rc_hi = _bounds_rows(records, nrows)
        return (*bracket, (rc_lo - rc_hi).astype(jnp.int32))

    def more(_):
        # rare: more than _CAP entries still in the bracket; the loop keeps the row counts
        rc_lo, rc_hi = _bounds_rows(records, nrows)
        lo, hi, f_lo, f_hi, rc_lo, rc_hi = _bracket_loop(
            xf, k, (*bracket, rc_lo, rc_hi), positions, prep, _CAP, sp)
        return lo, hi, f_lo, f_hi, (rc_lo - rc_hi).astype(jnp.int32)

    lo, hi, f_lo, f_hi, rc = lax.cond(_open(bracket, k, _CAP), more, in_bracket, None)

    def finish():
        # <= _CAP entries in [lo, hi): the (k - F(hi))-th largest of them is the k-th of x.
        c, inside, index = _candidates(xf, lo, hi, rc, prep, sp, _CAP)
        kk = k - f_hi                                     # in [1, F(lo) - F(hi)]
        top = lax.top_k(c, min(_CAP, c.shape[0]))[0]     # descending, -inf padded
        t = lax.dynamic_index_in_dim(top, kk - 1, keepdims=False)
        # Every entry equal to t is a candidate (t is inside the bracket), listed in flat order:
        # the tie cut is the index of the need-th of them, need = k - #(x > t) (n when all of
        # them are selected).
        need = k - f_hi - jnp.sum((inside & (c > t)).astype(jnp.int32), dtype=jnp.int32)
        ties = jnp.cumsum((inside & (c == t)).astype(jnp.int32), dtype=jnp.int32)
        j = jnp.minimum(jnp.sum((ties < need).astype(jnp.int32), dtype=jnp.int32),
                        index.shape[0] - 1)
        cut = jnp.where(ties[-1] == need, jnp.int32(n),
                        lax.dynamic_index_in_dim(index, j, keepdims=False))
        return to_key(t, sp), cut

    def pinned():
        # t = lo, and the entries equal to it are exactly those in [lo, hi): their per-row counts
        # rc locate the (k - F(hi))-th of them (the cut is n when F(lo) = k: nothing to break)
        cut = lax.cond(f_lo == k, lambda: jnp.int32(n),
                       lambda: _pinned_cut(xf, rc, from_key(lo, sp), k - f_hi, prep))
        return lo, cut

    done = (f_lo == k) | (hi - lo <= jnp.array(1, kdt))
    return lax.cond(done, pinned, finish)


def _pinned_cut(xf: jax.Array, rc: jax.Array, t: jax.Array, need: jax.Array,
                prep=_identity, width: int = _ROW) -> jax.Array:
    """Flat index of the ``need``-th entry (1-based, in flat order) of ``prep(xf)`` equal to
    ``t``, given ``rc`` = the number of such entries per row of ``width`` entries (``rc.shape[0]``
    rows; the tail after them is counted here). A cumulative sum over the row counts finds the
    row, one more over its ``width`` entries the position: no pass over ``xf``."""
    n = xf.shape[0]
    nrows = rc.shape[0]
    in_rows, rows_total = jnp.int32(0), jnp.int32(0)
    if nrows:
        cum = jnp.cumsum(rc, dtype=jnp.int32)
        rows_total = cum[-1]
        r = jnp.minimum(jnp.sum((cum < need).astype(jnp.int32), dtype=jnp.int32), nrows - 1)
        before = cum[r] - rc[r]
        row = prep(lax.dynamic_slice_in_dim(xf, r * width, width))
        rcum = jnp.cumsum((row == t).astype(jnp.int32), dtype=jnp.int32)
        in_rows = r * width + jnp.sum((rcum < need - before).astype(jnp.int32), dtype=jnp.int32)
    if nrows * width == n:
        return in_rows
    tail = prep(xf[nrows * width:])
    tcum = jnp.cumsum((tail == t).astype(jnp.int32), dtype=jnp.int32)
    in_tail = nrows * width + jnp.sum((tcum < need - rows_total).astype(jnp.int32),
                                      dtype=jnp.int32)
    return jnp.where(need <= rows_total, in_rows, in_tail)


# ----------------------------------------------------------------------------------------------
# 'bisect': a fixed number of counting passes, no control flow


_BISECT_T = 15     # thresholds per 'bisect' pass: the key bracket shrinks (_BISECT_T + 1)x


def _key_int(v: float, sp: KeySpace) -> int:
    """:func:`_to_key` of a Python float, as a Python int (trace-time constant)."""
    bits = int(np.array(v, dtype=sp.vdt).view(np.dtype(f"uint{8 * sp.vdt.itemsize}")))
    top = 1 << (8 * sp.kdt.itemsize - 1)
    return (~bits & (2 * top - 1)) if bits & top else bits | top


def _bisect_bracket(sp: KeySpace) -> tuple[int, int]:
    """The initial key bracket ``[key(-inf), key(+inf) + 1)`` of every 'bisect' search."""
    return _key_int(-np.inf, sp), _key_int(np.inf, sp) + 1


def bisect_passes(dtype) -> int:
    """Counting passes of the 'bisect' path for input ``dtype``: the smallest ``p`` with
    ``(T + 1)^p >= hi - lo`` for the initial bracket (``T = 15``: 4 for float16/bfloat16, 8
    for float32, 16 for float64)."""
    lo, hi = _bisect_bracket(key_space(dtype))
    width, p = hi - lo, 0
    while width > 1:
        width = -(-width // (_BISECT_T + 1))
        p += 1
    return p


def _bisect_pass(v: jax.Array, lo: jax.Array, hi: jax.Array, k: int,
                 sp: KeySpace) -> tuple[jax.Array, jax.Array]:
    """One 'bisect' pass over ``v`` [n] shrinking the bracket ``F(lo) >= k > F(hi)``: ``F`` at
    the ``T`` keys ``min(lo + j s, hi)``, ``j = 1..T``, ``s = ceil((hi - lo) / (T + 1))``, by
    one compare of ``v`` against the ``T`` thresholds and a sum over ``n`` (one reduction
    fusion); the new bracket is ``[lo + j* s, min(lo + (j* + 1) s, hi))`` with ``j*`` the
    number of keys with ``F >= k`` (a prefix: ``F`` is non-increasing), width <= ``s``."""
    kdt = sp.kdt
    span = hi - lo
    nt = jnp.array(_BISECT_T + 1, kdt)
    step = span // nt + (span % nt != 0).astype(kdt)              # ceil, no overflow
    keys = jnp.minimum(lo + jnp.arange(1, _BISECT_T + 1, dtype=kdt) * step, hi)
    cnt = jnp.sum(v[:, None] >= from_key(keys, sp)[None, :], axis=0, dtype=jnp.int32)
    nge = jnp.sum((cnt >= k).astype(kdt), dtype=kdt)
    new_lo = lo + nge * step          # < hi when nge > 0: that key has F >= k > F(hi)
    return new_lo, jnp.minimum(new_lo + step, hi)


def _tie_width(n: int) -> int:
    """Row width of the tie cut's per-row counts: a power of two near sqrt(n) (>= 16), so the
    cumulative sums over the row counts and over one row are both short."""
    return max(16, 1 << max(0, math.ceil(math.log2(math.sqrt(max(n, 1))))))


def _bisect_key(xf: jax.Array, k: int, prep=_identity) -> tuple[jax.Array, jax.Array]:
    """Exact selection of the top k of ``prep(xf)`` (flat) as ``(t_key, cut)`` (the format of
    :func:`_search_key`) in a fixed sequence of operations: :func:`bisect_passes` counting
    passes pin ``t = lo`` (``hi = lo + 1``), then one pass counts ``#(v > t)``, ``#(v == t)``
    and the entries equal to ``t`` per row of :func:`_tie_width` entries, and
    :func:`_pinned_cut` reads the cut of the ``(k - #(v > t))``-th such entry off the row
    counts (``cut = n`` when ``#(v >= t) = k``). No loop, no conditional."""
    sp = key_space(xf.dtype)
    kdt = sp.kdt
    n = xf.shape[0]
    v = prep(xf)
    lo, hi = (jnp.array(b, kdt) for b in _bisect_bracket(sp))
    for _ in range(bisect_passes(xf.dtype)):
        lo, hi = _bisect_pass(v, lo, hi, k, sp)
    t = from_key(lo, sp)
    gt = jnp.sum((v > t).astype(jnp.int32), dtype=jnp.int32)
    eq = jnp.sum((v == t).astype(jnp.int32), dtype=jnp.int32)
    width = _tie_width(n)
    nrows = n // width
    rc = jnp.sum((v[: nrows * width].reshape(nrows, width) == t).astype(jnp.int32), axis=1,
                 dtype=jnp.int32)
    cut = _pinned_cut(xf, rc, t, k - gt, prep, width)
    return lo, jnp.where(gt + eq == k, jnp.int32(n), cut)


def top_k_threshold(x: jax.Array, k: int, *, method: str = "search",
                    absolute: bool = False) -> tuple[jax.Array, jax.Array]:
    """Exact top-k as a threshold: ``(t, cut)`` with
    ``mask = (v > t) | ((v == t) & (index <= cut))``, ``v = x`` (or ``|x|`` if ``absolute``)
    flattened in the working dtype (float32, float64 for float64 input) and ``index`` the flat
    index; ``cut = n`` when ``#(v >= t) = k``. ``method``: one of :data:`THRESHOLD_METHODS`
    ('search', 'radix', 'bisect' or 'segmented'; see the module docstring); ``k`` static in
    ``[1, n]``.
    :func:`threshold_mask` evaluates the mask (fusable into its consumers).
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {THRESHOLD_METHODS}, got {method!r}")
    if method == "segmented":
        return segtopk.top_k_thresholds([x], [k], absolute=absolute)[0]
    sp = key_space(x.dtype)
    xf = x.reshape(-1)
    prep = _prep_fn(sp.fdt, absolute)
    if method == "bisect":
        t_key, cut = _bisect_key(xf, k, prep)
    else:
        adaptive = method == "search"
        positions = _interp_positions if adaptive else _even_positions
        t_key, cut = _search_key(xf, k, first_pass=adaptive, positions=positions, prep=prep)
    return from_key(t_key, sp), cut


def threshold_mask(x: jax.Array, t: jax.Array, cut: jax.Array, *,
                   absolute: bool = False) -> jax.Array:
    """The mask of :func:`top_k_threshold`'s ``(t, cut)`` for ``x`` (bool, shape of ``x``)."""
    v = _prep_fn(key_space(x.dtype).fdt, absolute)(x.reshape(-1))
    idx = lax.broadcasted_iota(jnp.int32, v.shape, 0)
    return ((v > t) | ((v == t) & (idx <= cut))).reshape(x.shape)


def _top_k_mask_count(x: jax.Array, k: int, method: str, absolute: bool = False) -> jax.Array:
    t, cut = top_k_threshold(x, k, method=method, absolute=absolute)
    return threshold_mask(x, t, cut, absolute=absolute)


def _top_k_mask_sort(x: jax.Array, k: int) -> jax.Array:
    flat = x.reshape(-1)
    flat = jnp.where(flat == 0, jnp.zeros_like(flat), flat)    # -0.0 ties with +0.0
    _, idx = lax.top_k(flat, k)
    return jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(x.shape)


def backend_name(backend: str | None = None) -> str:
    """``backend`` (None: ``jax.default_backend()``) lower-cased, 'cuda' and 'rocm' as 'gpu':
    the key of the per-backend tables (:data:`AUTO_RULES`, ``sfw_jax.fw._sfw.BATCH_SELECT``)."""
    backend = jax.default_backend() if backend is None else str(backend).lower()
    return "gpu" if backend in ("cuda", "rocm") else backend


def resolve_method(n: int, method: str = "auto", backend: str | None = None) -> str:
    """The concrete method ``top_k_mask`` uses for ``n`` entries on ``backend``.

    ``'auto'`` follows :data:`AUTO_RULES`: ``'sort'`` below the backend's ``sort_below``
    entries, else its method (CPU: ``'sort'`` below 32768 entries, ``'search'`` above; every
    other backend: ``'bisect'``). ``backend``: a JAX platform name ('cpu', 'gpu', 'cuda',
    'rocm', 'tpu', ...; 'default' for the rule of the backends not listed), None for
    ``jax.default_backend()``. Other methods are returned as given.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    sort_below, large = AUTO_RULES.get(backend_name(backend), AUTO_RULES["default"])
    return "sort" if n < sort_below else large


def top_k_mask(x: jax.Array, k: int, *, method: str = "auto",
               absolute: bool = False) -> jax.Array:
    """Bool mask of the ``k`` largest entries of ``x`` (exactly ``k`` True; ties: lower index).

    With ``absolute=True`` the ``k`` largest ``|x|`` (as ``top_k_mask(jnp.abs(x), k)``, but the
    counting paths take ``|x|`` inside each pass instead of materialising it).

    Args:
      x: float array (float16, bfloat16, float32, float64), any shape, no NaN; n = x.size.
      k: static Python int, ``1 <= k <= n``.
      method: ``'auto'`` (:func:`resolve_method`), ``'sort'`` (``lax.top_k``), ``'radix'``
        (even counting search, <= 11 passes), ``'search'`` (sample-guided counting search),
        ``'bisect'`` (fixed passes, no control flow) or ``'segmented'`` (the same, on the
        engine of :mod:`sfw_jax.fw.segtopk`). All give identical masks.
      absolute: rank by ``|x|`` instead of ``x``.

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
        return _top_k_mask_sort(jnp.abs(x) if absolute else x, k)
    return _top_k_mask_count(x, k, method, absolute=absolute)
