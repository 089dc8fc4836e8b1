"""The whole pruning study of one architecture and dataset (section 5 of Lu et al., 2022).

``python -m experiments.study --preset NAME [--out results/NAME] [--methods M ...]
[--scopes kernels all] [--nm 2:4 1:4] [--set KEY=VALUE ...] [--no-progress]``
(``--list-presets`` lists the grids of ``experiments.study_presets``; ``--set epochs=6``
overrides a ``TrainConfig`` field of every method).

For each method of the preset (SFW K-sparse, SFW L2, SGD, optionally SFW + init):

1. train it dense (``sfw_jax.train.train``) into ``<out>/runs/<method>/``; a run whose
   ``final.json`` exists is not redone, one with checkpoints but no ``final.json`` is resumed;
2. prune it one-shot at every sparsity (``experiments.prune_sweep``; scopes 'kernels' and the
   reference's 'all'; optionally the main scope also with BatchNorm re-calibration) and to
   every N:M pattern of the preset's ``nm_patterns`` (or ``--nm``)
   -> ``runs/<method>/sweep.json``;
3. for the preset's ``retrain_methods`` (SGD at least): prune + retrain under the mask
   (``experiments.retrain``), and for its ``nm_retrain_methods`` the same under N:M masks
   -> ``runs/<method>/retrain.json``;
4. weight-magnitude statistics (counts above 10, 1, ..., 1e-10; histogram; CDF).

Then it writes ``<out>/table.md`` (test accuracy per method per sparsity, one-shot and
retrained; dense accuracies; retraining cost; the issue's targets; the N:M table and targets;
wall times), ``weights_above.md``, ``accuracy_vs_sparsity.png``, ``nm_accuracy.png`` (with N:M
patterns), ``weights_<method>.png``,
``weights_cdf.png``, ``configs.json`` (the exact resolved configs) and ``summary.json``
(everything). Every step's result is on disk before the next starts and is reused on a re-run,
so an interrupted study resumes where it stopped and a finished one only re-draws its reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from experiments import _runs, plots
from experiments import prune_sweep as sweep_lib
from experiments import retrain as retrain_lib
from experiments.study_presets import StudyPreset, get_study_preset, study_preset_names
from sfw_jax import config as config_lib
from sfw_jax import train as train_lib
from sfw_jax.checkpoint import has_checkpoint
from sfw_jax.config import TrainConfig

HIST_EDGES = tuple(np.round(np.arange(-10.0, 1.0001, 0.2), 6).tolist())
"""Shared log10|w| histogram bin edges (0.2 decades from 1e-10 to 10) for all methods."""


def _weight_include(scope: str) -> Any:
    """``sfw_jax.weight_stats`` selector of a pruning scope (there None means every leaf)."""
    _runs.scope_include(scope)
    return None if scope == "all" else (lambda path, leaf: jnp.ndim(leaf) >= 2)


def check_methods(preset: StudyPreset, methods: Sequence[str] | None) -> list[str]:
    """The methods to run: the preset's defaults, or ``methods`` (validated, order kept)."""
    if methods is None:
        return list(preset.methods)
    allowed = preset.all_methods()
    bad = [m for m in methods if m not in allowed]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty list from {sorted(allowed)} for study "
                         f"preset {preset.name!r}, got {list(methods)!r}")
    return list(dict.fromkeys(methods))


def _check_existing(cfg: TrainConfig, run_dir: str) -> None:
    """ValueError if ``run_dir`` holds a run of a different config (a stale study folder)."""
    path = os.path.join(run_dir, train_lib.CONFIG_FILE)
    if not os.path.isfile(path):
        return
    saved = config_lib.load_json(path).to_dict()
    now = config_lib.validate(cfg).to_dict()
    diff = {k: (saved.get(k), v) for k, v in now.items()
            if k not in train_lib.RESUME_MAY_DIFFER and saved.get(k) != v}
    if diff:
        pretty = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{run_dir} holds a run with a different config ({pretty}); choose "
                         f"another --out or delete that run")


def train_method(cfg: TrainConfig, dataset: Any) -> dict:
    """Train ``cfg`` unless its ``out_dir`` holds a finished run; resume a partial one.

    Returns ``{'status': 'skipped' | 'resumed' | 'trained', 'seconds': this call's time}``.
    """
    run_dir = cfg.out_dir
    _check_existing(cfg, run_dir)
    if _runs.is_finished(run_dir):
        return {"status": "skipped", "seconds": 0.0}
    resume = has_checkpoint(os.path.join(run_dir, train_lib.CHECKPOINT_DIR))
    t0 = time.time()
    train_lib.train(cfg.replace(resume=resume), dataset)
    return {"status": "resumed" if resume else "trained", "seconds": time.time() - t0}


