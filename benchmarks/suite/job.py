"""One paper-scale job (:mod:`experiments.paper_jobs`): a full-length training run and its whole
evaluation inside one budget, written to a small output folder after every stage.

:func:`run_job` trains the job's config (the plan's overrides on top; run folder in a temp
dir, no checkpoints) on the CIFAR-10 archive; after epoch 1 it estimates the whole job
(:func:`estimate_seconds`) and stops at once, status ``stopped``, when that exceeds the budget.
Otherwise, after training: one-shot global magnitude pruning at the reference's levels in the
study preset's main scope (the conv and dense kernels), with and without BatchNorm
re-calibration, and to 2:4 (:func:`experiments.prune_sweep.sweep` of the run's final
weights); the layerwise sparsity of the 90 % mask; the training curve (last, so that a plotting
failure costs no number); for the retrain jobs SGD retraining under the mask at
:data:`experiments.paper_jobs.RETRAIN_PERCENTS` (:func:`experiments.retrain.retrain`), as many
epochs per level as the budget left allows (:func:`retrain_epochs`), at least the plan's
minimum, the levels that no longer fit skipped and listed.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
import tempfile
import time
from typing import Any, Mapping, Sequence

import jax

from benchmarks.suite.job_report import render_job_markdown
from benchmarks.suite.plans import JobPlan
from benchmarks.suite.report import jsonable, write_ascii
from benchmarks.suite.runtime import CompileClock, error_text, git_revision, log
from benchmarks.suite.study import (RETRAIN_FIELDS, curve, eval_pass_s, first_epoch_times,
                                    load_study_dataset, resolve_data)
from experiments.paper_jobs import (CURVE_PLOT, METRICS_FILE, NM_PATTERN, REPORT_FILE,
                                    RETRAIN_MIN_EPOCHS, RETRAIN_PERCENTS, SPARSITY_PERCENTS,
                                    STUDY_PRESET, SUMMARY_FILE, Job, job_config)

WHO = "device_job"
LAYERWISE_PERCENT = 90
EVAL_HOST_S = 0.25
"""Seconds per evaluation of the sweep beyond the forward pass (applying the mask, counting it,
dispatching per tensor): the H100 suite's sweep of ResNet-18 took 17.8 s for 28 evaluations
whose forward passes were about 0.13 s each (results/device/2026-11-26-h100)."""
POST_FACTOR = 1.1
"""Margin on the post-training estimates (evaluation, retraining)."""


class JobStopped(Exception):
    """The full length does not fit the budget (raised after epoch 1; the message says why)."""


class JobWriter:
    """The output folder: ``summary.json`` and ``report.md`` rewritten atomically by
    :meth:`put`, ``metrics.jsonl`` by :meth:`metrics`."""

    def __init__(self, out_dir: str, summary: dict):
        self.out = out_dir
        self.summary = summary
        os.makedirs(out_dir, exist_ok=True)

    def put(self, **fields: Any) -> None:
        self.summary.update(jsonable(fields))
        self.summary["wall_s"] = round(time.time() - self.summary["_t0"], 2)
        shown = {k: v for k, v in self.summary.items() if not k.startswith("_")}
        write_ascii(os.path.join(self.out, SUMMARY_FILE),
                    json.dumps(shown, indent=1, allow_nan=False) + "\n")
        write_ascii(os.path.join(self.out, REPORT_FILE), render_job_markdown(shown))

    def metrics(self, history: Sequence[Mapping]) -> None:
        write_ascii(os.path.join(self.out, METRICS_FILE),
                    "".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in history))


def estimate_seconds(*, elapsed_s: float, epochs: int, first: Mapping[str, float],
                     n_train: int, n_test: int, evaluations: int, recal_passes: int,
                     recal_images: int, retrain_levels: int, retrain_epochs: int) -> dict:
    """The whole job's seconds, estimated after epoch 1 (``elapsed_s`` since the start).

    Training: ``(epochs - 1) * epoch_s`` (epoch 1 less its compilation, :func:`first_epoch_times`
    ``first``). Evaluation: ``evaluations`` passes over the test split (:func:`eval_pass_s`
    plus :data:`EVAL_HOST_S` each), ``recal_passes`` training-mode passes over
    ``recal_images`` images, two compilations at 0.3 of the train step's. Retraining:
    ``retrain_levels`` x ``retrain_epochs`` epochs, two evaluations per level and one
    train-step compilation. The post-training work is taken :data:`POST_FACTOR` times, plus
    5 s (host-side masks, files).
    """
    epoch_s, step_compile = first["epoch_s"], first["compile_in_first_epoch_s"]
    ev = eval_pass_s(epoch_s, n_train, n_test) + EVAL_HOST_S
    evaluation = (evaluations * ev + recal_passes * eval_pass_s(epoch_s, n_train, recal_images)
                  + 2 * 0.3 * step_compile)
    retrain = (retrain_levels * (retrain_epochs * epoch_s + 2 * ev) + step_compile
               if retrain_levels else 0.0)
    training = (epochs - 1) * epoch_s
    total = elapsed_s + training + POST_FACTOR * (evaluation + retrain) + 5.0
    return {"total_s": round(total, 1), "elapsed_s": round(elapsed_s, 1),
            "training_s": round(training, 1), "evaluation_s": round(POST_FACTOR * evaluation, 1),
            "retraining_s": round(POST_FACTOR * retrain, 1), "epoch_s": epoch_s}


def retrain_epochs(avail_s: float, epoch_s: float, eval_s: float, compile_s: float, levels: int,
                   lo: int, hi: int) -> int:
    """Retraining epochs per level: the most in ``[lo, hi]`` whose ``levels`` levels (each
    ``epochs * epoch_s`` plus two evaluations of ``eval_s``, one compilation of ``compile_s``,
    all taken :data:`POST_FACTOR` times) fit ``avail_s``; ``lo`` when none does (the levels
    then run while they fit)."""
    per_epoch = POST_FACTOR * levels * epoch_s
    spare = avail_s - POST_FACTOR * (compile_s + 2 * levels * eval_s)
    fit = math.floor(spare / per_epoch) if per_epoch > 0 else hi
    return int(min(hi, max(lo, fit)))


def min_retrain_epochs(plan: JobPlan) -> int:
    """The plan's least retraining epochs per level (None: the job table's)."""
    return RETRAIN_MIN_EPOCHS if plan.retrain_min_epochs is None else plan.retrain_min_epochs


def device_name() -> str:
    d = jax.devices()
    return f"{d[0].device_kind} ({jax.default_backend()}, {len(d)} device(s))"


def run_job(job: Job, out_dir: str, plan: JobPlan, *, budget_s: float | None = None,
            data: str | None = None, argv: Sequence[str] = ()) -> dict:
    """Run ``job`` at ``plan``'s sizes into ``out_dir`` (see the module docstring); returns the
    summary (also in ``out_dir/summary.json``), whose ``status`` is ``ok``, ``stopped`` or
    ``error`` (``running`` only in a job killed on the way)."""
    budget = plan.budget_s if budget_s is None else float(budget_s)
    t0 = time.time()
    w = JobWriter(out_dir, {
        "_t0": t0, "job": job.name, "label": job.label, "preset": job.preset,
        "overrides": dict(job.overrides), "plan": plan.name,
        "plan_overrides": dict(plan.overrides), "status": "running", "stage": "start",
        "command": " ".join(["python -m benchmarks.device_job", *argv]),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": device_name(), "git": git_revision(), "budget_s": budget, "epochs": 0,
        "seconds_per_epoch": None, "accuracy": {}, "accuracy_bn_recal": {},
        **({"retrain": {}} if job.retrain else {})})
    w.put()
    clock = CompileClock()
    try:
        with tempfile.TemporaryDirectory(prefix="device_job-") as tmp:
            _run(job, plan, w, clock, deadline=t0 + budget, data=data, tmp=tmp)
        w.put(status="ok", stage="done")
    except JobStopped as e:
        w.put(status="stopped", stage="stopped after epoch 1", reason=str(e))
    except Exception as e:
        w.put(status="error", error=error_text(e))
    except BaseException:
        w.put(status="error", error="interrupted (KeyboardInterrupt or exit)")
        raise
    finally:
        clock.close()
    log(f"{job.name}: {w.summary['status']} after {w.summary['wall_s']} s", WHO)
    return {k: v for k, v in w.summary.items() if not k.startswith("_")}


def _run(job: Job, plan: JobPlan, w: JobWriter, clock: CompileClock, *, deadline: float,
         data: str | None, tmp: str) -> None:
    from experiments.study_presets import get_study_preset
    from sfw_jax.training import config as config_lib

    preset = get_study_preset(STUDY_PRESET)
    data_path, data_rec = resolve_data(data, plan.synthetic_data, tmp)
    cfg = config_lib.validate(job_config(
        job, data_dir=data_path, out_dir=os.path.join(tmp, "run"), keep_checkpoints=0,
        progress=False, **dict(plan.overrides),
        **({} if plan.epochs is None else {"epochs": plan.epochs})))
    w.put(config=cfg.to_dict(), stage="loading data", data=data_rec)
    log(f"{job.name}: {cfg.arch} {cfg.optimizer} {cfg.epochs} epochs, data {data_path}", WHO)
    ds, info = load_study_dataset(cfg, data_path, plan.test_subset)
    w.put(data={**data_rec, **info}, stage="training")
    run = _train(job, plan, w, clock, cfg, ds, preset)
    _evaluate(job, plan, w, run, preset)
    if job.retrain:
        _retrain(plan, w, run, preset, deadline)


def _post_counts(job: Job, plan: JobPlan, cfg: Any, preset: Any, n_test: int) -> dict:
    """What the post-training estimate counts: evaluations, re-calibration passes and images,
    retraining levels and epochs."""
    levels = len(SPARSITY_PERCENTS)
    recal = plan.recal_batches or preset.recal_batches
    return {"evaluations": 1 + 2 * levels + 2,
            "recal_passes": levels + 1, "recal_images": recal * cfg.batch_size,
            "retrain_levels": len(RETRAIN_PERCENTS) if job.retrain else 0,
            "retrain_epochs": min_retrain_epochs(plan), "n_test": n_test}


def _train(job: Job, plan: JobPlan, w: JobWriter, clock: CompileClock, cfg: Any, ds: Any,
           preset: Any) -> Any:
    """Train ``cfg``; after epoch 1 estimate the job and raise :class:`JobStopped` when the
    estimate exceeds the budget. Returns the run as a loaded one."""
    from experiments._loaded_run import loaded_from_result
    from sfw_jax.training import loop as train_lib

    history: list[dict] = []
    n_train = len(train_lib.training_subset(cfg, ds.train))
    counts = _post_counts(job, plan, cfg, preset, len(ds.test))
    t_train = time.time()

    def after_epoch(record: dict, state: Any) -> None:
        history.append(record)
        w.metrics(history)
        fields: dict[str, Any] = {"epochs": record["epoch"],
                                  "stage": f"training (epoch {record['epoch']}/{cfg.epochs})"}
        if record["epoch"] == 1:
            now = time.time()
            first = first_epoch_times(record, t_train, now, clock)
            est = estimate_seconds(elapsed_s=now - w.summary["_t0"], epochs=cfg.epochs,
                                   first=first, n_train=n_train, **counts)
            fields.update(first_epoch=first, estimate=est, seconds_per_epoch=first["epoch_s"])
            budget = w.summary["budget_s"]
            log(f"epoch 1: {first['first_epoch_s']} s ({first['compile_in_first_epoch_s']} s "
                f"compiling): {first['epoch_s']} s per epoch; estimated total "
                f"{est['total_s']} s of a budget of {budget} s", WHO)
            if est["total_s"] > budget:
                w.put(**fields)
                raise JobStopped(
                    f"the full length ({cfg.epochs} epochs) does not fit: estimated "
                    f"{est['total_s']:.0f} s in all (training {est['training_s']:.0f} s more at "
                    f"{first['epoch_s']} s per epoch, evaluation {est['evaluation_s']:.0f} s, "
                    f"retraining {est['retraining_s']:.0f} s) against a budget of {budget:g} s")
        w.put(**fields)

    result = train_lib.train(cfg, ds, callbacks=[after_epoch])
    times = [h["epoch_time"] for h in history[1:]]
    w.put(epochs=len(history), stage="trained",
          seconds_per_epoch=(round(statistics.median(times), 3) if times
                             else w.summary["seconds_per_epoch"]),
          dense_test_acc=round(100 * result.test["accuracy"], 4),
          train_s=round(time.time() - t_train, 2))
    return loaded_from_result(result, cfg.out_dir)


def _percent(acc: Mapping[str, float]) -> dict[str, float]:
    return {p: round(100 * a, 4) for p, a in acc.items()}


def _evaluate(job: Job, plan: JobPlan, w: JobWriter, run: Any, preset: Any) -> None:
    """The one-shot sweep (with BatchNorm re-calibration in the main scope and 2:4), the
    layerwise sparsity of the 90 % mask and the training curve."""
    from experiments import prune_sweep as sweep_lib
    from sfw_jax.pruning import apply_mask, magnitude_mask, sparsity_summary
    from sfw_jax import leaf_scope

    t = time.time()
    main = preset.main_scope
    rows = sweep_lib.sweep(run, [p / 100 for p in SPARSITY_PERCENTS], scopes=[main],
                           bn_recal=True, recal_batches=plan.recal_batches or preset.recal_batches,
                           recal_scopes=[main], nm=[NM_PATTERN], progress=False)
    nm = {bool(r["bn_recal"]): r for r in rows if sweep_lib.row_pattern(r) == NM_PATTERN}
    w.put(accuracy=_percent(curve(rows, main)),
          accuracy_bn_recal=_percent(curve(rows, main, True)), scope=main,
          nm={"pattern": NM_PATTERN,
              "accuracy": round(100 * nm[False]["test_acc"], 4),
              "accuracy_bn_recal": round(100 * nm[True]["test_acc"], 4) if True in nm else None,
              "sparsity": nm[False]["sparsity"]},
          sweep_s=round(time.time() - t, 2), stage="swept")
    include = leaf_scope(main)
    mask = magnitude_mask(run.params, LAYERWISE_PERCENT / 100, scope="global", include=include)
    summ = sparsity_summary(apply_mask(run.params, mask), mask, include=include)
    w.put(layerwise_sparsity={
        "percent": LAYERWISE_PERCENT, "scope": main, "total": summ.sparsity,
        "layers": [{"path": r.path, "shape": list(r.shape), "size": r.size,
                    "pruned": r.pruned, "sparsity": r.sparsity}
                   for r in summ.leaves]},
        stage="evaluated")
    try:    # last: a plotting failure must not cost the numbers
        from experiments import plots

        plots.plot_training_curve(
            os.path.join(w.out, CURVE_PLOT), run.history, test_acc=run.final["test_acc"],
            title=f"{job.name}: {run.config.arch} {run.config.optimizer}, {len(run.history)} "
                  f"epochs ({w.summary['plan']} plan)")
    except Exception as e:
        w.put(plot_error=error_text(e))


def _retrain(plan: JobPlan, w: JobWriter, run: Any, preset: Any, deadline: float) -> None:
    """SGD retraining under the one-shot mask at each level while it fits the deadline."""
    from experiments import retrain as retrain_lib

    first = w.summary["first_epoch"]
    epoch_s = first["epoch_s"]
    ev = eval_pass_s(epoch_s, len(run.train_split), len(run.dataset.test)) + EVAL_HOST_S
    hi = plan.retrain_max_epochs or retrain_lib.default_epochs(run.config.epochs)
    lo = min(min_retrain_epochs(plan), hi)
    n = len(RETRAIN_PERCENTS)
    epochs = retrain_epochs(deadline - time.time(), epoch_s, ev,
                            first["compile_in_first_epoch_s"], n, lo, hi)
    w.put(retrain_epochs=epochs, retrain_lr=preset.retrain_lr, stage="retraining")
    cache: dict = {}
    records, skipped = [], []
    for p in RETRAIN_PERCENTS:
        need = POST_FACTOR * (epochs * epoch_s + 2 * ev
                      + (0 if cache else first["compile_in_first_epoch_s"]))
        if time.time() + need > deadline:
            skipped.append(p)
            continue
        rec = retrain_lib.retrain(run, p / 100, epochs=epochs, lr=preset.retrain_lr,
                                  scope=preset.main_scope, progress=False, step_cache=cache).record
        records.append({k: rec[k] for k in RETRAIN_FIELDS})
        log(f"retrained at {p} %: {100 * rec['test_acc']:.2f} % after {epochs} epochs "
            f"({rec['wall_time']:.1f} s)", WHO)
        w.put(retrain={f"{100 * r['sparsity']:g}": round(100 * r["test_acc"], 4) for r in records},
              retrain_records=records, retrain_skipped=skipped)
    w.put(retrain_skipped=skipped, stage="retrained")


__all__ = ["run_job", "estimate_seconds", "retrain_epochs", "min_retrain_epochs", "JobStopped",
           "JobWriter"]
