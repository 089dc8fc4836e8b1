"""Segmented exact top-k: the k-th largest key of every segment of one flat view, in a fixed
sequence of operations.

The selection engine of the library: the SFW update's K-sparse LMOs (one segment per leaf, all
leaves in one call), the pruning masks (one segment holding every eligible leaf for a global
ranking, one per leaf for a layerwise one) and ``top_k_mask(..., method='segmented')`` (one
segment) all run it.

Keys
----
The engine ranks unsigned integer *keys* (uint16, uint32 or uint64) in ``[1, key_top - 1]`` with
``key_top = 2**bits - 16`` (:func:`key_top`): key 0 marks padding and the 16 largest values are
kept free so that the search's threshold arithmetic cannot overflow. Floats are keyed by the
order-preserving map of :func:`to_key` (``key = bits | signbit`` for ``x >= 0``, ``~bits`` for
``x < 0``, ``bits`` the IEEE pattern of the input dtype: 16-bit keys for float16/bfloat16, 32 for
float32, 64 for float64), after ``x == 0`` entries are replaced by ``+0.0`` (:func:`float_keys`),
so keys compare as the backend compares floats: ``-0.0`` ties with ``+0.0`` and, where the
backend flushes denormals (XLA:CPU), subnormals tie with 0. Only NaN patterns fall outside
``[1, key_top - 1]``; they are clipped into it (NaN is not supported by the top-k paths).
Integer ranks (pruning: magnitude bits, random bits) map into the range directly
(:func:`descending_keys` turns a bottom-k into a top-k).

Layout
------
The keys of all arrays are laid out as one ``[blocks, B, W]`` array (:class:`Layout`; rows of
``W = 32`` entries, blocks of ``B = 32`` rows): each segment is the concatenation of its arrays
(in order), padded with key 0 to whole blocks, so every block belongs to one segment and
``block_segment`` (static) names it.

Search
------
Per segment ``s`` with ``F_s(t) = #{i in s : key_i >= t}`` (non-increasing) the k-th largest key
is ``t*_s = max{t : F_s(t) >= k_s}``. Every segment keeps a bracket ``lo_s <= t*_s < hi_s`` with
``F_s(lo_s) >= k_s > F_s(hi_s)``, from ``[1, key_top)`` (padding never counts: every threshold
is >= 2). One *pass* evaluates, for every segment at once, ``F_s`` at the ``T = 15`` keys
``min(lo_s + j step_s, hi_s)`` (``j = 1..15``, ``step_s = ceil((hi_s - lo_s) / 16)``): one
compare of every key against its segment's 15 thresholds, summed over each row (a reduction
over a minor axis of 32, which XLA:CPU fuses with the compare; wider rows it does not) and over
the rows of each block (``[blocks, 15]``), then over the blocks of each segment
(``jax.ops.segment_sum``, blocks sorted) to ``[S, 15]``. The new bracket is
``[lo + j* step, min(lo + (j* + 1) step, hi))``, ``j*`` = how many thresholds have ``F >= k``.
The bracket shrinks 16x per pass: :func:`passes` (4 for 16-bit keys, 8 for 32-bit, 16 for
64-bit) pin ``t*_s = lo_s`` for every segment. No loop, no conditional: the same operations
whatever the data (a GPU copies no predicate to the host).

Ties
----
The top ``k_s`` of a segment are the entries with ``key > t_s`` plus the first
``need_s = k_s - #(key > t_s)`` entries equal to ``t_s`` in flat order (lower position first).
One more pass counts ``#(key > t)`` and ``#(key == t)`` per block; a cumulative sum of the tie
counts over the blocks (offset per segment) finds the block of the ``need_s``-th tie, and one
over that block's ``B W`` entries (gathered, ``[S, B W]``) its position: ``cut_s``, a position
within the segment, so the selection is ``(key > t) | ((key == t) & (position <= cut))``.
``cut_s = n_s`` (the segment's size) when ``#(key >= t_s) = k_s``: nothing to break. A segment
with ``k_s = 0`` selects nothing: ``t_s = key_top``, ``cut_s = n_s``. ``ks`` may be traced (a
new k does not recompile).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "KeySpace", "key_space", "to_key", "from_key", "key_top", "float_keys", "descending_keys",
    "passes", "Layout", "make_layout", "select", "selected", "top_k_thresholds", "host_select",
    "blocks", "positions", "per_block", "block_selected", "segment_totals",
]


_T = 15            # thresholds per pass: the bracket shrinks (_T + 1)x per pass
_RESERVED = 16     # keys >= 2**bits - 16 are never used (threshold arithmetic stays < 2**bits)


# ----------------------------------------------------------------------------------------------
# Keys


class KeySpace(NamedTuple):
    """Where one input dtype is keyed: values compared as ``fdt`` (float32, or float64 for
    float64 input) and keyed by the bits of their ``vdt`` value (the input dtype; float32 for
    other floats) as ``kdt`` (the unsigned int of that width)."""

    fdt: jnp.dtype
    kdt: jnp.dtype
    vdt: jnp.dtype


def key_space(dtype) -> KeySpace:
    """The :class:`KeySpace` of a float dtype."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return KeySpace(dtype, jnp.dtype(jnp.uint64), dtype)
    if dtype.itemsize == 2:                                  # float16, bfloat16
        return KeySpace(jnp.dtype(jnp.float32), jnp.dtype(jnp.uint16), dtype)
    return KeySpace(jnp.dtype(jnp.float32), jnp.dtype(jnp.uint32), jnp.dtype(jnp.float32))