def weight_statistics(params: Any, scope: str) -> dict:
    """Counts above thresholds, log10 histogram and CDF of ``params`` over ``scope``."""
    from sfw_jax import weight_stats

    inc = _weight_include(scope)
    return {"scope": scope,
            "above": weight_stats.count_above_thresholds(params, include=inc),
            "hist": weight_stats.magnitude_histogram(params, list(HIST_EDGES), log=True,
                                                     include=inc),
            "cdf": weight_stats.magnitude_cdf(params, include=inc)}


def _strip_per_leaf(stats: dict) -> dict:
    """The global parts of :func:`weight_statistics` (per-leaf data stays in the run folder)."""
    return {"scope": stats["scope"],
            "above": {k: v for k, v in stats["above"].items() if k != "per_leaf"},
            "hist": {k: v for k, v in stats["hist"].items() if k != "per_leaf"},
            "cdf": {k: v for k, v in stats["cdf"].items() if k != "per_leaf"}}


def run_study(preset: StudyPreset, out_dir: str, *, methods: Sequence[str] | None = None,
              scopes: Sequence[str] | None = None, nm: Sequence[str] | None = None,
              progress: bool = True) -> dict:
    """Run (or resume) the study; write the reports; return the summary dict.

    Args:
      preset: the study grid.
      out_dir: the study folder (``runs/<method>/`` per method, reports at the top).
      methods: subset of ``preset.all_methods()`` (default: ``preset.methods``).
      scopes: pruning scopes of the sweep (default ``preset.scopes``; must include
        ``preset.main_scope``).
      nm: N:M patterns of the one-shot N:M pruning (default ``preset.nm_patterns``).
      progress: progress bars and per-epoch log lines.
    """
    t_start = time.time()
    methods = check_methods(preset, methods)
    patterns = sweep_lib.check_patterns(preset.nm_patterns if nm is None else nm)
    nm_retrain = sweep_lib.check_patterns(preset.nm_retrain_patterns, "nm_retrain_patterns")
    scopes = sweep_lib.check_scopes(list(preset.scopes) if scopes is None else scopes)
    if preset.main_scope not in scopes:
        raise ValueError(f"scopes must include the preset's main scope "
                         f"{preset.main_scope!r}, got {scopes!r}")
    configs = {m: preset.method_config(m, os.path.join(out_dir, "runs", m)).replace(
        progress=progress and preset.base_config().progress) for m in methods}
    for m, cfg in configs.items():
        try:
            config_lib.validate(cfg)
        except ValueError as e:
            raise ValueError(f"method {m!r}: {e}") from e
        if cfg.keep_checkpoints < 1:
            raise ValueError(f"method {m!r}: keep_checkpoints must be >= 1 (the study reloads "
                             f"the final weights from the checkpoint), got "
                             f"{cfg.keep_checkpoints}")
    os.makedirs(out_dir, exist_ok=True)
    _runs.write_json(os.path.join(out_dir, "configs.json"),
                     {m: config_lib.validate(c).to_dict() for m, c in configs.items()})

    datasets: list[tuple[TrainConfig, Any]] = []

    def dataset_for(cfg: TrainConfig) -> Any:
        for c, ds in datasets:
            if _runs.same_data(c, cfg):
                return ds
        ds = _runs.load_run_dataset(cfg)
        datasets.append((cfg, ds))
        return ds

    results: dict[str, dict] = {}
    for m in methods:
        cfg = configs[m]
        run_dir = cfg.out_dir
        label = preset.label(m)
        if progress:
            print(f"== {label} ({m}) -> {run_dir}", file=sys.stderr)
        work = {}
        work["train"] = train_method(cfg, None if _runs.is_finished(run_dir)
                                     else dataset_for(cfg))
        run = _runs.load_trained(run_dir, dataset_for(cfg))
        t0 = time.time()
        rows = sweep_lib.sweep(run, preset.sparsities, scopes=scopes, bn_recal=preset.bn_recal,
                               recal_batches=preset.recal_batches,     # re-cal: main scope only
                               recal_scopes=[sc for sc in scopes if sc == preset.main_scope],
                               nm=patterns, cache_path=os.path.join(run_dir, "sweep.json"),
                               progress=progress)
        sweep_lib.write_csv(rows, os.path.join(run_dir, "sweep.csv"))
        work["sweep_seconds"] = time.time() - t0
        retrained = []
        levels = preset.retrain_sparsities if m in preset.retrain_methods else ()
        nm_levels = nm_retrain if m in preset.nm_retrain_methods else ()
        if levels or nm_levels:
            t0 = time.time()
            retrained = retrain_lib.retrain_many(
                run, levels, nm=nm_levels, out_path=os.path.join(run_dir, "retrain.json"),
                progress=progress, epochs=preset.retrain_epochs, lr=preset.retrain_lr,
                scope=preset.main_scope)
            work["retrain_seconds"] = time.time() - t0
        stats_path = os.path.join(run_dir, "weights.json")
        if os.path.isfile(stats_path):
            stats = _runs.read_json(stats_path)
        else:
            stats = weight_statistics(run.params, preset.main_scope)
            _runs.write_json(stats_path, stats)
        results[m] = {
            "label": label, "config": run.config.to_dict(), "run_dir": run_dir,
            "final": run.final, "history": run.history,
            "dense_val_acc": run.history[-1].get("val_acc") if run.history else None,
            "train_time": retrain_lib.run_train_time(run),
            "sweep": rows, "sweep_time": float(sum(r.get("eval_time", 0.0) for r in rows)),
            "retrain": retrained, "weights": _strip_per_leaf(stats), "this_invocation": work,
        }
    summary = {
        "study": preset.name, "description": preset.description,
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "preset": {"base_preset": preset.base_preset, "base": dict(preset.base),
                   "methods": {m: dict(preset.all_methods()[m]) for m in methods},
                   "sparsities": list(preset.sparsities), "scopes": scopes,
                   "main_scope": preset.main_scope, "bn_recal": preset.bn_recal,
                   "recal_batches": preset.recal_batches,
                   "retrain_methods": [m for m in preset.retrain_methods if m in methods],
                   "retrain_sparsities": list(preset.retrain_sparsities),
                   "retrain_epochs": preset.retrain_epochs, "retrain_lr": preset.retrain_lr,
                   "nm_patterns": patterns,
                   "nm_retrain_methods": [m for m in preset.nm_retrain_methods if m in methods],
                   "nm_retrain_patterns": nm_retrain},
        "methods": results,
        "wall_time_this_invocation": time.time() - t_start,
    }
    write_reports(summary, out_dir, notes=preset.notes)
    summary["wall_time_this_invocation"] = time.time() - t_start
    _runs.write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.{digits}f}"


