"""The reports of a study: ``table.md``, ``weights_above.md`` and the figures, from its summary.

Everything here reads the summary dict of :func:`experiments.study_runner.run_study` (the
content of ``summary.json``), so the reports can be re-drawn without the checkpoints.
"""

from __future__ import annotations

import os

import numpy as np

from experiments import plots
from experiments import prune_sweep as sweep_lib
from sfw_jax.training import run_folder


def pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.{digits}f}"


def _seconds(x: float | None) -> str:
    """Whole seconds, or the dash of an absent value."""
    return "—" if x is None else f"{x:.0f}"


def oneshot_rows(res: dict, scope: str, bn_recal: bool = False,
                 criterion: str = sweep_lib.MAGNITUDE) -> dict[float, dict]:
    """Unstructured sweep rows of one scope and criterion by target sparsity."""
    return {round(r["target_sparsity"], 6): r for r in res["sweep"]
            if r["scope"] == scope and bool(r["bn_recal"]) == bn_recal
            and sweep_lib.row_pattern(r) == sweep_lib.UNSTRUCTURED
            and sweep_lib.row_criterion(r) == criterion}


def nm_rows(res: dict, bn_recal: bool = False,
            criterion: str = sweep_lib.MAGNITUDE) -> dict[str, dict]:
    """N:M sweep rows of one criterion by pattern ('2:4', ...)."""
    return {sweep_lib.row_pattern(r): r for r in res["sweep"]
            if bool(r["bn_recal"]) == bn_recal
            and sweep_lib.row_pattern(r) != sweep_lib.UNSTRUCTURED
            and sweep_lib.row_criterion(r) == criterion}


def _retrained(res: dict) -> dict[float, dict]:
    """Unstructured retraining records by sparsity."""
    return {round(r["sparsity"], 6): r for r in res["retrain"]
            if sweep_lib.row_pattern(r) == sweep_lib.UNSTRUCTURED}


def _nm_retrained(res: dict) -> dict[str, dict]:
    """N:M retraining records by pattern."""
    return {sweep_lib.row_pattern(r): r for r in res["retrain"]
            if sweep_lib.row_pattern(r) != sweep_lib.UNSTRUCTURED}


