"""Weight-magnitude statistics for the distribution analysis (counts, histograms, CDFs).

All functions read the leaves picked by ``include`` (None: every leaf; or a bool pytree / a
predicate ``(path, leaf) -> bool``, :data:`sfw_jax.Selector`), work on
``a = |w|`` on the host in NumPy, and return plain Python / list values (JSON-ready, e.g.
``json.dumps``; float dict keys become strings there) with one ``'global'`` entry over all
selected leaves and one ``'per_leaf'`` entry per leaf keyed by its path string ``'a/b/c'``.
Non-finite entries are never counted in bins or above thresholds; they are reported as
``nonfinite``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np

from sfw_jax._selectors import Selector, every_leaf, select_leaves
from sfw_jax._tree import PyTree, path_str

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(10.0 ** e for e in range(1, -11, -1))
"""10, 1, 0.1, ..., 1e-10: the magnitude levels the reference implementation logs."""


def _magnitudes(params: PyTree, include: Selector) -> dict[str, np.ndarray]:
    """``{path: |w| flattened (float32 or wider)}`` for the selected leaves, in leaf order."""
    chosen = select_leaves(params, include, every_leaf, "include")
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    sel = jax.tree.structure(params).flatten_up_to(chosen)
    out = {}
    for (path, leaf), keep in zip(flat, sel):
        if keep:
            a = np.abs(np.asarray(leaf)).ravel()
            if a.dtype.itemsize < 4 or not np.issubdtype(a.dtype, np.floating):
                a = a.astype(np.float32)
            out[path_str(path)] = a
    return out


def _check_values(values: Sequence[float], argname: str) -> list[float]:
    vals = [float(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        raise ValueError(f"{argname} must be a non-empty sequence of numbers without NaN, "
                         f"got {values!r}")
    return vals


def count_above_thresholds(params: PyTree, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                           *, include: Selector = None) -> dict[str, Any]:
    """Number of entries with ``|w| > t`` (strictly) for each threshold ``t``.

    Returns ``{'thresholds': [t...], 'size': N, 'global': {t: count},
    'per_leaf': {path: {'size': n, 'counts': {t: count}}}}``.
    """
    ts = _check_values(thresholds, "thresholds")
    mags = _magnitudes(params, include)
    per_leaf = {p: {"size": int(a.size), "counts": {t: int(np.count_nonzero(a > t)) for t in ts}}
                for p, a in mags.items()}
    total = {t: sum(r["counts"][t] for r in per_leaf.values()) for t in ts}
    return {"thresholds": ts, "size": sum(r["size"] for r in per_leaf.values()),
            "global": total, "per_leaf": per_leaf}


def _default_edges(mags: dict[str, np.ndarray], bins: int, log: bool) -> np.ndarray:
    vals = [a[np.isfinite(a) & (a > 0)] for a in mags.values()]
    vals = [np.log10(v) if log else v for v in vals if v.size]
    if not vals:
        lo, hi = (-10.0, 1.0) if log else (0.0, 1.0)
    else:
        lo = float(min(v.min() for v in vals))
        hi = float(max(v.max() for v in vals))
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def magnitude_histogram(params: PyTree, bins: int | Sequence[float] = 50, *, log: bool = True,
                        include: Selector = None) -> dict[str, Any]:
    """Histogram of nonzero finite ``|w|`` (of ``log10|w|`` when ``log``), zeros counted apart.

    Args:
      bins: number of equal-width bins spanning the global min..max of the (log) magnitudes,
        or explicit increasing edges (in log10 units when ``log``); shared by all leaves.
      log: bin ``log10|w|`` instead of ``|w|``.

    Returns ``{'edges': [...], 'log': log, 'global': H, 'per_leaf': {path: H}}`` with
    ``H = {'counts': [...], 'zeros', 'nonfinite', 'underflow', 'overflow', 'size'}``: ``counts``
    per bin (numpy.histogram convention, last bin closed), ``under/overflow`` nonzero entries
    outside the edges, and ``size = sum(counts) + zeros + nonfinite + underflow + overflow``.
    """
    mags = _magnitudes(params, include)
    if isinstance(bins, (int, np.integer)):
        if bins < 1:
            raise ValueError(f"bins must be a positive int or a sequence of edges, got {bins}")
        edges = _default_edges(mags, int(bins), log)
    else:
        edges = np.asarray(_check_values(bins, "bins"), np.float64)
        if edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"bins must be at least two strictly increasing edges, got {bins!r}")

    def hist(a: np.ndarray) -> dict[str, Any]:
        finite = np.isfinite(a)
        nonzero = a[finite & (a != 0)].astype(np.float64)
        v = np.log10(nonzero) if log else nonzero
        counts, _ = np.histogram(v, edges)
        return {"counts": counts.astype(int).tolist(),
                "zeros": int(np.count_nonzero(finite & (a == 0))),
                "nonfinite": int(np.count_nonzero(~finite)),
                "underflow": int(np.count_nonzero(v < edges[0])),
                "overflow": int(np.count_nonzero(v > edges[-1])),
                "size": int(a.size)}

    per_leaf = {p: hist(a) for p, a in mags.items()}
    total = {"counts": np.sum([h["counts"] for h in per_leaf.values()], axis=0,
                              dtype=np.int64).tolist() if per_leaf else [0] * (len(edges) - 1)}
    for name in ("zeros", "nonfinite", "underflow", "overflow", "size"):
        total[name] = sum(h[name] for h in per_leaf.values())
    return {"edges": edges.tolist(), "log": bool(log), "global": total, "per_leaf": per_leaf}


def magnitude_cdf(params: PyTree, points: Sequence[float] | None = None, *,
                  include: Selector = None) -> dict[str, Any]:
    """Empirical CDF ``F(x) = #{|w| <= x} / size`` at ``points`` (default 10^-10..10^1).

    Default points: ``10 ** linspace(-10, 1, 111)`` (10 per decade). ``size`` counts every
    entry, so ``F`` tops out below 1 when there are non-finite entries.

    Returns ``{'points': [...], 'global': [F...], 'per_leaf': {path: [F...]}, 'size': N}``.
    """
    xs = np.asarray(_check_values(10.0 ** np.linspace(-10, 1, 111) if points is None
                                  else points, "points"), np.float64)
    mags = _magnitudes(params, include)
    counts = {p: np.searchsorted(np.sort(a[np.isfinite(a)]).astype(np.float64), xs,
                                 side="right") for p, a in mags.items()}
    size = sum(int(a.size) for a in mags.values())
    total = np.sum(list(counts.values()), axis=0) if counts else np.zeros(xs.size)
    return {
        "points": xs.tolist(),
        "size": size,
        "global": (total / size if size else np.zeros(xs.size)).tolist(),
        "per_leaf": {p: (c / mags[p].size if mags[p].size else np.zeros(xs.size)).tolist()
                     for p, c in counts.items()},
    }
