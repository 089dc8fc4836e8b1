"""The paper-scale CIFAR-10 table: every job of :data:`experiments.paper_jobs.QUEUE` side by side.

``python -m experiments.paper_table [DIR]`` (default ``results/paper-cifar10``) reads
``DIR/<job>/summary.json`` of each job (written by ``python -m benchmarks.device_job``) and
writes ``DIR/table.md`` and ``DIR/accuracy_vs_sparsity.png``:

* the table has one column per job in queue order (a job without a summary is a column saying
  "not run yet") and one row per sparsity of the one-shot sweep, the same rows after BatchNorm
  re-calibration, the 2:4 rows and the SGD + retraining rows, test accuracy in %; above them
  each job's status, epochs, seconds per epoch and device;
* under it the issue's targets, each computed as met / missed from jobs whose status is ``ok``
  (else "not run yet", or the job's status): ``r18-sfw`` dense at most 1.0 point below
  ``r18-sgd`` dense; ``r18-sfw`` one-shot at 90 % at most 0.5 below its own dense, at 95 % at
  most 2.0 below; then, without a target, SGD + retraining against SFW without retraining at
  each retrained level;
* the plot draws every job with an accuracy curve: one-shot (solid), + BatchNorm re-calibration
  (dash-dotted), SGD + retraining (dashed), dense (dotted); with no such job no plot is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Mapping, Sequence

from experiments.paper_jobs import (JOBS, NM_PATTERN, QUEUE, RESULTS_DIR, RETRAIN_PERCENTS,
                                    SPARSITY_PERCENTS, SUMMARY_FILE, TABLE_FILE, TABLE_PLOT)
from sfw_jax._cli import ArgumentParser, add_debug_flag, user_errors
from sfw_jax.training import run_folder

NOT_RUN = "not run yet"
TARGETS = (
    # (text, job, level, reference job, reference level, max points below the reference)
    ("r18-sfw dense within 1.0 point of r18-sgd dense", "r18-sfw", "0", "r18-sgd", "0", 1.0),
    ("r18-sfw one-shot at 90 % within 0.5 of its own dense", "r18-sfw", "90", "r18-sfw", "0",
     0.5),
    ("r18-sfw one-shot at 95 % within 2.0 of its own dense", "r18-sfw", "95", "r18-sfw", "0",
     2.0),
)
"""The issue's targets: ``job`` at ``level`` at most the given points below ``reference`` at
``reference level`` (one-shot test accuracy, %)."""


def read_summaries(root: str) -> dict[str, dict | None]:
    """``{job: summary or None}`` for every job of the queue, in queue order."""
    out: dict[str, dict | None] = {}
    for job in QUEUE:
        path = os.path.join(root, job, SUMMARY_FILE)
        out[job] = run_folder.read_json(path) if os.path.isfile(path) else None
    return out


def _cell(x: Any) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{x:.2f}"


def _status(s: Mapping | None) -> str:
    if s is None:
        return NOT_RUN
    return str(s.get("status")) + ("" if s.get("status") == "ok" else
                                   f" (stage: {s.get('stage')})")


def table_rows(summaries: Mapping[str, Mapping | None]) -> list[tuple[str, list[str]]]:
    """(row label, one cell per job) of the table (see the module docstring)."""
    ss = list(summaries.values())
    get = lambda key, p: [_cell((s or {}).get(key, {}).get(p)) for s in ss]  # noqa: E731
    rows = [("status", [_status(s) for s in ss]),
            ("epochs", [str(s.get("epochs")) if s else "—" for s in ss]),
            ("seconds per epoch", [_cell((s or {}).get("seconds_per_epoch")) for s in ss]),
            ("device", [str(s.get("device")) if s else "—" for s in ss])]
    rows += [(f"{p} %" + (" (dense)" if p == 0 else ""), get("accuracy", f"{p:g}"))
             for p in SPARSITY_PERCENTS]
    rows += [(f"{p} % + BN re-cal", get("accuracy_bn_recal", f"{p:g}"))
             for p in SPARSITY_PERCENTS]
    nm = [(s or {}).get("nm") or {} for s in ss]
    rows += [(f"{NM_PATTERN} one-shot", [_cell(n.get("accuracy")) for n in nm]),
             (f"{NM_PATTERN} + BN re-cal", [_cell(n.get("accuracy_bn_recal")) for n in nm])]
    rows += [(f"{p} % SGD + retrain", get("retrain", f"{p:g}")) for p in RETRAIN_PERCENTS]
    rows.append(("retraining epochs per level",
                 [str(s["retrain_epochs"]) if s and "retrain_epochs" in s else "—"
                  for s in ss]))
    return rows


def _accuracy(summaries: Mapping[str, Mapping | None], job: str, key: str,
              level: str) -> tuple[float | None, str]:
    """(value, why it is missing) of a finished job's ``key`` at ``level``."""
    s = summaries.get(job)
    if s is None:
        return None, f"{job} {NOT_RUN}"
    if s.get("status") != "ok":
        return None, f"{job} {s.get('status')}"
    v = (s.get(key) or {}).get(level)
    return (v, "") if isinstance(v, (int, float)) else (None, f"{job} has no {key} at {level} %")