def to_key(v: jax.Array, sp: KeySpace) -> jax.Array:
    """Order-preserving map float -> unsigned int: ``v < w  <=>  key(v) < key(w)`` (no NaN;
    ``-0.0`` below ``+0.0``). ``v`` must be exactly representable in ``sp.vdt``."""
    kdt = sp.kdt
    bits = jax.lax.bitcast_convert_type(v.astype(sp.vdt), kdt)
    top = jnp.array(1, kdt) << (jnp.iinfo(kdt).bits - 1)
    return jnp.where((bits & top) != 0, ~bits, bits | top)


def from_key(key: jax.Array, sp: KeySpace) -> jax.Array:
    """Inverse of :func:`to_key`, as a ``sp.fdt`` value."""
    kdt = sp.kdt
    top = jnp.array(1, kdt) << (jnp.iinfo(kdt).bits - 1)
    bits = jnp.where((key & top) != 0, key ^ top, ~key)
    return jax.lax.bitcast_convert_type(bits, sp.vdt).astype(sp.fdt)


def key_top(kdt) -> int:
    """The exclusive top of the key range of ``kdt``: keys lie in ``[1, key_top - 1]``."""
    return 2 ** jnp.iinfo(kdt).bits - _RESERVED


def float_keys(x: jax.Array, absolute: bool = False) -> jax.Array:
    """Flat keys of ``x`` (or ``|x|``) ordered as the backend compares them in ``fdt``: zeros
    (both signs; subnormals where the backend flushes them) keyed as ``+0.0``; NaN clipped into
    the key range. Shape ``[x.size]``, dtype ``key_space(x.dtype).kdt``."""
    sp = key_space(x.dtype)
    v = x.reshape(-1).astype(sp.fdt)
    v = jnp.abs(v) if absolute else v
    key = to_key(jnp.where(v == 0, jnp.zeros((), sp.fdt), v), sp)
    return jnp.clip(key, jnp.array(1, sp.kdt), jnp.array(key_top(sp.kdt) - 1, sp.kdt))


def descending_keys(rank: jax.Array) -> jax.Array:
    """Keys whose top-k is the bottom-k of the non-negative integer ``rank`` (int32 or int64,
    flat): ``key = key_top - 1 - rank`` as uint32 / uint64."""
    kdt = jnp.uint64 if rank.dtype == jnp.int64 else jnp.uint32
    return jnp.array(key_top(kdt) - 1, kdt) - rank.astype(kdt)


