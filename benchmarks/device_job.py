"""One paper-scale job per lent-GPU slot: a full-length training run and its whole evaluation.

    PYTHONPATH=. python -m benchmarks.device_job JOB --out DIR [--budget-s 570] [--rehearse]
        [--data data/cifar10-jpeg.tar.gz] [--plan full|rehearse|ci]
    PYTHONPATH=. python -m benchmarks.device_job JOB --dry-run

JOB is one of :data:`experiments.paper_jobs.QUEUE` (``r18-sfw``, ``r18-sgd``, ``vgg16-sfw``,
``vgg16-sgd``, ``r18-sfw-seed1``, ``r18-nm24``): a config preset plus overrides, trained for
the preset's epochs (180; never shortened) on all 50,000 CIFAR-10 training images of the
JPEG archive ``--data``. The job times its first epoch (less its compilation, as the device
suite does) and, when the estimated total (training, evaluation, retraining) exceeds the budget
(``--budget-s``, default 570 s of work), stops at once with the estimate. Otherwise: one-shot
global magnitude pruning at 0 and the reference's levels 10, ..., 90, 91, ..., 99 % (test
accuracy; also after BatchNorm re-calibration; also to 2:4), the layerwise sparsity of the
90 % mask, the training curve; the SGD jobs are also retrained under the mask at 90 / 95 / 98 %
(at least 5 epochs per level, more while they fit) (:mod:`benchmarks.suite.job`).

``DIR`` receives four small files, rewritten atomically after every stage (a job killed at
the command's limit keeps what it finished): ``summary.json`` (``job``, ``preset``,
``epochs`` run, ``seconds_per_epoch``, ``device``, ``git``, ``accuracy`` and
``accuracy_bn_recal`` as ``{"<percent>": test accuracy in %}``, ``retrain`` likewise for the
SGD jobs, and ``status``: running / ok / stopped / error), ``metrics.jsonl`` (one record per
epoch), ``report.md`` and ``training_curve.png``. Run folders stay in a temp dir; no
checkpoint is written.

``--rehearse`` (= ``--plan rehearse``): the same code path at tiny size on any backend: the
job's architecture at 1/16 width on 640 training images for 3 epochs, retraining 1-2 epochs
per level; without the archive a small synthetic image-folder archive goes through the same
loader. ``--plan ci`` is smaller still (``tests/test_device_job.py``). ``--dry-run`` builds
the real job's config, model, constraint sets and jitted steps on the CIFAR-10 shapes without
data or training (:mod:`benchmarks.suite.job_check`) and prints what it built.

A pair of :data:`experiments.paper_jobs.PAIRS` (``r18-pair``: ``r18-sfw`` then ``r18-sgd``) runs
its jobs one after the other, each into ``DIR/<job>`` with an equal share of the budget left
when it starts (each stops itself when its full length does not fit its share).

Exit status: 0 ok (or a dry run that built), 1 error, 3 stopped (the job does not fit); for a
pair the worst of its jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from benchmarks.suite.cli import add_plan_arguments, chosen_plan
from benchmarks.suite.plans import JOB_PLANS
from benchmarks.suite.runtime import compilation_cache
from experiments.paper_jobs import PAIRS, QUEUE, SUMMARY_FILE, pair_members
from sfw_jax._cli import ArgumentParser

EXIT_STOPPED = 3


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.device_job",
                       description=__doc__.split("\n")[0])
    p.add_argument("job", choices=QUEUE + tuple(PAIRS),
                   help="the job (queue order), or a pair of jobs run in one call")
    p.add_argument("--out", help="output folder (four small files land there)")
    add_plan_arguments(p, JOB_PLANS, JOB_PLANS["full"].budget_s,
                       "CIFAR-10 JPEG image-folder archive")
    p.add_argument("--dry-run", action="store_true",
                   help="build the full job's config, model and steps on the CIFAR-10 shapes; "
                        "no data, no training")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    plan = JOB_PLANS[chosen_plan(parser, args)]
    jobs = pair_members(args.job)
    if args.dry_run:
        from benchmarks.suite.job_check import check_job

        for job in jobs:
            print(json.dumps(check_job(job), indent=1))
        return 0
    if not args.out:
        parser.error("--out is required (the folder the job's files go to)")

    from benchmarks.suite.job import run_job

    budget = plan.budget_s if args.budget_s is None else args.budget_s
    start, codes = time.time(), []
    with compilation_cache("device_job-jax-cache-"):
        for i, job in enumerate(jobs):
            out = args.out if len(jobs) == 1 else os.path.join(args.out, job.name)
            # the first job gets its share of the whole budget; each later one an equal share
            # of what is left when it starts
            left = budget if i == 0 else max(0.0, budget - (time.time() - start))
            share = left / (len(jobs) - i)
            summary = run_job(job, out, plan, budget_s=share, data=args.data, argv=argv)
            status = summary["status"]
            detail = summary.get("reason") or (summary.get("error") or "").split("\n")[0]
            print(f"{job.name}: {status}" + (f": {detail}" if detail else "")
                  + f"; wrote {out}/{SUMMARY_FILE} ({summary['wall_s']} s)",
                  file=sys.stdout if status == "ok" else sys.stderr)
            codes.append({"ok": 0, "stopped": EXIT_STOPPED}.get(status, 1))
    return 1 if 1 in codes else max(codes)


if __name__ == "__main__":
    sys.exit(main())
