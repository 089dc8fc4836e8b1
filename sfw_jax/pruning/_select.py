"""Exact, deterministic bottom-k selection on flat integer keys, per contiguous segment.

This is the ranking core of :mod:`sfw_jax.pruning`. Every pruning criterion (|w|, filter L2
norms, random numbers) is first turned into a 1-D array of non-negative integer *keys* whose
integer order is the criterion's order. For non-negative floats ``s`` the IEEE-754 bit pattern
read as a signed integer of the same width is such a key: ``s_i < s_j  <=>  key_i < key_j`` and
``s_i == s_j <=> key_i == key_j`` (``+0.0`` is the smallest key, NaN lies above ``+inf``).

Groups. Keys come as a list of 1-D arrays (one per leaf), each with a static group id; a group
is ranked as the concatenation of its arrays in list order (never materialised) and gets its own
count ``k_g``. One group holding every array is a global ranking; one group per array is a
layerwise one.

The selection rule. Within a segment the *bottom-k set* is the first ``k`` positions of the
stable ascending order of its keys: order by key, ties broken by lower flat position first.
Equivalently, with ``t`` the k-th smallest key of the segment, ``n_below = #{c_i < t}`` and
``need = k - n_below``::

    pruned_i = (c_i < t)  or  (c_i == t  and  #{j <= i in the segment : c_j == t} <= need)

This set has exactly ``k`` elements, every selected key is ``<=`` every unselected key of the
segment, and the sets are nested in ``k`` (each is a prefix of one fixed order). For ``k == 0``
we use ``t = -1`` (nothing selected).

Finding ``t`` (jit-able, no sort): radix select on the key bits, most significant digit first,
16 bits per round (2 rounds for int32 keys, 4 for int64). Each round is one pass over the keys:
a histogram (``bincount``) of the current digit of the keys that still match the prefix found so
far, one histogram row per group; the cumulative histogram locates the digit holding the k-th
key. Cost O(rounds * n) plus O(arrays * 2^16). With many ``k`` at once,
:func:`sorted_thresholds` gets every ``t`` from one host sort instead.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DIGIT_BITS = 16


def float_keys(scores: jax.Array) -> jax.Array:
    """Integer keys ordering non-negative float ``scores`` (shape [n]) exactly like the floats.

    ``float32`` scores give ``int32`` keys and ``float64`` scores ``int64`` keys (bit patterns).
    Precondition: no negative scores (pass ``|w|`` or norms; ``-0.0`` must not occur).
    """
    if scores.dtype == jnp.float64:
        return jax.lax.bitcast_convert_type(scores, jnp.int64)
    return jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.int32)


def _check_groups(segments: Sequence[jax.Array], groups: Sequence[int]) -> int:
    if len(groups) != len(segments):
        raise ValueError(f"groups must have one entry per key array ({len(segments)}), "
                         f"got {len(groups)}")
    n_groups = max(groups) + 1 if groups else 0
    if sorted(set(groups)) != list(range(n_groups)):
        raise ValueError(f"groups must use every id in 0..{n_groups - 1}, got {tuple(groups)}")
    return n_groups


def kth_smallest(segments: Sequence[jax.Array], groups: Sequence[int], ks: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per group: k-th smallest key ``t``, ``#{keys < t}`` and ``#{keys == t}``.

    Args:
      segments: key arrays (one dtype, int32 or int64, non-negative), shapes [n_i].
      groups: static group id of each array (``0..G-1``); a group is ranked as the
        concatenation of its arrays in list order. ``(0,) * L``: global; ``range(L)``:
        each array alone.
      ks: int array [G], ``0 <= ks[g] <=`` size of group ``g`` (may be traced).

    Returns ``(t, n_below, n_at)``, each shape [G]; ``t = -1``, ``n_below = n_at = 0`` where
    ``ks == 0``.
    """
    n_groups = _check_groups(segments, groups)
    dtype = segments[0].dtype
    total = jnp.iinfo(dtype).bits - 1  # keys are non-negative: the sign bit is 0
    rank = ks.astype(jnp.int32)
    prefix = jnp.zeros((n_groups,), dtype)
    n_below = jnp.zeros((n_groups,), jnp.int32)
    n_at = jnp.zeros((n_groups,), jnp.int32)
    shift = total
    while shift > 0:  # static unrolled rounds: 2 for int32, 4 for int64
        width = min(DIGIT_BITS, shift)
        shift -= width
        n_bins = 1 << width
        index = []
        for keys, g in zip(segments, groups):
            digit = (keys >> shift) & (n_bins - 1)
            if shift + width < total:  # after the first round: only keys matching the prefix
                digit = jnp.where((keys >> (shift + width)) == prefix[g], digit, n_bins)
            index.append(digit + g * (n_bins + 1))  # bin n_bins of a row: non-matching keys
        index = jnp.concatenate(index) if len(index) > 1 else index[0]
        hist = jnp.bincount(index, length=n_groups * (n_bins + 1)).astype(jnp.int32)
        hist = hist.reshape(n_groups, n_bins + 1)[:, :n_bins]
        cum = jnp.cumsum(hist, axis=1)
        d = jax.vmap(lambda c, r: jnp.searchsorted(c, r, side="left"))(cum, rank)
        d = jnp.minimum(d, n_bins - 1)
        below = jnp.take_along_axis(cum - hist, d[:, None], axis=1)[:, 0]
        n_at = jnp.take_along_axis(hist, d[:, None], axis=1)[:, 0]
        n_below = n_below + below
        rank = rank - below
        prefix = (prefix << width) | d.astype(dtype)
    empty = ks == 0
    t = jnp.where(empty, jnp.asarray(-1, dtype), prefix)
    return t, jnp.where(empty, 0, n_below), jnp.where(empty, 0, n_at)