def _rows(res: dict, scope: str, bn_recal: bool = False) -> dict[float, dict]:
    """Unstructured sweep rows of one scope by target sparsity."""
    return {round(r["target_sparsity"], 6): r for r in res["sweep"]
            if r["scope"] == scope and bool(r["bn_recal"]) == bn_recal
            and sweep_lib.row_pattern(r) == sweep_lib.UNSTRUCTURED}


def _nm_rows(res: dict, bn_recal: bool = False) -> dict[str, dict]:
    """N:M sweep rows by pattern ('2:4', ...)."""
    return {sweep_lib.row_pattern(r): r for r in res["sweep"]
            if bool(r["bn_recal"]) == bn_recal
            and sweep_lib.row_pattern(r) != sweep_lib.UNSTRUCTURED}


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
    rows = {m: _rows(res, scope, bn_recal) for m, res in methods.items()}
    retr = {m: _retrained(res) for m, res in methods.items()}
    all_levels = sorted(set(levels) | {s for r in retr.values() for s in r})
    for s in all_levels:
        cells = []
        for _, m, kind in cols:
            if kind == "oneshot":
                r = rows[m].get(s)
                cells.append(_pct(r[f"{split}_acc"]) if r else "—")
            else:
                r = retr[m].get(s)
                cells.append(_pct(r[f"{split}_acc"]) if r else "—")
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
    sfw, sgd = _rows(ms["sfw_ksparse"], scope, bn_recal), _rows(ms["sgd"], scope, bn_recal)
    dense = ms["sfw_ksparse"]["final"]["test_acc"]
    if bn_recal and 0.0 in sfw:
        dense = max(dense, sfw[0.0]["test_acc"])
    oneshot = "one-shot + BN re-cal" if bn_recal else "one-shot"
    out = []
    if 0.9 in sfw and 0.9 in sgd:
        a, b = sfw[0.9]["test_acc"], sgd[0.9]["test_acc"]
        ok1, ok2 = dense - a <= 0.02, a - b >= 0.20
        its = "its better dense" if bn_recal else "its dense"
        out.append(f"- SFW K-sparse {oneshot} at 90%: {_pct(a)}% vs {its} {_pct(dense)}% "
                   f"(drop {100 * (dense - a):.2f} points; target <= 2): "
                   f"**{'met' if ok1 else 'not met'}**")
        out.append(f"- SFW K-sparse vs SGD {oneshot} at 90%: {_pct(a)}% vs {_pct(b)}% "
                   f"({100 * (a - b):+.2f} points; target >= +20): "
                   f"**{'met' if ok2 else 'not met'}**")
    retr = _retrained(ms["sgd"])
    if 0.95 in sfw and 0.95 in retr:
        a, b = sfw[0.95]["test_acc"], retr[0.95]["test_acc"]
        out.append(f"- SFW K-sparse {oneshot} at 95% vs SGD + prune + retrain at 95%: "
                   f"{_pct(a)}% vs {_pct(b)}% (target >=): **{'met' if a >= b else 'not met'}**")
    return out or ["(the sweep has no 90% / 95% levels)"]


