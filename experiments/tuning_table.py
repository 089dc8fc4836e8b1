"""Validation-split comparison of several study folders (hyperparameter tuning record).

    python -m experiments.tuning_table STUDY_DIR [STUDY_DIR ...] [--out tuning.md]
        [--sparsities 90 95] [--nm 2:4 1:4] [--scope kernels] [--bn-recal]
        [--metric acc|bits_per_byte]

Reads each folder's ``summary.json`` (written by ``python -m experiments.study``) and prints one
Markdown row per (folder, method): the config fields that differ between the rows, dense
validation accuracy, validation accuracy one-shot pruned at ``--sparsities`` (global magnitude,
``--scope``), the drop from dense at those levels, validation accuracy one-shot pruned to the
``--nm`` patterns, and the training time; with ``--bn-recal`` also the validation accuracy at
those levels (and patterns) with BatchNorm re-calibrated (``—`` where a folder's sweep has no
such rows). ``--metric bits_per_byte`` shows a language-model study's validation bits per byte
instead of accuracy (lower is better; rows sorted ascending), read from its ``study.json``.
Test numbers are deliberately not shown: choose hyperparameters on validation, never on test.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

from experiments.prune_sweep import check_patterns
from experiments.study_report import nm_rows, oneshot_rows, pct

METRICS = ("acc", "bits_per_byte")
"""``--metric``: validation accuracy (%) or bits per byte."""
from sfw_jax import LEAF_SCOPES
from sfw_jax._cli import ArgumentParser, add_debug_flag, user_errors
from sfw_jax.training import run_folder

#: Config fields never shown as "varied" (paths and bookkeeping).
_IGNORED = {"out_dir", "resume", "progress", "log_every", "keep_checkpoints", "data_dir"}


def load_rows(study_dirs: Sequence[str]) -> list[dict[str, Any]]:
    """One record per (study folder, method) with its config, dense val acc and sweep rows."""
    rows = []
    for d in study_dirs:
        path = os.path.join(d, run_folder.STUDY_RECORD_FILE)
        if not os.path.isfile(path):
            path = os.path.join(d, run_folder.STUDY_SUMMARY_FILE)
        if not os.path.isfile(path):
            raise run_folder.NotARunError(
                f"{d} has no {run_folder.STUDY_SUMMARY_FILE}: not a finished study folder of "
                f"`python -m experiments.study`")
        summary = run_folder.read_json(path)
        for method, rec in summary["methods"].items():
            rows.append({"study": os.path.basename(os.path.normpath(d)), "method": method,
                         "config": rec["config"], "dense_val": rec.get("dense_val_acc"),
                         "dense_val_bits_per_byte": rec.get("dense_val_bits_per_byte"),
                         "criterion": rec.get("criterion", "magnitude"),
                         "sweep": rec.get("sweep", []), "train_time": rec.get("train_time")})
    return rows


def varied_fields(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Config fields whose values differ between rows (sorted)."""
    keys = sorted({k for r in rows for k in r["config"]} - _IGNORED)
    return [k for k in keys
            if len({json.dumps(r["config"].get(k), sort_keys=True) for r in rows}) > 1]


def val_at(row: dict[str, Any], sparsity: float, scope: str,
           bn_recal: bool = False, metric: str = "acc") -> float | None:
    """Validation ``metric`` of ``row`` one-shot pruned at ``sparsity`` by its criterion (with
    ``bn_recal``: the BatchNorm re-calibrated row; None where the sweep has no such row)."""
    rows = oneshot_rows(row, scope, bn_recal, row.get("criterion", "magnitude"))
    return rows.get(round(sparsity, 6), {}).get(f"val_{metric}")


def nm_val_at(row: dict[str, Any], pattern: str, bn_recal: bool = False,
              metric: str = "acc") -> float | None:
    """Validation ``metric`` of ``row`` one-shot pruned to the N:M ``pattern`` (None if
    absent)."""
    rows = nm_rows(row, bn_recal, row.get("criterion", "magnitude"))
    return rows.get(pattern, {}).get(f"val_{metric}")


