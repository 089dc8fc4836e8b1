"""The study runner: train every method of a study preset, prune, retrain, measure the weights.

:func:`run_study` does the steps of ``python -m experiments.study`` (see that module) and writes
the reports (:mod:`experiments.study_report`). Every step's result is on disk before the next
starts and is reused on a re-run, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from experiments import lm_report
from experiments import prune_sweep as sweep_lib
from experiments import retrain as retrain_lib
from experiments._loaded_run import load_run_dataset, load_trained, same_data
from experiments.study_presets import StudyPreset
from experiments.study_report import write_reports
from sfw_jax import leaf_scope, pruning
from sfw_jax.training import config as config_lib
from sfw_jax.training import loop, run_folder
from sfw_jax.training.checkpoint import has_checkpoint
from sfw_jax.training.config import TrainConfig


HIST_EDGES = tuple(np.round(np.arange(-10.0, 1.0001, 0.2), 6).tolist())
"""Shared log10|w| histogram bin edges (0.2 decades from 1e-10 to 10) for all methods."""


def check_methods(preset: StudyPreset, methods: Sequence[str] | None) -> list[str]:
    """The methods to run: the preset's defaults, or ``methods`` (validated, order kept)."""
    if methods is None:
        return preset.default_methods()
    allowed = {**preset.all_methods(), **preset.pruned_as}
    bad = [m for m in methods if m not in allowed]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty list from {sorted(allowed)} for study "
                         f"preset {preset.name!r}, got {list(methods)!r}")
    return list(dict.fromkeys(methods))


def _check_existing(cfg: TrainConfig, run_dir: str) -> None:
    """ValueError if ``run_dir`` holds a run of a different config (a stale study folder)."""
    path = run_folder.path(run_dir, run_folder.CONFIG_FILE)
    if not os.path.isfile(path):
        return
    diff = run_folder.config_differences(config_lib.load_json(path).to_dict(),
                                         config_lib.validate(cfg).to_dict())
    if diff:
        raise ValueError(f"{run_dir} holds a run with a different config ({diff}); choose "
                         f"another --out or delete that run")


def train_method(cfg: TrainConfig, dataset: Any) -> dict:
    """Train ``cfg`` unless its ``out_dir`` holds a finished run; resume a partial one.

    Returns ``{'status': 'skipped' | 'resumed' | 'trained', 'seconds': this call's time}``.
    """
    run_dir = cfg.out_dir
    _check_existing(cfg, run_dir)
    if run_folder.is_finished(run_dir):
        return {"status": "skipped", "seconds": 0.0}
    resume = has_checkpoint(run_folder.path(run_dir, run_folder.CHECKPOINT_DIR))
    t0 = time.time()
    loop.train(cfg.replace(resume=resume), dataset)
    return {"status": "resumed" if resume else "trained", "seconds": time.time() - t0}