def target_lines(summaries: Mapping[str, Mapping | None]) -> list[str]:
    """One line per target (met / missed / why not computed), then SGD + retraining against
    SFW without retraining."""
    out = []
    for text, job, level, ref, ref_level, most in TARGETS:
        a, why_a = _accuracy(summaries, job, "accuracy", level)
        b, why_b = _accuracy(summaries, ref, "accuracy", ref_level)
        if a is None or b is None:
            out.append(f"- {text}: **{NOT_RUN}** ({'; '.join(w for w in (why_a, why_b) if w)})")
            continue
        below = round(b - a, 4)           # accuracies have 2 decimals: no float noise
        out.append(f"- {text}: {a:.2f} vs {b:.2f} ({below:.2f} points below; at most {most}): "
                   f"**{'met' if below <= most else 'missed'}**")
    for p in RETRAIN_PERCENTS:
        a, why_a = _accuracy(summaries, "r18-sgd", "retrain", f"{p}")
        b, why_b = _accuracy(summaries, "r18-sfw", "accuracy", f"{p}")
        if a is None or b is None:
            out.append(f"- at {p} %: r18-sgd + retraining vs r18-sfw one-shot: {NOT_RUN} "
                       f"({'; '.join(w for w in (why_a, why_b) if w)})")
        else:
            out.append(f"- at {p} %: r18-sgd + retraining {a:.2f} vs r18-sfw one-shot (no "
                       f"retraining) {b:.2f} ({b - a:+.2f} points for SFW)")
    return out


def table_markdown(summaries: Mapping[str, Mapping | None], plot: str | None) -> str:
    """``table.md``: the table, the targets, the plot."""
    head = ["row"] + [j if summaries[j] is not None else f"{j} ({NOT_RUN})" for j in summaries]
    lines = ["# CIFAR-10 at full length: the paper-scale jobs", "",
             "Made by `python -m experiments.paper_table results/paper-cifar10` from each job's "
             "`summary.json` (`python -m benchmarks.device_job JOB`; setup and commands in "
             "README.md). Test accuracy (%) on the 10,000 test images after one-shot global "
             "magnitude pruning of the conv and dense kernels, no retraining unless a row says "
             "so; BN re-cal: BatchNorm statistics re-estimated on training batches after "
             "pruning (an extra beyond the paper).", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in table_rows(summaries)]
    lines += ["", "Jobs: " + "; ".join(f"`{j}` {JOBS[j].label}" for j in summaries) + ".", "",
              "## Targets", "", *target_lines(summaries), ""]
    lines += ([f"![accuracy vs sparsity]({plot})"] if plot else
              ["No job has an accuracy curve yet: no plot."])
    return "\n".join(lines) + "\n"


def _curve(acc: Mapping[str, float]) -> tuple[list[float], list[float]]:
    items = sorted((float(p), a) for p, a in acc.items())
    return [p / 100 for p, _ in items], [a / 100 for _, a in items]


def write_plot(summaries: Mapping[str, Mapping | None], path: str) -> bool:
    """The accuracy-vs-sparsity plot of every job with an accuracy curve; False (nothing
    written) when there is none."""
    from experiments import plots

    have = {j: s for j, s in summaries.items() if s and s.get("accuracy")}
    if not have:
        return False
    plots.plot_accuracy_vs_sparsity(
        path, {j: _curve(s["accuracy"]) for j, s in have.items()},
        recalibrated={j: _curve(s["accuracy_bn_recal"]) for j, s in have.items()
                      if s.get("accuracy_bn_recal")},
        retrained={j: _curve(s["retrain"]) for j, s in have.items() if s.get("retrain")},
        dense={j: s["accuracy"]["0"] / 100 for j, s in have.items() if "0" in s["accuracy"]},
        title="CIFAR-10, full-length jobs: one-shot global magnitude pruning of the kernels")
    return True


def write_table(root: str) -> dict[str, str]:
    """Write ``table.md`` (and the plot when a job has a curve) into ``root``; returns the
    files written."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"DIR {root!r} is not a folder (expected {RESULTS_DIR}/ with "
                                f"one <job>/{SUMMARY_FILE} per finished job)")
    summaries = read_summaries(root)
    plot_path = os.path.join(root, TABLE_PLOT)
    has_plot = write_plot(summaries, plot_path)
    if not has_plot and os.path.exists(plot_path):
        os.remove(plot_path)                 # a stale plot of jobs no longer there
    table = os.path.join(root, TABLE_FILE)
    run_folder.write_text(table, table_markdown(summaries, TABLE_PLOT if has_plot else None))
    return {"table": table, **({"plot": plot_path} if has_plot else {})}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.paper_table",
                       description=__doc__.split("\n")[0])
    p.add_argument("dir", nargs="?", default=RESULTS_DIR,
                   help=f"the jobs' folder (default {RESULTS_DIR})")
    add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser, args.debug):
        files = write_table(args.dir)
    print(json.dumps(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