def passes(kdt) -> int:
    """Counting passes that pin every segment's key: the smallest ``p`` with
    ``(T + 1)^p >= key_top - 1`` (4 for uint16, 8 for uint32, 16 for uint64)."""
    width, p = key_top(kdt) - 1, 0
    while width > 1:
        width = -(-width // (_T + 1))
        p += 1
    return p


# ----------------------------------------------------------------------------------------------
# Layout


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static layout of arrays of ``sizes`` grouped into segments: rows of ``width``
    entries, blocks of ``block`` rows.

    ``segment_of[i]``: the segment of array i (non-decreasing from 0: a segment is a run of
    consecutive arrays, ranked as their concatenation). Every segment is padded to whole blocks
    (at least one), so each block belongs to one segment.
    """

    sizes: tuple[int, ...]
    segment_of: tuple[int, ...]
    width: int = 32
    block: int = 32

    @property
    def n_segments(self) -> int:
        return self.segment_of[-1] + 1 if self.segment_of else 0

    @property
    def block_size(self) -> int:
        return self.width * self.block

    @property
    def segment_sizes(self) -> tuple[int, ...]:
        out = [0] * self.n_segments
        for n, s in zip(self.sizes, self.segment_of):
            out[s] += n
        return tuple(out)

    @property
    def segment_blocks(self) -> tuple[int, ...]:
        return tuple(max(1, -(-n // self.block_size)) for n in self.segment_sizes)

    @property
    def first_block(self) -> np.ndarray:
        """Index of each segment's first block, int32 [S]."""
        nb = np.asarray(self.segment_blocks, np.int32)
        return (np.cumsum(nb) - nb).astype(np.int32)

    @property
    def block_segment(self) -> np.ndarray:
        """Segment of every block, int32 [blocks] (sorted)."""
        return np.repeat(np.arange(self.n_segments, dtype=np.int32), self.segment_blocks)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Position of each array's first entry within its segment."""
        out, pos, prev = [], 0, -1
        for n, s in zip(self.sizes, self.segment_of):
            pos = 0 if s != prev else pos
            out.append(pos)
            pos, prev = pos + n, s
        return tuple(out)


def make_layout(sizes: Sequence[int], segment_of: Sequence[int] | None = None) -> Layout:
    """:class:`Layout` of arrays of ``sizes``; ``segment_of`` None: each array its own
    segment."""
    sizes = tuple(int(n) for n in sizes)
    segment_of = tuple(range(len(sizes))) if segment_of is None else tuple(map(int, segment_of))
    if len(segment_of) != len(sizes):
        raise ValueError(f"segment_of must have one entry per array ({len(sizes)}), "
                         f"got {len(segment_of)}")
    if segment_of and (segment_of[0] != 0 or any(b - a not in (0, 1) for a, b in
                                                  zip(segment_of, segment_of[1:]))):
        raise ValueError(f"segment_of must start at 0 and step by 0 or 1, got {segment_of}")
    return Layout(sizes, segment_of)


def blocks(arrays: Sequence[jax.Array], lay: Layout) -> jax.Array:
    """The ``[blocks, block, width]`` view of ``arrays`` (one dtype; one per array of ``lay``):
    each segment's arrays flattened and concatenated, padded with zeros (key 0) to whole
    blocks."""
    parts, filled = [], 0
    for i, (a, s) in enumerate(zip(arrays, lay.segment_of)):
        parts.append(a.reshape(-1))
        filled += a.size
        if i + 1 == len(arrays) or lay.segment_of[i + 1] != s:
            pad = lay.segment_blocks[s] * lay.block_size - filled
            if pad:
                parts.append(jnp.zeros((pad,), a.dtype))
            filled = 0
    flat = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    return flat.reshape(-1, lay.block, lay.width)


def positions(lay: Layout) -> jax.Array:
    """Position within its segment of every entry of the :func:`blocks` view, int32
    ``[blocks, block, width]`` (padding: ``>= n_s``)."""
    shape = (sum(lay.segment_blocks), lay.block, lay.width)
    flat = (jax.lax.broadcasted_iota(jnp.int32, shape, 1) * lay.width
            + jax.lax.broadcasted_iota(jnp.int32, shape, 2))
    start = np.arange(shape[0]) - lay.first_block[lay.block_segment]    # block within segment
    return flat + jnp.asarray(start * lay.block_size, jnp.int32)[:, None, None]


def per_block(v: jax.Array, lay: Layout) -> jax.Array:
    """``v[segment of each block]``, shaped ``[blocks, 1, 1]`` to broadcast over the
    :func:`blocks` view (``v``: [S])."""
    return v[jnp.asarray(lay.block_segment)][:, None, None]


def _segment_sum(x: jax.Array, lay: Layout) -> jax.Array:
    """Sum of per-block integers ``x`` [blocks, ...] over the blocks of each segment: [S, ...]."""
    return jax.ops.segment_sum(x, jnp.asarray(lay.block_segment), lay.n_segments,
                               indices_are_sorted=True)


def segment_totals(v: jax.Array, lay: Layout) -> jax.Array:
    """Per segment, the sum of the :func:`blocks` view ``v`` (floats; padding must be 0): [S].
    Summed over each row, then over the rows of each block, then over the blocks of each
    segment gathered into a zero-padded ``[S, most blocks of a segment]`` array: a fixed order,
    whatever the backend (a float scatter-add would sum in the order its atomics land)."""
    per = jnp.sum(jnp.sum(v, axis=2), axis=1)                                    # [blocks]
    nb = np.asarray(lay.segment_blocks)
    cols = np.arange(int(nb.max()))[None, :]
    idx = np.where(cols < nb[:, None], lay.first_block[:, None] + cols, per.shape[0])
    padded = jnp.concatenate([per, jnp.zeros((1,), per.dtype)])
    return jnp.sum(padded[jnp.asarray(idx, jnp.int32)], axis=1)


# ----------------------------------------------------------------------------------------------
# The search


def _pass(kb, bseg, lo, hi, ks, lay: Layout):
    """One counting pass for every segment (module docstring): the new ``(lo, hi)``. The
    compare is summed over each row's ``width`` entries (a reduction over a short minor axis,
    which XLA:CPU fuses with the compare), then over the rows of a block, then over the
    blocks of a segment."""
    kdt = kb.dtype
    span = hi - lo
    nt = jnp.array(_T + 1, kdt)
    step = span // nt + (span % nt != 0).astype(kdt)                 # ceil, no overflow
    j = jnp.arange(1, _T + 1, dtype=kdt)
    thr = jnp.minimum(lo[:, None] + j[None, :] * step[:, None], hi[:, None])       # [S, T]
    ge = kb[:, :, None, :] >= thr[bseg][:, None, :, None]              # [blocks, B, T, W]
    cnt_rows = jnp.sum(ge, axis=3, dtype=jnp.int32)
    cnt = _segment_sum(jnp.sum(cnt_rows, axis=1, dtype=jnp.int32), lay)              # [S, T]
    nge = jnp.sum((cnt >= ks[:, None]).astype(kdt), axis=1, dtype=kdt)
    new_lo = lo + nge * step
    return new_lo, jnp.minimum(new_lo + step, hi)


def _tie_cut(kb, bseg, t, ks, lay: Layout) -> jax.Array:
    """``cut_s``: the position within segment s of its ``need_s``-th entry equal to ``t_s``,
    ``n_s`` when every such entry is selected (module docstring)."""
    t_b = t[bseg][:, None, None]
    gt_b = jnp.sum(jnp.sum(kb > t_b, axis=2, dtype=jnp.int32), axis=1, dtype=jnp.int32)
    eq_b = jnp.sum(jnp.sum(kb == t_b, axis=2, dtype=jnp.int32), axis=1, dtype=jnp.int32)
    gt, eq = _segment_sum(gt_b, lay), _segment_sum(eq_b, lay)
    need = ks - gt
    first = jnp.asarray(lay.first_block)
    cum = jnp.cumsum(eq_b, dtype=jnp.int32)                        # inclusive, over all blocks
    earlier = cum - eq_b
    base = earlier[first]                                          # ties before each segment
    b_off = _segment_sum(((cum - base[bseg]) < need[bseg]).astype(jnp.int32), lay)
    b_off = jnp.minimum(b_off, jnp.asarray(lay.segment_blocks, jnp.int32) - 1)
    b = first + b_off                                              # block of the need-th tie
    before = earlier[b] - base                                     # ties in earlier blocks
    blk = kb[b].reshape(lay.n_segments, lay.block_size)
    rcum = jnp.cumsum(blk == t[:, None], axis=1, dtype=jnp.int32)
    p = jnp.sum(rcum < (need - before)[:, None], axis=1, dtype=jnp.int32)
    n = jnp.asarray(lay.segment_sizes, jnp.int32)
    return jnp.where(gt + eq == ks, n, b_off * lay.block_size + p)


def select(keys: Sequence[jax.Array] | jax.Array, ks: jax.Array, lay: Layout
           ) -> tuple[jax.Array, jax.Array]:
    """The top ``ks[s]`` keys of every segment of ``lay``: ``(t, cut)``, each [S].

    Args:
      keys: one flat key array per array of ``lay`` (one unsigned dtype, values in
        ``[1, key_top - 1]``: :func:`float_keys`, :func:`descending_keys`), or their
        :func:`blocks` view (padding: key 0).
      ks: int [S], ``0 <= ks[s] <= n_s`` (may be traced).
      lay: the :class:`Layout` of ``keys``.

    Returns ``t`` (the key dtype) and ``cut`` (int32): segment s selects the entries with
    ``key > t[s]`` and those with ``key == t[s]`` at positions ``<= cut[s]`` within it
    (:func:`selected`); exactly ``ks[s]`` of them, ties by lower position.
    """
    kb = keys if isinstance(keys, jax.Array) and keys.ndim == 3 else blocks(keys, lay)
    kdt = jnp.dtype(kb.dtype)
    bseg = jnp.asarray(lay.block_segment)
    ks = jnp.asarray(ks, jnp.int32)
    lo = jnp.full((lay.n_segments,), 1, kdt)
    hi = jnp.full((lay.n_segments,), key_top(kdt), kdt)
    for _ in range(passes(kdt)):
        lo, hi = _pass(kb, bseg, lo, hi, ks, lay)
    cut = _tie_cut(kb, bseg, lo, ks, lay)
    empty = ks == 0
    return (jnp.where(empty, jnp.array(key_top(kdt), kdt), lo),
            jnp.where(empty, jnp.asarray(lay.segment_sizes, jnp.int32), cut))


def selected(key: jax.Array, t: jax.Array, cut: jax.Array, offset: int = 0) -> jax.Array:
    """Which entries of one array's flat keys ``key`` a segment's ``(t, cut)`` selects; the
    array starts at position ``offset`` of its segment."""
    pos = jax.lax.broadcasted_iota(jnp.int32, key.shape, 0) + offset
    return (key > t) | ((key == t) & (pos <= cut))


def block_selected(kb: jax.Array, t: jax.Array, cut: jax.Array, lay: Layout) -> jax.Array:
    """:func:`selected` on the :func:`blocks` view ``kb`` of the keys, for the ``(t, cut)``
    [S] of :func:`select` (padding: never selected)."""
    tb = per_block(t, lay)
    return (kb > tb) | ((kb == tb) & (positions(lay) <= per_block(cut, lay)))


def top_k_thresholds(xs: Sequence[jax.Array], ks: Sequence[int], *, absolute: bool = False
                     ) -> list[tuple[jax.Array, jax.Array]]:
    """Exact top-k of every array of ``xs`` in one search: ``(t, cut)`` per array, the format
    of :func:`sfw_jax.fw.topk.top_k_threshold` (``t`` a float of the working dtype, ``cut`` a
    flat index; :func:`sfw_jax.fw.topk.threshold_mask` evaluates it).

    Arrays with keys of one width share one search (one per key width: 16-, 32-, 64-bit).
    ``ks[i]``: static int in ``[1, xs[i].size]``.
    """
    by_width: dict[jnp.dtype, list[int]] = {}
    for i, x in enumerate(xs):
        by_width.setdefault(key_space(x.dtype).kdt, []).append(i)
    out: list = [None] * len(xs)
    for idx in by_width.values():
        lay = make_layout([xs[i].size for i in idx])
        t, cut = select([float_keys(xs[i], absolute) for i in idx],
                        jnp.asarray([ks[i] for i in idx], jnp.int32), lay)
        # one conversion per input dtype of the group (float16 and bfloat16 share 16-bit keys)
        floats = {d: from_key(t, key_space(d)) for d in {jnp.dtype(xs[i].dtype) for i in idx}}
        for j, i in enumerate(idx):
            out[i] = (floats[jnp.dtype(xs[i].dtype)][j], cut[j])
    return out


def host_select(keys: Sequence[np.ndarray], segment_of: Sequence[int], ks: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`select` for many count vectors at once on the host: one stable sort per segment.

    ``keys``, ``segment_of`` as in :func:`make_layout` / :func:`select` (host arrays);
    ``ks``: int array [levels, S]. Returns ``(t, cut)``, each [levels, S] (t: the key dtype,
    cut: int64), equal to :func:`select` row by row.
    """
    lay = make_layout([np.size(k) for k in keys], segment_of)
    ks = np.asarray(ks, np.int64).reshape(-1, lay.n_segments)
    kdt = np.dtype(np.asarray(keys[0]).dtype)
    t = np.full(ks.shape, key_top(kdt), kdt)
    cut = np.zeros(ks.shape, np.int64)
    for s in range(lay.n_segments):
        seg = np.concatenate([np.asarray(k).reshape(-1) for k, g in zip(keys, segment_of)
                              if g == s]) if lay.segment_sizes[s] else np.zeros(0, kdt)
        order = np.argsort(~seg, kind="stable")         # descending keys, ties by position
        srt = seg[order]
        n = seg.size
        for lv in range(ks.shape[0]):
            k = int(ks[lv, s])
            cut[lv, s] = n
            if k == 0:
                continue
            t[lv, s] = srt[k - 1]
            if k < n and srt[k] == srt[k - 1]:
                cut[lv, s] = order[k - 1]
    return t, cut