def bottom_k_at(segments: Sequence[jax.Array], groups: Sequence[int], t: jax.Array,
                need: jax.Array, n_at: jax.Array) -> list[jax.Array]:
    """Per array, bool [n_i]: keys below its group's ``t`` and the group's first ``need`` ties.

    ``t``, ``need = k - #{keys < t}`` and ``n_at = #{keys == t}`` are per-group arrays [G]
    (from :func:`kth_smallest` or :func:`sorted_thresholds`). The running count of ties within
    each group (one cumsum over all arrays, minus the ties in earlier arrays of other groups)
    is computed only when some group selects part of its ties (``need != n_at``); otherwise
    the result is ``keys <= t``.
    """
    _check_groups(segments, groups)

    def all_ties():
        return [keys <= t[g] for keys, g in zip(segments, groups)]

    def partial_ties():
        # one cumsum over all arrays; subtract the ties of earlier arrays of other groups
        ats = [keys == t[g] for keys, g in zip(segments, groups)]
        running = jnp.cumsum(jnp.concatenate(ats) if len(ats) > 1 else ats[0],
                             dtype=jnp.int32)
        sizes = np.array([a.size for a in ats])
        ends = np.cumsum(sizes)
        starts = ends - sizes
        before = jnp.concatenate([jnp.zeros((1,), jnp.int32), running])
        count = before[ends] - before[starts]  # ties per array, [L]
        g = np.asarray(groups)
        other_earlier = (np.arange(g.size)[None, :] < np.arange(g.size)[:, None]) & (
            g[None, :] != g[:, None])  # [L, L] static: earlier arrays of other groups
        other = jnp.asarray(other_earlier, jnp.int32) @ count
        return [(keys < t[gi]) | (at & (running[s:e] - other[i] <= need[gi]))
                for i, (keys, gi, at, s, e) in enumerate(zip(segments, groups, ats, starts, ends))]

    return jax.lax.cond(jnp.all(need == n_at), all_ties, partial_ties)


def bottom_k(segments: Sequence[jax.Array], groups: Sequence[int], ks: jax.Array
             ) -> list[jax.Array]:
    """Per group exactly ``ks[g]`` True: its smallest keys, ties by lower position."""
    t, n_below, n_at = kth_smallest(segments, groups, ks)
    return bottom_k_at(segments, groups, t, ks - n_below, n_at)


def sorted_thresholds(segments: Sequence[np.ndarray], groups: Sequence[int], ks: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t, n_below, n_at)`` as in :func:`kth_smallest` for many count vectors at once.

    ``segments``/``groups`` as in :func:`kth_smallest` (host arrays); ``ks``: int array
    [levels, G]. One host sort per group; returns three int64 arrays [levels, G].
    """
    n_groups = _check_groups(segments, groups)
    segments = [np.concatenate([np.asarray(c) for c, g in zip(segments, groups) if g == i])
                for i in range(n_groups)]
    ks = np.asarray(ks, np.int64).reshape(-1, len(segments))
    t = np.full(ks.shape, -1, np.int64)
    n_below = np.zeros(ks.shape, np.int64)
    n_at = np.zeros(ks.shape, np.int64)
    for col, keys in enumerate(segments):
        srt = np.sort(np.asarray(keys))
        nz = ks[:, col] > 0
        t[nz, col] = srt[ks[nz, col] - 1]
        lo = np.searchsorted(srt, t[nz, col], side="left")
        n_below[nz, col] = lo
        n_at[nz, col] = np.searchsorted(srt, t[nz, col], side="right") - lo
    return t, n_below, n_at
