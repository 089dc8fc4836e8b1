"""The reports of a language-model study (``metric='test_bits_per_byte'``): ``table.md``, the
bits-per-byte plot and the compact ``summary.json``, from the study record.

Everything here reads the record of :func:`experiments.study_runner.run_study` (the content of
``study.json``), so the reports can be re-drawn without the checkpoints. A method's *levels*
are its one-shot pruned networks, named ``"0"``, ``"50"``, ... (percent of the kernels pruned,
unstructured, by the method's criterion) and ``"2:4"`` (the N:M patterns); each level's value
is the bits per byte (mean next-byte cross-entropy in nats / ln 2) of that network on a split.
"""

from __future__ import annotations

import math
import os

from experiments import plots
from experiments import prune_sweep as sweep_lib
from sfw_jax.training import run_folder

METRIC = "test_bits_per_byte"

DENSE_TOLERANCE = 0.10
"""Target: Adam-SFW dense within 10 % of AdamW's test bits per byte."""


def levels(res: dict, split: str = "test", scope: str = "kernels") -> dict[str, float]:
    """``{level: bits per byte on split}`` of one method (its criterion's rows of ``scope``,
    no BatchNorm re-calibration), in sweep order."""
    out = {}
    for r in res["sweep"]:
        if (sweep_lib.row_criterion(r) == res.get("criterion", sweep_lib.MAGNITUDE)
                and r["scope"] == scope and not r["bn_recal"]):
            out[sweep_lib.level_name(r)] = r[f"{split}_bits_per_byte"]
    return out


def compact_summary(summary: dict) -> dict:
    """``summary.json`` of a language-model study:
    ``{"metric": "test_bits_per_byte", "methods": {method: {level: value}}}``."""
    main = summary["preset"]["main_scope"]
    return {"metric": METRIC,
            "methods": {m: levels(res, "test", main) for m, res in summary["methods"].items()}}


def _fmt(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def bpb_table(summary: dict, split: str = "test") -> str:
    """Markdown table: rows = methods, columns = the levels (bits per byte on ``split``)."""
    main = summary["preset"]["main_scope"]
    per = {m: levels(res, split, main) for m, res in summary["methods"].items()}
    cols = list(dict.fromkeys(k for v in per.values() for k in v))
    head = ["method", "pruned by", *(("dense" if c == "0" else c if ":" in c else f"{c}%")
                                     for c in cols)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(cols)]
    for m, res in summary["methods"].items():
        how = res.get("criterion", sweep_lib.MAGNITUDE)
        how = "global magnitude" if how == sweep_lib.MAGNITUDE else how
        lines.append(f"| {res['label']} | {how} | "
                     + " | ".join(_fmt(per[m].get(c)) for c in cols) + " |")
    return "\n".join(lines)


def targets(summary: dict) -> list[str]:
    """The issue's targets on test bits per byte (needs 'adamw', 'adam_sfw', 'adamw_wanda')."""
    main = summary["preset"]["main_scope"]
    ms = summary["methods"]
    if not {"adamw", "adam_sfw"} <= set(ms):
        return ["(needs methods 'adamw' and 'adam_sfw')"]
    ad, asfw = levels(ms["adamw"], "test", main), levels(ms["adam_sfw"], "test", main)
    out = []
    if "0" in ad and "0" in asfw:
        rel = asfw["0"] / ad["0"] - 1
        out.append(f"- Adam-SFW dense vs AdamW dense: {asfw['0']:.3f} vs {ad['0']:.3f} bits per "
                   f"byte ({100 * rel:+.1f} %; target <= +{100 * DENSE_TOLERANCE:g} %): "
                   f"**{'met' if rel <= DENSE_TOLERANCE else 'not met'}**")
    wanda = levels(ms["adamw_wanda"], "test", main) if "adamw_wanda" in ms else {}
    for lv in ("50", "2:4"):
        if lv in asfw and lv in wanda:
            a, b = asfw[lv], wanda[lv]
            name = f"{lv}%" if lv == "50" else lv
            out.append(f"- At {name}: Adam-SFW magnitude-pruned {a:.3f} vs AdamW + Wanda "
                       f"{b:.3f} bits per byte (target: below): "
                       f"**{'met' if a < b else 'not met'}**")
    return out


def table_markdown(summary: dict, notes: str = "") -> str:
    """The language-model study's ``table.md``."""
    ms = summary["methods"]
    out = [f"# Study `{summary['study']}`: {summary['description']}", "",
           f"Generated {summary['generated']} by `python -m experiments.study --preset "
           f"{summary['study']}`. Bits per byte (mean next-byte cross-entropy in nats / ln 2; "
           f"lower is better) of each method's final network, pruned one-shot without "
           f"retraining: `dense` = not pruned, `50%` ... = that fraction of the attention and "
           f"MLP kernels' entries pruned by the method's criterion (global magnitude ranking, "
           f"or Wanda per output row), `2:4` = 2 of every 4 consecutive inputs kept per output "
           f"(magnitude, or Wanda scores). Choose hyperparameters on the validation table, "
           f"never on the test table.", "",
           "## Test bits per byte", "", bpb_table(summary, "test"), "",
           "## Targets (issue 29)", "", *targets(summary), "",
           "## Validation bits per byte (for hyperparameter choice)", "",
           bpb_table(summary, "val"), "",
           "## Dense networks and training cost", "",
           "| method | test bpb | test next-byte acc | val bpb | steps | training time (s) | "
           "run folder |", "|---|---:|---:|---:|---:|---:|---|"]
    for m, r in ms.items():
        steps = r["history"][-1]["step"] if r["history"] else None
        out.append(f"| {r['label']} | {_fmt(r['final'].get(METRIC))} | "
                   f"{100 * r['final']['test_acc']:.2f}% | "
                   f"{_fmt(r.get('dense_val_bits_per_byte'))} | {steps} | "
                   f"{r['train_time']:.0f} | `runs/{r['trained_as']}` |")
    out += ["", "Methods pruned by another criterion reuse the trained run named in the last "
            "column. Exact configs: `configs.json`; every sweep row (achieved sparsity, "
            "validation and test loss, accuracy, bits per byte): `runs/<method>/sweep.csv`. "
            "Figure: `bits_per_byte_vs_sparsity.png`.", ""]
    if notes:
        out += ["## Notes", "", notes.strip(), ""]
    return "\n".join(out)


def write_reports(summary: dict, out_dir: str, notes: str = "") -> dict[str, str]:
    """Write ``table.md`` and ``bits_per_byte_vs_sparsity.png``; returns {name: path}."""
    main = summary["preset"]["main_scope"]
    paths = {"table": os.path.join(out_dir, "table.md"),
             "plot": os.path.join(out_dir, "bits_per_byte_vs_sparsity.png")}
    run_folder.write_text(paths["table"], table_markdown(summary, notes))
    curves, nm = {}, {}
    for res in summary["methods"].values():
        lv = levels(res, "test", main)
        un = sorted((float(k) / 100, v) for k, v in lv.items() if ":" not in k)
        curves[res["label"]] = ([s for s, _ in un], [v for _, v in un])
        nm[res["label"]] = {k: v for k, v in lv.items() if ":" in k}
    plots.plot_bits_per_byte(paths["plot"], curves, nm=nm,
                             title=f"{summary['study']}: one-shot pruning of a byte-level "
                                   f"Transformer, no retraining")
    return paths