def _dense(row: dict[str, Any], metric: str) -> float | None:
    return row["dense_val"] if metric == "acc" else row.get("dense_val_bits_per_byte")


def table(rows: Sequence[dict[str, Any]], sparsities: Sequence[float], scope: str,
          bn_recal: bool = False, nm: Sequence[str] = (), metric: str = "acc") -> str:
    """The Markdown table (rows sorted best first by the validation ``metric`` at the first
    sparsity, else the first N:M pattern, without re-calibration)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    lower_better = metric == "bits_per_byte"
    fmt = (lambda v: "—" if v is None else f"{v:.3f}") if lower_better else (
        lambda v: pct(v, 1))
    name = "bpb" if lower_better else ""
    fields = varied_fields(rows)
    recal = list(sparsities) if bn_recal else []
    nm_recal = list(nm) if bn_recal else []
    val = f"val {name} " if name else "val "
    head = (["study", "method"] + fields + [f"{val}dense"]
            + [f"{val}{100 * p:g}%" for p in sparsities]
            + [(f"rise {100 * p:g}%" if lower_better else f"drop {100 * p:g}%")
               for p in sparsities]
            + [f"{val}{p}" for p in nm]
            + [f"{val}{100 * p:g}% re-cal" for p in recal]
            + [f"{val}{p} re-cal" for p in nm_recal] + ["train s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def key(r):
        v = (val_at(r, sparsities[0], scope, metric=metric) if sparsities
             else nm_val_at(r, nm[0], metric=metric) if nm else _dense(r, metric))
        if v is None:
            return float("inf")
        return v if lower_better else -v

    for r in sorted(rows, key=key):
        dense = _dense(r, metric)
        vals = [val_at(r, p, scope, metric=metric) for p in sparsities]
        drops = [None if (v is None or dense is None) else
                 (v - dense if lower_better else dense - v) for v in vals]
        nm_vals = [nm_val_at(r, p, metric=metric) for p in nm]
        recal_vals = ([val_at(r, p, scope, bn_recal=True, metric=metric) for p in recal]
                      + [nm_val_at(r, p, bn_recal=True, metric=metric) for p in nm_recal])
        cells = ([r["study"], r["method"]] + [json.dumps(r["config"].get(f)) for f in fields]
                 + [fmt(v) for v in [dense, *vals, *drops, *nm_vals, *recal_vals]]
                 + ["—" if r["train_time"] is None else f"{r['train_time']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m experiments.tuning_table",
                        description=__doc__.split("\n")[0])
    ap.add_argument("study_dirs", nargs="+", help="folders written by experiments.study")
    ap.add_argument("--sparsities", nargs="+", type=float, default=[90.0, 95.0],
                    metavar="PERCENT", help="pruning levels to show (percent)")
    ap.add_argument("--nm", nargs="+", default=[], metavar="N:M",
                    help="N:M patterns to show (e.g. 2:4 1:4)")
    ap.add_argument("--scope", default="kernels", choices=LEAF_SCOPES)
    ap.add_argument("--bn-recal", action="store_true",
                    help="also show validation accuracy with BatchNorm re-calibrated")
    ap.add_argument("--metric", choices=METRICS, default="acc",
                    help="validation accuracy (%%) or bits per byte (a language-model study)")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    bad = [p for p in args.sparsities if not 0 <= p < 100]
    if bad:
        ap.error(f"--sparsities must be percentages in [0, 100), got {bad}")
    with user_errors(ap, args.debug):
        patterns = check_patterns(args.nm, "--nm")
        rows = load_rows(args.study_dirs)
        text = table(rows, [p / 100 for p in args.sparsities], args.scope, args.bn_recal,
                     patterns, args.metric)
    print(text, end="")
    if args.out:
        run_folder.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