def accuracy_table(summary: dict, scope: str, *, bn_recal: bool = False,
                   split: str = "test", with_retrained: bool = True) -> str:
    """Markdown table: rows = sparsity, columns = methods one-shot (+ retrained)."""
    methods = summary["methods"]
    levels = sorted({round(s, 6) for s in summary["preset"]["sparsities"]})
    cols = []
    for m, res in methods.items():
        cols.append((f"{res['label']}", m, "oneshot"))
        if with_retrained and _retrained(res):
            cols.append((f"{res['label']} + retrain", m, "retrain"))
    head = "| sparsity | " + " | ".join(c[0] for c in cols) + " |"
    rule = "|---:|" + "---:|" * len(cols)
    lines = [head, rule]
    rows = {m: oneshot_rows(res, scope, bn_recal) for m, res in methods.items()}
    retr = {m: _retrained(res) for m, res in methods.items()}
    all_levels = sorted(set(levels) | {s for r in retr.values() for s in r})
    for s in all_levels:
        cells = []
        for _, m, kind in cols:
            if kind == "oneshot":
                r = rows[m].get(s)
                cells.append(pct(r[f"{split}_acc"]) if r else "—")
            else:
                r = retr[m].get(s)
                cells.append(pct(r[f"{split}_acc"]) if r else "—")
        name = f"{100 * s:g}%" + (" (dense)" if s == 0 else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _targets(summary: dict, scope: str, bn_recal: bool = False) -> list[str]:
    """The issue's targets, checked on test accuracy (needs methods 'sfw_ksparse' and 'sgd').

    With ``bn_recal`` the one-shot accuracies (SFW K-sparse and SGD) are those of the sweep's
    BatchNorm re-calibrated rows (weights unchanged), and the drop at 90% is measured from the
    better of the two dense accuracies (without / with re-calibration); SGD + retrain is the
    same in both."""
    ms = summary["methods"]
    if "sfw_ksparse" not in ms or "sgd" not in ms:
        return ["(needs methods 'sfw_ksparse' and 'sgd')"]
    sfw = oneshot_rows(ms["sfw_ksparse"], scope, bn_recal)
    sgd = oneshot_rows(ms["sgd"], scope, bn_recal)
    dense = ms["sfw_ksparse"]["final"]["test_acc"]
    if bn_recal and 0.0 in sfw:
        dense = max(dense, sfw[0.0]["test_acc"])
    oneshot = "one-shot + BN re-cal" if bn_recal else "one-shot"
    out = []
    if 0.9 in sfw and 0.9 in sgd:
        a, b = sfw[0.9]["test_acc"], sgd[0.9]["test_acc"]
        ok1, ok2 = dense - a <= 0.02, a - b >= 0.20
        its = "its better dense" if bn_recal else "its dense"
        out.append(f"- SFW K-sparse {oneshot} at 90%: {pct(a)}% vs {its} {pct(dense)}% "
                   f"(drop {100 * (dense - a):.2f} points; target <= 2): "
                   f"**{'met' if ok1 else 'not met'}**")
        out.append(f"- SFW K-sparse vs SGD {oneshot} at 90%: {pct(a)}% vs {pct(b)}% "
                   f"({100 * (a - b):+.2f} points; target >= +20): "
                   f"**{'met' if ok2 else 'not met'}**")
    retr = _retrained(ms["sgd"])
    if 0.95 in sfw and 0.95 in retr:
        a, b = sfw[0.95]["test_acc"], retr[0.95]["test_acc"]
        out.append(f"- SFW K-sparse {oneshot} at 95% vs SGD + prune + retrain at 95%: "
                   f"{pct(a)}% vs {pct(b)}% (target >=): **{'met' if a >= b else 'not met'}**")
    return out or ["(the sweep has no 90% / 95% levels)"]


NM_CLEAR_MARGIN = 0.05
"""The N:M targets' "above SGD by a clear margin" at 1:4, read as >= 5 points of test accuracy."""


def _level_name(record: dict) -> str:
    """'90%' for an unstructured sweep row / retraining record, the pattern ('2:4') for N:M."""
    name = sweep_lib.level_name(record)
    return name if sweep_lib.row_pattern(record) != sweep_lib.UNSTRUCTURED else name + "%"


def _dense_acc(res: dict, split: str, bn_recal: bool, scope: str) -> float | None:
    """Dense accuracy of a method: its 0% sweep row, else its final / last-epoch number."""
    row = oneshot_rows(res, scope, bn_recal).get(0.0)
    if row is not None:
        return row[f"{split}_acc"]
    if bn_recal:
        return None
    return res["final"]["test_acc"] if split == "test" else res.get("dense_val_acc")


def nm_table(summary: dict, *, bn_recal: bool = False, split: str = "test",
             with_retrained: bool = True) -> str:
    """Markdown table: rows = dense and each N:M pattern, columns = the methods one-shot
    (+ pruned to the pattern and retrained, where a method has such records)."""
    ms = summary["methods"]
    patterns = list(summary["preset"].get("nm_patterns", []))
    main = summary["preset"]["main_scope"]
    cols = []
    for m, res in ms.items():
        cols.append((res["label"], m, "oneshot"))
        if with_retrained and _nm_retrained(res):
            cols.append((f"{res['label']} + retrain", m, "retrain"))
    lines = ["| pattern | kernel sparsity | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    cells = [pct(_dense_acc(ms[m], split, bn_recal, main)) if kind == "oneshot" else "—"
             for _, m, kind in cols]
    lines.append("| dense | 0.0% | " + " | ".join(cells) + " |")
    for pat in patterns:
        rows = {m: nm_rows(res, bn_recal).get(pat) for m, res in ms.items()}
        retr = {m: _nm_retrained(res).get(pat) for m, res in ms.items()}
        cells = []
        for _, m, kind in cols:
            r = rows[m] if kind == "oneshot" else retr[m]
            cells.append(pct(r[f"{split}_acc"]) if r else "—")
        achieved = next((r["sparsity"] for r in rows.values() if r), None)
        lines.append(f"| {pat} | {pct(achieved, 1)}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nm_targets(summary: dict) -> list[str]:
    """The N:M issue's targets on test accuracy (needs 'sgd' and 'sfw_nm24' / 'sfw_nm14'):
    SFW N:M 2:4 one-shot at 2:4 within 1 point of its dense accuracy and above SGD one-shot at
    2:4; SFW N:M 1:4 one-shot at 1:4 above SGD one-shot by ``NM_CLEAR_MARGIN``."""
    ms = summary["methods"]
    if "sgd" not in ms:
        return ["(needs method 'sgd')"]
    sgd = nm_rows(ms["sgd"])
    out = []
    if "sfw_nm24" in ms and "2:4" in sgd and "2:4" in nm_rows(ms["sfw_nm24"]):
        res = ms["sfw_nm24"]
        a, b = nm_rows(res)["2:4"]["test_acc"], sgd["2:4"]["test_acc"]
        dense = res["final"]["test_acc"]
        out.append(f"- SFW N:M 2:4 one-shot at 2:4: {pct(a)}% vs its dense {pct(dense)}% "
                   f"(drop {100 * (dense - a):.2f} points; target <= 1): "
                   f"**{'met' if dense - a <= 0.01 else 'not met'}**")
        out.append(f"- SFW N:M 2:4 vs SGD one-shot at 2:4: {pct(a)}% vs {pct(b)}% "
                   f"({100 * (a - b):+.2f} points; target > 0): "
                   f"**{'met' if a > b else 'not met'}**")
    if "sfw_nm14" in ms and "1:4" in sgd and "1:4" in nm_rows(ms["sfw_nm14"]):
        a, b = nm_rows(ms["sfw_nm14"])["1:4"]["test_acc"], sgd["1:4"]["test_acc"]
        out.append(f"- SFW N:M 1:4 vs SGD one-shot at 1:4: {pct(a)}% vs {pct(b)}% "
                   f"({100 * (a - b):+.2f} points; target >= +{100 * NM_CLEAR_MARGIN:g}, our "
                   f"reading of 'a clear margin'): "
                   f"**{'met' if a - b >= NM_CLEAR_MARGIN else 'not met'}**")
    return out or ["(needs methods 'sfw_nm24' / 'sfw_nm14' and 'sgd' with 2:4 / 1:4 rows)"]


def table_markdown(summary: dict, notes: str = "") -> str:
    """The study's ``table.md``."""
    p = summary["preset"]
    main = p["main_scope"]
    ms = summary["methods"]
    out = [f"# Study `{summary['study']}`: {summary['description']}", "",
           f"Generated {summary['generated']} by `python -m experiments.study --preset "
           f"{summary['study']}`. Accuracies in %. One-shot = global magnitude pruning of the "
           f"final weights, no retraining; scope `{main}` "
           f"({'conv/dense kernels' if main == 'kernels' else 'every tensor'}). "
           f"Tables report the test split; choose hyperparameters on the validation numbers "
           f"(last table, and `summary.json`), never on these.", "",
           f"## Test accuracy vs sparsity (scope `{main}`)", "",
           accuracy_table(summary, main), ""]
    out += ["## Dense accuracy and training cost", "",
            "| method | test acc | val acc | epochs | training time (s) |", "|---|---:|---:|---:|---:|"]
    for m, r in ms.items():
        out.append(f"| {r['label']} | {pct(r['final']['test_acc'])} | {pct(r['dense_val_acc'])} "
                   f"| {r['config']['epochs']} | {r['train_time']:.0f} |")
    retr = [(m, r) for m, r in ms.items() if r["retrain"]]
    if retr:
        out += ["", "## Retraining cost (prune + SGD under the mask)", "",
                "| method | sparsity | one-shot test | retrained test | epochs (% of training) "
                "| steps | lr | wall time (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m, r in retr:
            for x in r["retrain"]:
                out.append(f"| {r['label']} | {_level_name(x)} | "
                           f"{pct(x['oneshot_test_acc'])} | {pct(x['test_acc'])} | "
                           f"{x['epochs']} ({100 * x['retrain_epoch_fraction']:.0f}%) | "
                           f"{x['steps']} | {x['lr']:g} | {x['wall_time']:.0f} |")
    out += ["", "## Targets (issue)", "", *_targets(summary, main), ""]
    if p["bn_recal"]:
        out += ["The same comparisons with BatchNorm re-calibrated after pruning (an extra beyond "
                "the paper: the running statistics are re-estimated on "
                f"{p['recal_batches']} training batches, the weights are not touched):", "",
                *_targets(summary, main, bn_recal=True), ""]
    nm = p.get("nm_patterns", [])
    if nm:
        out += ["## N:M one-shot pruning (test accuracy)", "",
                "In every group of M consecutive input features (axis -2) of each kernel whose "
                "input size M divides, the N entries of largest |w| are kept "
                "(`sfw_jax.pruning.nm_mask`); other tensors stay dense. `kernel sparsity`: "
                "achieved over all kernels (below 1 - N/M when a kernel has no groups).", "",
                nm_table(summary), "", "N:M targets (issue):", "", *_nm_targets(summary), ""]
        if p["bn_recal"]:
            out += ["With BatchNorm re-calibration (extra):", "",
                    nm_table(summary, bn_recal=True, with_retrained=False), ""]
    for scope in p["scopes"]:
        if scope != main:
            out += [f"## Test accuracy vs sparsity, scope `{scope}` (the reference prunes every "
                    f"tensor)" if scope == "all" else f"## Scope `{scope}`", "",
                    accuracy_table(summary, scope, with_retrained=False), ""]
    if p["bn_recal"]:
        out += [f"## With BatchNorm re-calibration (extra, not in the paper), scope `{main}`", "",
                accuracy_table(summary, main, bn_recal=True, with_retrained=False), ""]
    out += [f"## Validation accuracy vs sparsity (scope `{main}`; for hyperparameter choice)",
            "", accuracy_table(summary, main, split="val"), ""]
    if nm:
        out += ["Validation accuracy, N:M one-shot:", "", nm_table(summary, split="val"), ""]
    out += ["## Achieved sparsity", "",
            "Pruned / entries in the scope equals round(s N) / N at every level "
            "(`sparsity` column of each `runs/<method>/sweep.csv`)"
            + ("; N:M rows prune exactly M - N of every M grouped entries." if nm else "."), ""]
    out += ["## Wall time per run", "",
            "| method | training epochs (s) | training call, last (s) | sweep evals (s) | "
            "retraining (s) | run folder |",
            "|---|---:|---:|---:|---:|---|"]
    for m, r in ms.items():
        rt = sum(x["wall_time"] for x in r["retrain"])
        out.append(f"| {r['label']} | {r['train_time']:.0f} | "
                   f"{_seconds(r['final'].get('wall_time'))} | {r['sweep_time']:.0f} | "
                   f"{rt:.0f} | `runs/{m}` |")
    out += ["", "Exact configs: `configs.json` (and each run folder's `config.json`). Figures: "
            "`accuracy_vs_sparsity.png`, " + ("`nm_accuracy.png`, " if nm else "")
            + "`weights_<method>.png`, `weights_cdf.png`; weight counts: `weights_above.md`.", ""]
    if notes:
        out += ["## Notes", "", notes.strip(), ""]
    return "\n".join(out)


def weights_above_markdown(summary: dict) -> str:
    """``weights_above.md``: number of weights with |w| above each threshold, per method."""
    ms = summary["methods"]
    first = next(iter(ms.values()))["weights"]
    ts = first["above"]["thresholds"]
    scope = first["scope"]
    out = [f"# Weights above threshold (`{summary['study']}`, scope `{scope}`)", "",
           "Number (and %) of entries with |w| > t in the final dense weights.", "",
           "| t | " + " | ".join(r["label"] for r in ms.values()) + " |",
           "|---:|" + "---:|" * len(ms)]
    for t in ts:
        cells = []
        for r in ms.values():
            above = r["weights"]["above"]
            g = above["global"]
            n = g.get(t, g.get(str(t), g.get(repr(t))))
            cells.append(f"{n} ({100 * n / max(above['size'], 1):.1f}%)")
        lines_t = f"{t:g}"
        out.append(f"| {lines_t} | " + " | ".join(cells) + " |")
    out.append("| size | " + " | ".join(str(r["weights"]["above"]["size"])
                                       for r in ms.values()) + " |")
    return "\n".join(out) + "\n"


def write_reports(summary: dict, out_dir: str, notes: str = "") -> dict[str, str]:
    """Write table.md, weights_above.md and the figures; returns {name: path}."""
    p = summary["preset"]
    ms = summary["methods"]
    main = p["main_scope"]
    paths = {"table": os.path.join(out_dir, "table.md"),
             "weights_above": os.path.join(out_dir, "weights_above.md"),
             "accuracy_plot": os.path.join(out_dir, "accuracy_vs_sparsity.png"),
             "cdf_plot": os.path.join(out_dir, "weights_cdf.png")}
    run_folder.write_text(paths["table"], table_markdown(summary, notes))
    run_folder.write_text(paths["weights_above"], weights_above_markdown(summary))
    oneshot, recal, retrained, dense = {}, {}, {}, {}
    for m, r in ms.items():
        rows = sorted(oneshot_rows(r, main).items())
        oneshot[r["label"]] = ([s for s, _ in rows], [x["test_acc"] for _, x in rows])
        rows = sorted(oneshot_rows(r, main, bn_recal=True).items())
        if p["bn_recal"] and rows:
            recal[r["label"]] = ([s for s, _ in rows], [x["test_acc"] for _, x in rows])
        if _retrained(r):
            rr = sorted(_retrained(r).items())
            retrained[r["label"]] = ([s for s, _ in rr], [x["test_acc"] for _, x in rr])
        dense[r["label"]] = r["final"]["test_acc"]
    arch = next(iter(ms.values()))["config"]
    plots.plot_accuracy_vs_sparsity(
        paths["accuracy_plot"], oneshot, retrained=retrained, recalibrated=recal, dense=dense,
        title=f"{summary['study']}: {arch['arch']} on {arch['dataset']}, one-shot global "
              f"magnitude pruning (scope {main})")
    for m, r in ms.items():
        paths[f"weights_{m}"] = plots.plot_weight_distribution(
            os.path.join(out_dir, f"weights_{m}.png"), r["weights"]["hist"], r["weights"]["cdf"],
            title=f"{r['label']}: final weight magnitudes (scope {r['weights']['scope']})")
    plots.plot_cdf_comparison(paths["cdf_plot"],
                              {r["label"]: r["weights"]["cdf"] for r in ms.values()},
                              title=f"{summary['study']}: CDF of |w|")
    if p.get("nm_patterns"):
        paths["nm_plot"] = plots.plot_nm_accuracy(
            os.path.join(out_dir, "nm_accuracy.png"),
            {r["label"]: {pat: x["test_acc"] for pat, x in nm_rows(r).items()}
             for r in ms.values()},
            retrained={r["label"]: {pat: x["test_acc"] for pat, x in _nm_retrained(r).items()}
                       for r in ms.values() if _nm_retrained(r)},
            dense=dense, patterns=p["nm_patterns"],
            title=f"{summary['study']}: {arch['arch']} on {arch['dataset']}, one-shot N:M "
                  f"magnitude pruning")
    return paths
