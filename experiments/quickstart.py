"""Offline quickstart: SFW vs SGD, one-shot magnitude pruning at any sparsity, no retraining.

``python -m experiments.quickstart`` trains the same small CNN on scikit-learn's embedded 8x8
digits (no download) twice:

* **SFW** (preset ``quickstart-digits``): every tensor constrained to a K-sparse polytope
  (K = min(max(k, floor(k_frac n)), n), 'initialization' diameters D = 2 tau E||W_init||);
* **SGD**: momentum 0.9, weight decay 5e-4, the usual dense baseline;

then prunes each trained network one-shot to sparsities 0, 10, ..., 90, 91, ..., 99% (global
magnitude ranking over the conv/dense kernels, exact counts, no retraining, BatchNorm-free model)
and evaluates test accuracy. It prints the table and writes
``<out-dir>/accuracy_vs_sparsity.png`` and ``<out-dir>/results.json``. Hyperparameters were
chosen on the validation split (the ``--*`` flags below change them); the test split is only
used for the final table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

from experiments.prune_sweep import SPARSITIES
from sfw_jax._cli import ArgumentParser, add_debug_flag, user_errors


def build_configs(args: argparse.Namespace) -> dict[str, Any]:
    """The SFW and SGD ``TrainConfig`` of the comparison."""
    from sfw_jax.training.presets import from_preset

    common = dict(epochs=args.epochs, seed=args.seed, progress=not args.no_progress,
                  keep_checkpoints=0)
    sfw = from_preset("quickstart-digits", k_frac=args.k_frac, tau=args.tau, lr=args.sfw_lr,
                      out_dir=os.path.join(args.out_dir, "sfw"), **common)
    sgd = from_preset("quickstart-digits", optimizer="sgd", lr=args.sgd_lr, weight_decay=5e-4,
                      lr_schedule=sfw.lr_schedule, out_dir=os.path.join(args.out_dir, "sgd"),
                      **common)
    return {"SFW": sfw, "SGD": sgd}


def sparsity_sweep(result: Any, sparsities: Sequence[float]) -> dict[str, list[float]]:
    """Validation and test accuracy of ``result``'s params pruned one-shot to each sparsity."""
    from sfw_jax.pruning import apply_mask, masks_for_sweep

    params, bs = result.state.params, result.state.batch_stats
    val = result.evaluator.put(result.dataset.val)
    test = result.evaluator.put(result.dataset.test)
    out: dict[str, list[float]] = {"val_acc": [], "test_acc": []}
    for mask in masks_for_sweep(params, list(sparsities), scope="global"):
        pruned = apply_mask(params, mask)
        out["val_acc"].append(result.evaluator(pruned, bs, val)["accuracy"])
        out["test_acc"].append(result.evaluator(pruned, bs, test)["accuracy"])
    return out


def format_table(sparsities: Sequence[float], accs: dict[str, list[float]]) -> str:
    """Plain-text table: one row per sparsity, one test-accuracy column per method."""
    names = list(accs)
    lines = ["sparsity  " + "  ".join(f"{n + ' test acc':>12}" for n in names)]
    for i, s in enumerate(sparsities):
        lines.append(f"{100 * s:7.0f}%  " + "  ".join(f"{100 * accs[n][i]:11.1f}%"
                                                     for n in names))
    return "\n".join(lines)


def save_plot(path: str, sparsities: Sequence[float], accs: dict[str, list[float]],
              title: str) -> None:
    """Test accuracy vs sparsity, one line per method (matplotlib, Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [100 * s for s in sparsities]
    for (name, ys), marker in zip(accs.items(), ("o", "s", "^")):
        ax.plot(xs, [100 * y for y in ys], marker=marker, markersize=4, label=name)
    ax.set_xlabel("sparsity (% of kernel weights pruned, one-shot, no retraining)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.quickstart",
                       description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default="quickstart_out")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of each run (default: the quickstart-digits preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k-frac", type=float, default=None, help="SFW k_frac (default: preset)")
    p.add_argument("--tau", type=float, default=None, help="SFW tau (default: preset)")
    p.add_argument("--sfw-lr", type=float, default=None, help="SFW lr (default: preset)")
    p.add_argument("--sgd-lr", type=float, default=0.05)
    p.add_argument("--no-progress", action="store_true")
    add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from sfw_jax.training.config import validate
    from sfw_jax.training.presets import PRESETS

    preset = PRESETS["quickstart-digits"]
    for name in ("epochs", "k_frac", "tau", "sfw_lr"):
        if getattr(args, name) is None:
            setattr(args, name, preset["lr" if name == "sfw_lr" else name])
    with user_errors(parser, args.debug):
        configs = {k: validate(c) for k, c in build_configs(args).items()}

    from sfw_jax.training.datasets import load_dataset
    from sfw_jax.training.loop import train

    t0 = time.time()
    os.makedirs(args.out_dir, exist_ok=True)
    dataset = load_dataset("digits", val_fraction=configs["SFW"].val_fraction, seed=args.seed)
    results, sweeps, times = {}, {}, {}
    for name, cfg in configs.items():
        print(f"== {name}: {cfg.arch} {dict(cfg.model_kwargs)}, {cfg.epochs} epochs, "
              f"lr {cfg.lr}" + (f", K-sparse k={cfg.k} k_frac={cfg.k_frac} tau={cfg.tau}"
                                if cfg.optimizer == "sfw" else f", weight decay {cfg.weight_decay}"))
        t = time.time()
        results[name] = train(cfg, dataset)
        sweeps[name] = sparsity_sweep(results[name], SPARSITIES)
        times[name] = time.time() - t
    test_accs = {n: s["test_acc"] for n, s in sweeps.items()}
    print()
    print(format_table(SPARSITIES, test_accs))
    plot_path = os.path.join(args.out_dir, "accuracy_vs_sparsity.png")
    save_plot(plot_path, SPARSITIES, test_accs,
              "digits (8x8), SimpleCNN: one-shot global magnitude pruning")
    wall = time.time() - t0
    summary = {
        "dataset": "digits", "sparsities": list(SPARSITIES),
        "methods": {n: {"config": configs[n].to_dict(), "val_acc": sweeps[n]["val_acc"],
                        "test_acc": sweeps[n]["test_acc"], "train_time": times[n],
                        "history": results[n].history} for n in configs},
        "wall_time": wall,
    }
    json_path = os.path.join(args.out_dir, "results.json")
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nsaved {plot_path} and {json_path}; total {wall:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
