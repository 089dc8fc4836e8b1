"""``report.md`` of a device job (:mod:`benchmarks.suite.job`), rendered from its summary alone
(accuracies in %, as in ``summary.json``)."""

from __future__ import annotations

from typing import Any, Mapping

from benchmarks.suite.report import md_table


def _num(x: Any, digits: int = 2) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{x:.{digits}f}"


def _accuracy_rows(s: Mapping[str, Any]) -> list[str]:
    acc, recal = s.get("accuracy") or {}, s.get("accuracy_bn_recal") or {}
    retrain = s.get("retrain") or {}
    levels = sorted({float(p) for d in (acc, recal, retrain) for p in d})
    if not levels:
        return []
    head = ["sparsity %", "one-shot", "one-shot + BN re-cal"]
    if "retrain" in s:
        head.append(f"SGD + {s.get('retrain_epochs', '?')} epochs retraining")
    rows = []
    for p in levels:
        key = f"{p:g}"
        row = [key, _num(acc.get(key)), _num(recal.get(key))]
        if "retrain" in s:
            row.append(_num(retrain.get(key)))
        rows.append(row)
    nm = s.get("nm")
    if nm:
        rows.append([f"{nm['pattern']} (N:M)", _num(nm.get("accuracy")),
                     _num(nm.get("accuracy_bn_recal")), *["-"] * (len(head) - 3)])
    return (["", f"Test accuracy (%) after one-shot global magnitude pruning of the "
                 f"{s.get('scope')} scope (no retraining; BatchNorm statistics as trained or "
                 f"re-estimated on training batches):", ""] + md_table(head, rows))


def _layerwise(s: Mapping[str, Any]) -> list[str]:
    lw = s.get("layerwise_sparsity")
    if not lw:
        return []
    rows = [(r["path"], "x".join(map(str, r["shape"])), r["size"],
             _num(100 * r["sparsity"], 1)) for r in lw["layers"]]
    return (["", f"Layerwise sparsity (%) of the global {lw['percent']} % mask (scope "
                 f"{lw['scope']}; total {_num(100 * lw['total'], 2)} %):", ""]
            + md_table(["tensor", "shape", "size", "pruned %"], rows))


def render_job_markdown(s: Mapping[str, Any]) -> str:
    """The report of one job summary: status, timing, the accuracy table, layerwise sparsity."""
    first = s.get("first_epoch") or {}
    est = s.get("estimate") or {}
    data = s.get("data") or {}
    out = [f"# {s.get('job')}: {s.get('label')} ({s.get('plan')} plan)", "",
           f"- status: **{s.get('status')}** (stage: {s.get('stage')}); wall {s.get('wall_s')} s "
           f"of a budget of {s.get('budget_s')} s; `{s.get('command')}` at {s.get('started')}, "
           f"git {s.get('git')}",
           f"- preset `{s.get('preset')}`, overrides {dict(s.get('overrides') or {})}"
           + (f", plan overrides {dict(s['plan_overrides'])}" if s.get("plan_overrides") else ""),
           f"- device: {s.get('device')}",
           f"- data: {data.get('source')} `{data.get('path')}` ({data.get('trained_on')} "
           f"training / {data.get('test')} test images, decoded in {data.get('decode_s')} s)",
           f"- epochs run: {s.get('epochs')} of {(s.get('config') or {}).get('epochs')}; "
           f"seconds per epoch: {s.get('seconds_per_epoch')} (first epoch "
           f"{first.get('first_epoch_s')} s, of which {first.get('compile_in_first_epoch_s')} s "
           f"compiling; setup {first.get('setup_s')} s)"]
    if est:
        out.append(f"- estimate after epoch 1: {est.get('total_s')} s in all (elapsed "
                   f"{est.get('elapsed_s')}, training {est.get('training_s')}, evaluation "
                   f"{est.get('evaluation_s')}, retraining {est.get('retraining_s')})")
    if s.get("dense_test_acc") is not None:
        out.append(f"- dense test accuracy: {_num(s['dense_test_acc'])} %")
    for key in ("reason", "error"):
        if s.get(key):
            out.append(f"- {key}: `{str(s[key]).splitlines()[0][:300]}`")
    if s.get("retrain_skipped"):
        out.append(f"- retraining skipped (budget) at: {s['retrain_skipped']} %")
    out += _accuracy_rows(s)
    out += _layerwise(s)
    return "\n".join(out) + "\n"
