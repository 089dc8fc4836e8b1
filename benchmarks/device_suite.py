"""One command for a lent accelerator: environment, tests, top-k, update, train step, study.

    PYTHONPATH=. python -m benchmarks.device_suite --out DIR [--budget-s 480] [--rehearse]
        [--data data/cifar10-jpeg.tar.gz] [--sections env tests topk update train_step study]
        [--plan full|rehearse|ci]

The sections run in this order, each in its own try/except; ``DIR/device_report.json`` and
``DIR/device_report.md`` are rewritten (temp file + ``os.replace``) when a section starts and
when it ends, so a crash or a killed command loses none of the finished sections. Every section
has ``"status"`` (``ok`` / ``error`` / ``skipped``; ``"error"`` holds the text), ``"seconds"``
and ``"compile_s"`` (compilation inside it, from ``jax.monitoring``); a section still running
when the command dies reads ``error`` ("did not finish").

1. ``env``: python, jax / jaxlib / flax / optax / orbax / numpy versions, backend, device kind
   and count, ``memory_stats()`` of each device, ``nvidia-smi`` where present.
2. ``tests``: a pytest subset (LMO, top-k, SFW, pruning; ``Plan.tests``) in a subprocess with a
   timeout, on the suite's backend: passed / failed / errors / skipped counts and the failing
   test ids (the subprocess does not preallocate accelerator memory); its output goes to
   ``DIR/tests.log``.
3. ``topk``: ``benchmarks.bench_topk.time_size`` for every method of ``sfw_jax.fw.topk.METHODS``
   (read at run time), K = 5 %, float32 and bfloat16, at the ResNet-18 tensor sizes from 36,864
   to 2,359,296 entries: median ms.
4. ``update``: first ``benchmarks.bench_topk.time_tree`` (the K-sparse selections of every
   leaf at once: one segmented search over the whole tree, per-shape-group ``vmap`` and per-leaf
   'bisect' / 'segmented': ms and op count, under ``"selection"``); then
   ``benchmarks.bench_update.bench`` (SFW update vs ``optax.sgd(momentum=0.9)`` on the
   ResNet-18 tree) for every method, per leaf and batched, and with the first method the
   ``tree_select`` path (the GPU / TPU default): ms and ratio = sfw_ms / sgd_ms; then the op
   counts of ``benchmarks.op_count.op_counts``, the defaults first
   (``sfw_accelerator_default`` vs ``sgd``), then per method (recorded as skipped, with the
   reason, when that module does not import).
5. ``train_step``: ``benchmarks.bench_train_step.bench_model`` (ResNet-18, batch 128, method
   'auto'), fp32 and bf16: SFW and SGD ms, ratio = sfw_ms / sgd_ms, images/s; then
   ``bench_train_step.bench_steps_per_call``: the training loop's SFW step at 1 and 8 optimizer
   steps per jitted call, ms per call and per step (``STEPS_PER_CALL``'s measurement).
6. ``study``: ResNet-18 on the CIFAR-10 JPEG archive (``--data``) with the configs of the presets
   ``paper-resnet18-cifar10`` (SFW K-sparse) and ``paper-resnet18-cifar10-sgd`` (SGD) of
   ``sfw_jax.training.config``. Each method first trains one epoch of a run started with
   ``PROBE_EPOCHS`` epochs (stopped by a callback after its checkpoint); that epoch's time minus
   its compilation time (``jax.monitoring``) is the epoch time. Then both methods get the same
   number of epochs E, the most that fits the budget left after the post-training work
   (:func:`fit_epochs`), and each run is resumed to E epochs when that reproduces a fresh
   E-epoch run exactly (the schedule, which uses E, gives epoch 1 the same lr for
   ``PROBE_EPOCHS`` and E), else trained afresh for E epochs (the command points JAX's
   persistent compilation cache at a temp dir, so recompiling the same programs is cheap).
   Then one-shot global magnitude pruning at
   ``SPARSITY_PERCENTS`` (``experiments.prune_sweep.sweep``, the scopes of the
   ``paper-resnet18-cifar10`` study preset) and SGD + 1 epoch of retraining under the mask at
   ``RETRAIN_PERCENTS`` (``experiments.retrain.retrain_many``): ``"accuracy": {method:
   {percent: test accuracy}}`` in the study preset's main scope, ``DIR/accuracy_vs_sparsity.png``.
   Run folders and checkpoints stay in a temp dir.

Budget: ``--budget-s`` seconds of work from the start (default: the plan's; 480 for ``full``, so
that one 600 s device command fits with its start-up and compilation overruns). A timing section
stops starting new measurements once its share (``Plan.shares``, scaled by ``--budget-s`` / the
plan's budget) is spent and lists what it skipped; the study gets the rest.

Plans: ``full`` (the accelerator run), ``rehearse`` (``--rehearse``: the same code path at tiny
sizes, on any backend: a 4-leaf tree, n = 36,864, an MLP train step, a narrow CNN with
BatchNorm on 2,560 training and 1,000 test images, at most 3 epochs; without the archive, a
small synthetic image-folder ``.tar.gz`` in the temp dir goes through the same loader), ``ci``
(smaller still, for ``tests/test_device_suite.py``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from typing import Callable, Sequence

from benchmarks.suite.cli import add_plan_arguments, chosen_plan
from benchmarks.suite.plans import PLANS, REPORT_JSON, REPORT_MD, SECTIONS, Plan
from benchmarks.suite.runtime import Suite, compilation_cache, error_text, log
from benchmarks.suite.sections import (section_env, section_tests, section_topk,
                                       section_train_step, section_update)
from benchmarks.suite.study import section_study

SECTION_FUNCS: dict[str, Callable[[Suite, float], dict]] = {
    "env": section_env, "tests": section_tests, "topk": section_topk, "update": section_update,
    "train_step": section_train_step, "study": section_study}


def run_suite(out_dir: str, plan: Plan, *, budget_s: float | None = None,
              sections: Sequence[str] = SECTIONS, data: str | None = None,
              argv: Sequence[str] = ()) -> dict:
    """Run ``sections`` (in ``SECTIONS`` order) into ``out_dir``; returns the report."""
    bad = [x for x in sections if x not in SECTIONS]
    if bad or not sections:
        raise ValueError(f"sections must be a non-empty list from {list(SECTIONS)}, got "
                         f"{list(sections)!r}")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="device_suite-") as tmp:
        s = Suite(out_dir, plan, plan.budget_s if budget_s is None else budget_s, data, tmp,
                  argv)
        try:
            _run_sections(s, [x for x in SECTIONS if x in sections])
        finally:
            s.close()
        s.report["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        s.report["wall_s"] = round(time.time() - s.t0, 2)
        s.report["files"] = sorted(os.listdir(out_dir))
        s.write()
    return s.report


def _run_sections(s: Suite, names: Sequence[str]) -> None:
    for name in names:
        deadline = s.deadline if name == "study" else s.share_deadline(name)
        t0 = time.time()
        s.put(name, {"status": "error", "seconds": None,
                     "error": "did not finish (the command was killed or timed out)"})
        log(f"section {name} (share ends in {deadline - t0:.0f} s, budget left "
             f"{s.deadline - t0:.0f} s)")
        try:
            rec = SECTION_FUNCS[name](s, deadline)
            rec.setdefault("status", "ok")
        except Exception as e:
            # keep what the section recorded on the way (the study's stages)
            rec = {**s.report["sections"][name], "status": "error", "error": error_text(e)}
        rec["seconds"] = round(time.time() - t0, 2)
        rec["compile_s"] = round(s.clock.between(t0, time.time()), 2)
        s.put(name, rec)
        log(f"section {name}: {rec['status']} in {rec['seconds']} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_suite",
                                description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--out", required=True, help="report folder (at most 8 files land there)")
    add_plan_arguments(p, PLANS, PLANS["full"].budget_s,
                       "CIFAR-10 JPEG image-folder archive of the study")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="run only these sections (in the suite's order)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    plan = PLANS[chosen_plan(parser, args)]
    # Recompilations of identical programs (the study's resumed runs, the retrained and the
    # sweep's evaluators) are read from this cache instead of compiled again.
    with compilation_cache("device_suite-jax-cache-"):
        report = run_suite(args.out, plan, budget_s=args.budget_s, sections=args.sections,
                           data=args.data, argv=argv)
    for name, r in report["sections"].items():
        print(f"{name:11s} {r['status']:8s} {r['seconds']} s "
              f"{(r.get('error') or '').splitlines()[0] if r.get('error') else ''}")
    print(f"wrote {os.path.join(args.out, REPORT_JSON)} and {REPORT_MD} "
          f"({report['wall_s']} s, files: {report['files']})")
    return 0 if all(r["status"] != "error" for r in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