NM_CLEAR_MARGIN = 0.05
"""The N:M targets' "above SGD by a clear margin" at 1:4, read as >= 5 points of test accuracy."""


def _level_name(record: dict) -> str:
    """'90%' for an unstructured sweep row / retraining record, the pattern ('2:4') for N:M."""
    pattern = sweep_lib.row_pattern(record)
    if pattern != sweep_lib.UNSTRUCTURED:
        return pattern
    return f"{100 * record.get('sparsity', record.get('target_sparsity')):g}%"


def _dense_acc(res: dict, split: str, bn_recal: bool, scope: str) -> float | None:
    """Dense accuracy of a method: its 0% sweep row, else its final / last-epoch number."""
    row = _rows(res, scope, bn_recal).get(0.0)
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
    cells = [_pct(_dense_acc(ms[m], split, bn_recal, main)) if kind == "oneshot" else "—"
             for _, m, kind in cols]
    lines.append("| dense | 0.0% | " + " | ".join(cells) + " |")
    for pat in patterns:
        rows = {m: _nm_rows(res, bn_recal).get(pat) for m, res in ms.items()}
        retr = {m: _nm_retrained(res).get(pat) for m, res in ms.items()}
        cells = []
        for _, m, kind in cols:
            r = rows[m] if kind == "oneshot" else retr[m]
            cells.append(_pct(r[f"{split}_acc"]) if r else "—")
        achieved = next((r["sparsity"] for r in rows.values() if r), None)
        lines.append(f"| {pat} | {_pct(achieved, 1)}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nm_targets(summary: dict) -> list[str]:
    """The N:M issue's targets on test accuracy (needs 'sgd' and 'sfw_nm24' / 'sfw_nm14'):
    SFW N:M 2:4 one-shot at 2:4 within 1 point of its dense accuracy and above SGD one-shot at
    2:4; SFW N:M 1:4 one-shot at 1:4 above SGD one-shot by ``NM_CLEAR_MARGIN``."""
    ms = summary["methods"]
    if "sgd" not in ms:
        return ["(needs method 'sgd')"]
    sgd = _nm_rows(ms["sgd"])
    out = []
    if "sfw_nm24" in ms and "2:4" in sgd and "2:4" in _nm_rows(ms["sfw_nm24"]):
        res = ms["sfw_nm24"]
        a, b = _nm_rows(res)["2:4"]["test_acc"], sgd["2:4"]["test_acc"]
        dense = res["final"]["test_acc"]
        out.append(f"- SFW N:M 2:4 one-shot at 2:4: {_pct(a)}% vs its dense {_pct(dense)}% "
                   f"(drop {100 * (dense - a):.2f} points; target <= 1): "
                   f"**{'met' if dense - a <= 0.01 else 'not met'}**")
        out.append(f"- SFW N:M 2:4 vs SGD one-shot at 2:4: {_pct(a)}% vs {_pct(b)}% "
                   f"({100 * (a - b):+.2f} points; target > 0): "
                   f"**{'met' if a > b else 'not met'}**")
    if "sfw_nm14" in ms and "1:4" in sgd and "1:4" in _nm_rows(ms["sfw_nm14"]):
        a, b = _nm_rows(ms["sfw_nm14"])["1:4"]["test_acc"], sgd["1:4"]["test_acc"]
        out.append(f"- SFW N:M 1:4 vs SGD one-shot at 1:4: {_pct(a)}% vs {_pct(b)}% "
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
        out.append(f"| {r['label']} | {_pct(r['final']['test_acc'])} | {_pct(r['dense_val_acc'])} "
                   f"| {r['config']['epochs']} | {r['train_time']:.0f} |")
    retr = [(m, r) for m, r in ms.items() if r["retrain"]]
    if retr:
        out += ["", "## Retraining cost (prune + SGD under the mask)", "",
                "| method | sparsity | one-shot test | retrained test | epochs (% of training) "
                "| steps | lr | wall time (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m, r in retr:
            for x in r["retrain"]:
                out.append(f"| {r['label']} | {_level_name(x)} | "
                           f"{_pct(x['oneshot_test_acc'])} | {_pct(x['test_acc'])} | "
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
                   f"{r['final'].get('wall_time', float('nan')):.0f} | {r['sweep_time']:.0f} | "
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
    _runs.write_text(paths["table"], table_markdown(summary, notes))
    _runs.write_text(paths["weights_above"], weights_above_markdown(summary))
    oneshot, recal, retrained, dense = {}, {}, {}, {}
    for m, r in ms.items():
        rows = sorted(_rows(r, main).items())
        oneshot[r["label"]] = ([s for s, _ in rows], [x["test_acc"] for _, x in rows])
        rows = sorted(_rows(r, main, bn_recal=True).items())
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
            {r["label"]: {pat: x["test_acc"] for pat, x in _nm_rows(r).items()}
             for r in ms.values()},
            retrained={r["label"]: {pat: x["test_acc"] for pat, x in _nm_retrained(r).items()}
                       for r in ms.values() if _nm_retrained(r)},
            dense=dense, patterns=p["nm_patterns"],
            title=f"{summary['study']}: {arch['arch']} on {arch['dataset']}, one-shot N:M "
                  f"magnitude pruning")
    return paths


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.study",
                                description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--preset", help=f"study grid: one of {study_preset_names()}")
    p.add_argument("--list-presets", action="store_true", help="list the study presets and exit")
    p.add_argument("--out", default=None, help="study folder (default results/<preset>)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to run (default: the preset's; e.g. add sfw_init)")
    p.add_argument("--scopes", nargs="+", choices=_runs.SCOPES, default=None,
                   help="pruning scopes of the sweep (default: the preset's)")
    p.add_argument("--nm", nargs="+", default=None, metavar="N:M",
                   help="one-shot N:M pruning patterns, e.g. 2:4 1:4 (default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field for every method (JSON value), e.g. "
                        "--set epochs=6; wins over the preset's per-method values too (--set "
                        "tau=7 changes every SFW method's tau); repeatable")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``['epochs=6', 'tau=10.0']`` -> ``{'epochs': 6, 'tau': 10.0}`` (values parsed as JSON,
    else kept as strings); ValueError naming a malformed item or an unknown field."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in config_lib.field_names():
            raise ValueError(f"--set {item!r}: {key!r} is not a TrainConfig field; allowed: "
                             f"{config_lib.field_names()}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def apply_overrides(preset: StudyPreset, overrides: Mapping[str, Any]) -> StudyPreset:
    """``preset`` with ``overrides`` (``TrainConfig`` fields) applied to the base config and on
    top of every method's own overrides, so that they win for every method."""
    if not overrides:
        return preset

    def over(methods):
        return {m: {**dict(o), **overrides} for m, o in methods.items()}

    return dataclasses.replace(preset, base={**preset.base, **overrides},
                               methods=over(preset.methods),
                               optional_methods=over(preset.optional_methods))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        from experiments.study_presets import STUDY_PRESETS
        for name, pr in sorted(STUDY_PRESETS.items()):
            print(f"{name}: {pr.description}; methods {list(pr.methods)} "
                  f"(optional {list(pr.optional_methods)})")
        return 0
    if args.preset is None:
        parser.error(f"--preset is required: one of {study_preset_names()}")
    try:
        preset = get_study_preset(args.preset)
        preset = apply_overrides(preset, parse_overrides(args.overrides))
        methods = check_methods(preset, args.methods)
        for m in methods:
            config_lib.validate(preset.method_config(m, "x"))
        patterns = None if args.nm is None else sweep_lib.check_patterns(args.nm, "--nm")
    except ValueError as e:
        parser.error(str(e))
    out = args.out or os.path.join("results", preset.name)
    summary = run_study(preset, out, methods=methods, scopes=args.scopes, nm=patterns,
                        progress=not args.no_progress)
    print(table_markdown(summary, ""))
    print(f"wrote {out}/table.md, summary.json and figures "
          f"({summary['wall_time_this_invocation']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