def weight_statistics(params: Any, scope: str) -> dict:
    """Counts above thresholds, log10 histogram and CDF of ``params`` over ``scope``
    (:data:`sfw_jax.LEAF_SCOPES`)."""
    inc = leaf_scope(scope)
    return {"scope": scope,
            "above": pruning.count_above_thresholds(params, include=inc),
            "hist": pruning.magnitude_histogram(params, list(HIST_EDGES), log=True,
                                                     include=inc),
            "cdf": pruning.magnitude_cdf(params, include=inc)}


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
    trained = list(dict.fromkeys(preset.trained_as(m)[0] for m in methods))
    configs = {m: preset.method_config(m, os.path.join(out_dir, run_folder.STUDY_RUNS_DIR, m)).replace(
        progress=progress and preset.base_config().progress) for m in trained}
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
    run_folder.write_json(os.path.join(out_dir, run_folder.STUDY_CONFIGS_FILE),
                     {m: config_lib.validate(c).to_dict() for m, c in configs.items()})

    datasets: list[tuple[TrainConfig, Any]] = []

    def dataset_for(cfg: TrainConfig) -> Any:
        for c, ds in datasets:
            if same_data(c, cfg):
                return ds
        ds = load_run_dataset(cfg)
        datasets.append((cfg, ds))
        return ds

    results: dict[str, dict] = {}
    for m in methods:
        base, criterion = preset.trained_as(m)
        cfg = configs[base]
        run_dir = cfg.out_dir
        label = preset.label(m)
        if progress:
            print(f"== {label} ({m}) -> {run_dir}", file=sys.stderr)
        work = {}
        work["train"] = train_method(cfg, None if run_folder.is_finished(run_dir)
                                     else dataset_for(cfg))
        run = load_trained(run_dir, dataset_for(cfg), need_weights=False)
        t0 = time.time()
        cache = run_folder.path(run_dir, run_folder.SWEEP_JSON)
        rows = sweep_lib.sweep(run, preset.sparsities, scopes=scopes, bn_recal=preset.bn_recal,
                               recal_batches=preset.recal_batches,     # re-cal: main scope only
                               recal_scopes=[sc for sc in scopes if sc == preset.main_scope],
                               nm=patterns, criteria=[criterion], cache_path=cache,
                               progress=progress)
        # the CSV holds every criterion's rows of the run (the cache keeps them all)
        sweep_lib.write_csv(run_folder.read_json(cache)["rows"],
                            run_folder.path(run_dir, run_folder.SWEEP_CSV))
        work["sweep_seconds"] = time.time() - t0
        retrained = []
        levels = (preset.retrain_sparsities if m in preset.retrain_methods
                  and m not in preset.pruned_as else ())
        nm_levels = nm_retrain if m in preset.nm_retrain_methods else ()
        if levels or nm_levels:
            t0 = time.time()
            retrained = retrain_lib.retrain_many(
                run, levels, nm=nm_levels,
                out_path=run_folder.path(run_dir, run_folder.RETRAIN_FILE),
                progress=progress, epochs=preset.retrain_epochs, lr=preset.retrain_lr,
                scope=preset.main_scope)
            work["retrain_seconds"] = time.time() - t0
        stats_path = run_folder.path(run_dir, run_folder.WEIGHTS_FILE)
        if os.path.isfile(stats_path):
            stats = run_folder.read_json(stats_path)
        else:
            stats = weight_statistics(run.params, preset.main_scope)
            run_folder.write_json(stats_path, stats)
        last = run.history[-1] if run.history else {}
        results[m] = {
            "label": label, "config": run.config.to_dict(), "run_dir": run_dir,
            "trained_as": base, "criterion": criterion,
            "final": run.final, "history": run.history,
            "dense_val_acc": last.get("val_acc"),
            **({"dense_val_bits_per_byte": last["val_bits_per_byte"]}
               if "val_bits_per_byte" in last else {}),
            "train_time": run.train_time,
            "sweep": rows, "sweep_time": float(sum(r.get("eval_time", 0.0) for r in rows)),
            "retrain": retrained, "weights": _strip_per_leaf(stats), "this_invocation": work,
        }
    summary = {
        "study": preset.name, "description": preset.description,
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "preset": {"base_preset": preset.base_preset, "base": dict(preset.base),
                   "methods": {m: dict(preset.all_methods()[preset.trained_as(m)[0]])
                               for m in methods},
                   "sparsities": list(preset.sparsities), "scopes": scopes,
                   "main_scope": preset.main_scope, "bn_recal": preset.bn_recal,
                   "recal_batches": preset.recal_batches,
                   "retrain_methods": [m for m in preset.retrain_methods if m in methods],
                   "retrain_sparsities": list(preset.retrain_sparsities),
                   "retrain_epochs": preset.retrain_epochs, "retrain_lr": preset.retrain_lr,
                   "nm_patterns": patterns,
                   "nm_retrain_methods": [m for m in preset.nm_retrain_methods if m in methods],
                   "nm_retrain_patterns": nm_retrain,
                   "pruned_as": {m: list(preset.pruned_as[m]) for m in methods
                                 if m in preset.pruned_as},
                   "metric": preset.metric},
        "methods": results,
        "wall_time_this_invocation": time.time() - t_start,
    }
    if preset.metric == "test_bits_per_byte":
        lm_report.write_reports(summary, out_dir, notes=preset.notes)
    else:
        write_reports(summary, out_dir, notes=preset.notes)
    summary["wall_time_this_invocation"] = time.time() - t_start
    if preset.metric == "test_bits_per_byte":
        # summary.json: the headline numbers only; the whole record in study.json
        run_folder.write_json(os.path.join(out_dir, run_folder.STUDY_RECORD_FILE), summary)
        run_folder.write_json(os.path.join(out_dir, run_folder.STUDY_SUMMARY_FILE),
                              lm_report.compact_summary(summary))
    else:
        run_folder.write_json(os.path.join(out_dir, run_folder.STUDY_SUMMARY_FILE), summary)
    return summary
