"""Figures of a study (matplotlib, Agg backend, PNG at 120 dpi).

* :func:`plot_accuracy_vs_sparsity`: test accuracy vs sparsity, one solid line per method
  (one-shot, no retraining), dash-dotted for one-shot + BatchNorm re-calibration (optional),
  dashed for pruned + retrained, dotted horizontal line at each method's dense accuracy. Two
  panels share the y axis: 0-90 % and the 90-99 % region expanded.
* :func:`plot_weight_distribution`: one method's weight magnitudes: histogram of log10|w| (exact
  zeros reported in the legend) and the CDF F(x) = P(|w| <= x) on a log x axis.
* :func:`plot_cdf_comparison`: the CDFs of all methods in one panel.
* :func:`plot_nm_accuracy`: accuracy of every method dense and one-shot pruned to each N:M
  pattern (grouped bars), with pruned + retrained networks marked by crosses.
* :func:`plot_training_curve`: one run's per-epoch training loss and accuracy, its learning
  rate, and its final test accuracy.
* :func:`plot_bits_per_byte`: a language model's bits per byte vs sparsity, one line per method
  (one-shot), its N:M networks as hollow stars at their sparsity 1 - N/M.

Inputs are plain data (lists / the dicts of the weight statistics of ``sfw_jax.pruning``), so
figures can be re-drawn from a study's ``summary.json`` without the checkpoints.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
MARKERS = ("o", "s", "^", "D", "v", "P")

Curve = tuple[Sequence[float], Sequence[float]]  # (sparsities as fractions, accuracies 0..1)


def _save(fig: plt.Figure, path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "." + os.path.basename(path) + ".tmp.png")
    fig.savefig(tmp, dpi=DPI)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _check_curve(name: str, curve: Curve, argname: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = (np.asarray(c, np.float64) for c in curve)
    if xs.ndim != 1 or xs.shape != ys.shape or xs.size == 0:
        raise ValueError(f"{argname}[{name!r}] must be (sparsities, accuracies) of equal "
                         f"non-zero length, got shapes {xs.shape} and {ys.shape}")
    order = np.argsort(xs)
    return 100 * xs[order], 100 * ys[order]


def plot_accuracy_vs_sparsity(path: str, oneshot: Mapping[str, Curve], *,
                              retrained: Mapping[str, Curve] | None = None,
                              recalibrated: Mapping[str, Curve] | None = None,
                              dense: Mapping[str, float] | None = None,
                              title: str = "", split: str = "test") -> str:
    """Accuracy vs sparsity figure (see the module docstring); returns ``path``.

    Args:
      path: PNG file to write.
      oneshot: method label -> (sparsities in [0, 1], accuracies in [0, 1]), one-shot pruned.
      retrained: label -> curve of the pruned + retrained networks (dashed).
      recalibrated: label -> curve of the one-shot pruned networks with re-estimated BatchNorm
        statistics (dash-dotted, thinner; weights as one-shot).
      dense: label -> dense accuracy in [0, 1] (dotted horizontal line).
      title: figure title.
      split: name of the evaluated split for the y label.
    """
    if not oneshot:
        raise ValueError("oneshot must hold at least one method's curve, got none")
    retrained, recalibrated, dense = retrained or {}, recalibrated or {}, dense or {}
    labels = list(dict.fromkeys([*oneshot, *recalibrated, *retrained, *dense]))
    color = {m: COLORS[i % len(COLORS)] for i, m in enumerate(labels)}
    marker = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(labels)}
    fig, (lo, hi) = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True,
                                 gridspec_kw={"width_ratios": [1.1, 1], "wspace": 0.06})
    for ax, (x0, x1) in ((lo, (-2, 91)), (hi, (89.6, 99.4))):
        for m, curve in oneshot.items():
            xs, ys = _check_curve(m, curve, "oneshot")
            ax.plot(xs, ys, color=color[m], marker=marker[m], ms=4, lw=1.6,
                    label=f"{m} one-shot")
        for m, curve in recalibrated.items():
            xs, ys = _check_curve(m, curve, "recalibrated")
            ax.plot(xs, ys, color=color[m], marker=marker[m], ms=3, mfc="none", lw=1.1,
                    ls="-.", label=f"{m} one-shot + BN re-cal")
        for m, curve in retrained.items():
            xs, ys = _check_curve(m, curve, "retrained")
            ax.plot(xs, ys, color=color[m], marker="x", ms=7, mew=2, lw=1.6, ls="--",
                    label=f"{m} pruned + retrained")
        for m, acc in dense.items():
            ax.axhline(100 * acc, color=color[m], ls=":", lw=1.2, label=f"{m} dense")
        ax.set_xlim(x0, x1)
        ax.grid(alpha=0.3)
    lo.set_xticks(range(0, 91, 10))
    hi.set_xticks(range(90, 100, 1))
    lo.set_ylim(0, 100)
    lo.set_ylabel(f"{split} accuracy (%)")
    lo.set_xlabel("sparsity (%)")
    hi.set_xlabel("sparsity (%), 90-99 expanded")
    hi.tick_params(labelleft=False)
    handles, names = lo.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    rows = (len(names) + 3) // 4
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9 if title else 0.96,
                        bottom=0.14 + 0.045 * rows)
    return _save(fig, path)


def plot_bits_per_byte(path: str, curves: Mapping[str, Curve], *,
                       nm: Mapping[str, Mapping[str, float]] | None = None, title: str = "",
                       split: str = "test") -> str:
    """Bits per byte vs sparsity (see the module docstring); returns ``path``.

    Args:
      path: PNG file to write.
      curves: method label -> (sparsities in [0, 1], bits per byte), one-shot pruned.
      nm: label -> {'N:M': bits per byte} of the N:M pruned networks.
      title: figure title.
      split: name of the evaluated split for the y label.
    """
    if not curves:
        raise ValueError("curves must hold at least one method's curve, got none")
    nm = nm or {}
    labels = list(dict.fromkeys([*curves, *nm]))
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for i, m in enumerate(labels):
        color, marker = COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]
        if m in curves:
            xs, ys = (np.asarray(c, np.float64) for c in curves[m])
            if xs.ndim != 1 or xs.shape != ys.shape or xs.size == 0:
                raise ValueError(f"curves[{m!r}] must be (sparsities, values) of equal non-zero "
                                 f"length, got shapes {xs.shape} and {ys.shape}")
            order = np.argsort(xs)
            ax.plot(100 * xs[order], ys[order], color=color, marker=marker, ms=5, lw=1.6,
                    label=f"{m}")
        for pattern, value in nm.get(m, {}).items():
            n, mm = (int(v) for v in pattern.split(":"))
            ax.plot([100 * (1 - n / mm)], [value], color=color, marker="*", ms=13, mfc="none",
                    mew=1.6, ls="none", label=f"{m} {pattern}")
    ax.set_xlabel("sparsity of the attention and MLP kernels (%)")
    ax.set_ylabel(f"{split} bits per byte (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_weight_distribution(path: str, hist: Mapping, cdf: Mapping, *, title: str = "",
                             scope: str = "global") -> str:
    """Histogram of log10|w| and CDF of |w| for one method; returns ``path``.

    Args:
      path: PNG file to write.
      hist: output of ``sfw_jax.pruning.magnitude_histogram(..., log=True)``.
      cdf: output of ``sfw_jax.pruning.magnitude_cdf``.
      title: figure title (e.g. the method name).
      scope: which entry of ``hist``/``cdf`` to draw (``'global'``).
    """
    if not hist.get("log", False):
        raise ValueError("hist must be a log10 histogram (magnitude_histogram(..., log=True))")
    edges = np.asarray(hist["edges"], np.float64)
    h = hist[scope]
    counts = np.asarray(h["counts"], np.float64)
    size = max(int(h["size"]), 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.bar(edges[:-1], 100 * counts / size, width=np.diff(edges), align="edge",
            color="tab:blue", alpha=0.8, edgecolor="none",
            label=f"exact zeros: {h['zeros']} of {h['size']} ({100 * h['zeros'] / size:.1f}%)")
    ax1.set_xlabel("log10 |w|")
    ax1.set_ylabel("% of weights")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.grid(alpha=0.3)
    xs = np.asarray(cdf["points"], np.float64)
    ax2.semilogx(xs, 100 * np.asarray(cdf[scope], np.float64), color="tab:red")
    ax2.set_xlabel("|w|")
    ax2.set_ylabel("% of weights with magnitude <= |w|")
    ax2.set_ylim(0, 100)
    ax2.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_cdf_comparison(path: str, cdfs: Mapping[str, Mapping], *, title: str = "",
                        scope: str = "global") -> str:
    """CDFs of |w| of several methods (label -> ``magnitude_cdf`` output); returns ``path``."""
    if not cdfs:
        raise ValueError("cdfs must hold at least one method, got none")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (m, cdf) in enumerate(cdfs.items()):
        ax.semilogx(cdf["points"], 100 * np.asarray(cdf[scope], np.float64),
                    color=COLORS[i % len(COLORS)], label=m)
    ax.set_xlabel("|w|")
    ax.set_ylabel("% of weights with magnitude <= |w|")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_nm_accuracy(path: str, oneshot: Mapping[str, Mapping[str, float]], *,
                     patterns: Sequence[str],
                     retrained: Mapping[str, Mapping[str, float]] | None = None,
                     dense: Mapping[str, float] | None = None, title: str = "",
                     split: str = "test") -> str:
    """Grouped bars: x = 'dense' and each N:M pattern, one bar per method; returns ``path``.

    Args:
      path: PNG file to write.
      oneshot: method label -> {pattern ('2:4'): accuracy in [0, 1]} one-shot pruned.
      patterns: the patterns on the x axis, in order.
      retrained: label -> {pattern: accuracy} of the pruned + retrained networks (crosses).
      dense: label -> dense accuracy (the 'dense' group).
      title: figure title.
      split: name of the evaluated split for the y label.
    """
    if not oneshot:
        raise ValueError("oneshot must hold at least one method, got none")
    retrained, dense = retrained or {}, dense or {}
    groups = ["dense", *patterns]
    labels = list(oneshot)
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups) * max(1, len(labels) / 3), 4.2))
    for i, m in enumerate(labels):
        accs = [dense.get(m), *[oneshot[m].get(p) for p in patterns]]
        xs = [g + (i - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        ys = [np.nan if a is None else 100 * a for a in accs]
        ax.bar(xs, ys, width=width * 0.95, color=COLORS[i % len(COLORS)], label=f"{m} one-shot")
        done = [(g, p) for g, p in enumerate(patterns, start=1) if p in retrained.get(m, {})]
        if done:
            ax.plot([xs[g] for g, _ in done], [100 * retrained[m][p] for _, p in done],
                    marker="x", ms=9, mew=2.5, color="black", ls="none",
                    label=f"{m} pruned + retrained")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curve(path: str, history: Sequence[Mapping], *, test_acc: float | None = None,
                        title: str = "") -> str:
    """Per-epoch records of a run (``metrics.jsonl``: ``epoch``, ``train_loss``, ``train_acc``,
    ``lr``): the training loss (log scale) with the learning rate on a second log axis, and the
    training accuracy with the final test accuracy as a dotted line; returns ``path``."""
    if not history:
        raise ValueError("history must hold at least one epoch record, got none")
    ep = np.asarray([r["epoch"] for r in history], np.float64)
    loss = np.asarray([r["train_loss"] for r in history], np.float64)
    acc = 100 * np.asarray([r["train_acc"] for r in history], np.float64)
    lr = np.asarray([r["lr"] for r in history], np.float64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(ep, loss, color=COLORS[0], lw=1.4, label="training loss")
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (batch mean)")
    left.grid(alpha=0.3, which="both")
    twin = left.twinx()
    twin.plot(ep, lr, color=COLORS[1], lw=1.0, ls="--", label="learning rate")
    if np.all(lr > 0):
        twin.set_yscale("log")
    twin.set_ylabel("learning rate")
    handles = left.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper right")
    right.plot(ep, acc, color=COLORS[2], lw=1.4, label="training accuracy (augmented)")
    if test_acc is not None:
        right.axhline(100 * test_acc, color=COLORS[3], ls=":", lw=1.2,
                      label=f"final test accuracy {100 * test_acc:.2f} %")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy (%)")
    right.set_ylim(0, 100)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
