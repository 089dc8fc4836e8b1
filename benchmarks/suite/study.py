"""The study section: ResNet-18 (or the plan's model) trained with SFW and SGD for as many epochs
as the budget allows, pruned one-shot, SGD retrained under the mask."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from benchmarks.suite.plans import (DEFAULT_DATA, OVERRUN_FRACTION, PLOT_FILE, PROBE_EPOCHS,
                                    REPO_ROOT, RETRAIN_EPOCHS, RETRAIN_PERCENTS, SFW_PRESET,
                                    SGD_PRESET, SPARSITY_PERCENTS, STUDY_PRESET)
from benchmarks.suite.runtime import CompileClock, Suite, log


def write_synthetic_archive(path: str, train_per_class: int, test_per_class: int,
                            num_classes: int = 10, size: int = 32, seed: int = 0) -> str:
    """A CIFAR-like image-folder ``.tar.gz`` (``synthetic/{train,test}/<class>/<i>.jpg``).

    Class ``c`` images are a class-specific colour and stripe pattern plus noise, so a small
    CNN learns them; returns ``path``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    with tarfile.open(path, "w:gz") as tar:
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            for c in range(num_classes):
                color = np.array([(37 * c) % 256, (91 * c + 60) % 256, (151 * c + 120) % 256])
                stripes = ((xx * (c % 3 + 1) + yy * (c // 3)) // 4 % 2)[..., None] * 60
                for i in range(per_class):
                    img = color + stripes + rng.normal(0, 25, (size, size, 3))
                    buf = io.BytesIO()
                    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                        buf, format="JPEG", quality=90)
                    info = tarfile.TarInfo(f"synthetic/{split}/class{c}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def resolve_data(path: str | None, synthetic: tuple[int, int] | None,
                 tmp_dir: str) -> tuple[str, dict]:
    """The archive to train on and a record of it: ``path`` (default :data:`DEFAULT_DATA`;
    relative paths also tried under the repository root) if it exists; else, with
    ``synthetic = (train, test)`` images per class, a synthetic archive written to ``tmp_dir``
    (:func:`write_synthetic_archive`); else FileNotFoundError naming ``--data``."""
    path = path or DEFAULT_DATA
    if not os.path.isabs(path) and not os.path.exists(path):
        alt = os.path.join(REPO_ROOT, path)
        path = alt if os.path.exists(alt) else path
    if os.path.exists(path):
        return os.path.abspath(path), {"source": "archive", "path": os.path.abspath(path),
                                       "bytes": os.path.getsize(path)}
    if synthetic is None:
        raise FileNotFoundError(
            f"--data {path!r} does not exist; copy the archive into the checkout first "
            f"(mkdir -p data && cp ../shared/data/cifar10-jpeg.tar.gz data/) and carry 'data'")
    tr, te = synthetic
    syn = write_synthetic_archive(os.path.join(tmp_dir, "synthetic-cifar.tar.gz"), tr, te)
    return syn, {"source": "synthetic", "path": syn, "missing": path,
                 "train_per_class": tr, "test_per_class": te}


def load_study_dataset(cfg: Any, data_path: str, test_subset: int | None) -> tuple[Any, dict]:
    """The dataset of ``cfg`` read from ``data_path`` (no decode cache; one decoding thread per
    CPU core), its test split cut to a seeded random ``test_subset`` images when given; returns
    (dataset, record with the split sizes, the images trained on and the decode seconds)."""
    from sfw_jax.training import loop as train_lib
    from sfw_jax.training.datasets import load_dataset

    t = time.time()
    ds = load_dataset(cfg.dataset, data_dir=data_path, val_fraction=cfg.val_fraction,
                      seed=cfg.seed, image_size=cfg.image_size, use_cache=False,
                      num_workers=os.cpu_count())
    if test_subset is not None and test_subset < len(ds.test):
        keep = np.random.default_rng(0).permutation(len(ds.test))[:test_subset]
        ds = dataclasses.replace(ds, test=ds.test.take(np.sort(keep)))
    return ds, {"decode_s": round(time.time() - t, 2), "train": len(ds.train),
                "val": len(ds.val), "test": len(ds.test), "image_shape": ds.info.image_shape,
                "trained_on": len(train_lib.training_subset(cfg, ds.train))}


class _StopAfterFirstEpoch(Exception):
    def __init__(self, record: dict):
        super().__init__("stopped after the first epoch")
        self.record = record


def _stop_after_first_epoch(record: dict, state: Any) -> None:
    raise _StopAfterFirstEpoch(record)


def first_epoch_times(record: Mapping[str, Any], t0: float, now: float,
                      clock: CompileClock) -> dict:
    """Times of a run's first epoch from its record (``epoch_time``, ``elapsed``: seconds since
    the run started, which was at or after ``t0``), seen at ``now``: the epoch's wall time, the
    compilation that ended inside it (``clock``), ``epoch_s`` = the epoch less that compilation
    (the steady epoch time), the setup before and after the epoch (``now - t0`` less the epoch)
    and the compilation in it."""
    end = t0 + record["elapsed"]
    compile_s = clock.between(end - record["epoch_time"], end)
    wall = now - t0
    return {"first_epoch_s": round(record["epoch_time"], 3),
            "compile_in_first_epoch_s": round(compile_s, 3),
            "epoch_s": round(max(record["epoch_time"] - compile_s, 1e-3), 3),
            "setup_s": round(wall - record["epoch_time"], 3),
            "compile_in_setup_s": round(clock.between(t0, now) - compile_s, 3),
            "wall_s": round(wall, 3),
            "train_loss": record["train_loss"], "train_acc": record["train_acc"]}


def probe_epoch(cfg: Any, dataset: Any, clock: CompileClock) -> dict:
    """Train epoch 1 of ``cfg`` (``cfg.out_dir``, checkpoint kept) and stop: its times
    (:func:`first_epoch_times`)."""
    from sfw_jax.training import loop as train_lib

    t0 = time.time()
    record = None
    try:
        train_lib.train(cfg, dataset, callbacks=[_stop_after_first_epoch])
    except _StopAfterFirstEpoch as stop:
        record = stop.record
    if record is None:
        raise RuntimeError(f"the probe of {cfg.optimizer} finished without reaching the "
                           f"callback (epochs={cfg.epochs})")
    return first_epoch_times(record, t0, time.time(), clock)


def resume_is_exact(cfg: Any, probe_epochs: int, epochs: int) -> bool:
    """Whether finishing a run stopped after epoch 1 of ``probe_epochs`` with ``epochs`` epochs
    trains exactly as a fresh ``epochs``-epoch run: epoch 1's lr (saved in the checkpoint)
    agrees under both totals (epoch 0's is the base lr for every schedule; the loss-trend rule
    starts after epoch 20)."""
    from sfw_jax.training import config as config_lib
    from sfw_jax.training import schedules

    if epochs == 1:
        return True
    c = config_lib.validate(cfg)
    lr = [schedules.lr_sequence(c.lr_schedule, c.lr, e, [1.0])[1] for e in (probe_epochs, epochs)]
    return lr[0] == lr[1]


def fit_epochs(avail_s: float, epoch_s: Mapping[str, float],
               exact: Callable[[str, int], bool], max_epochs: int) -> int:
    """The largest E in [1, max_epochs] whose remaining training fits ``avail_s`` seconds.

    Every method has trained one epoch; finishing method m to E epochs costs ``(E - 1)``
    epochs of ``epoch_s[m]`` when ``exact(m, E)`` (resume) and ``E`` epochs otherwise (fresh
    run). E = 1 (resume to 1 epoch: only the test evaluation) is the floor.
    """
    for e in range(int(max_epochs), 1, -1):
        cost = sum(t * (e - 1 if exact(m, e) else e) for m, t in epoch_s.items())
        if cost <= avail_s:
            return e
    return 1


def eval_pass_s(epoch_s: float, n_train: int, n_test: int) -> float:
    """Estimated seconds of one evaluation pass over ``n_test`` images: a third (forward only)
    of a training epoch of ``epoch_s`` seconds over ``n_train`` images, scaled by
    ``n_test / n_train``."""
    return epoch_s * n_test / max(n_train, 1) / 3.0


def post_training_estimate(probe: Mapping[str, dict], n_train: int, n_test: int,
                           levels: int, scopes: int, retrain_levels: int) -> float:
    """Seconds of the study after the probes, besides training epochs: per method the final
    call's setup (the probe's, less its compilation: the final call reads the compilation
    cache) and test evaluation, the sweep's evaluations and, for SGD, the retraining (one epoch
    plus its compilation and two evaluations per level); evaluations by :func:`eval_pass_s` of
    the SGD epoch."""
    sgd = probe["sgd"]
    eval_s = eval_pass_s(sgd["epoch_s"], n_train, n_test)
    eval_compile = 0.3 * sgd["compile_in_first_epoch_s"]
    per_method = sum(p["setup_s"] - p["compile_in_setup_s"] + eval_s + eval_compile
                     + levels * scopes * eval_s for p in probe.values())
    retrain = retrain_levels * (RETRAIN_EPOCHS * sgd["epoch_s"] + sgd["compile_in_first_epoch_s"]
                                + 2 * eval_s)
    return 1.2 * (per_method + retrain) + 5.0


def curve(rows: Sequence[dict], scope: str, bn_recal: bool = False) -> dict[str, float]:
    """``{"<percent>": test accuracy}`` of the unstructured sweep rows of ``scope`` with or
    without BatchNorm re-calibration (:func:`experiments.prune_sweep.sweep` rows)."""
    from experiments.prune_sweep import UNSTRUCTURED, row_pattern

    return {f"{100 * r['target_sparsity']:g}": r["test_acc"] for r in rows
            if r["scope"] == scope and bool(r["bn_recal"]) == bn_recal
            and row_pattern(r) == UNSTRUCTURED}


RETRAIN_FIELDS = ("sparsity", "epochs", "lr", "oneshot_test_acc", "test_acc", "final_sparsity",
                  "wall_time")
"""The fields of an :func:`experiments.retrain.retrain` record kept in a report."""


def section_study(s: Suite, deadline: float) -> dict:
    from experiments import plots
    from experiments import prune_sweep as sweep_lib
    from experiments import retrain as retrain_lib
    from experiments._loaded_run import load_trained, same_data
    from experiments.study_presets import get_study_preset
    from experiments.study_presets import LABELS
    from sfw_jax.training import config as config_lib
    from sfw_jax.training import loop as train_lib
    from sfw_jax.training.presets import from_preset

    preset = get_study_preset(STUDY_PRESET)
    out: dict[str, Any] = {"presets": {"sfw_ksparse": SFW_PRESET, "sgd": SGD_PRESET},
                           "overrides": dict(s.plan.study_overrides)}

    t_start = time.time()

    def progress(stage: str) -> None:
        """Record what the study has so far (kept if it fails or is killed later)."""
        s.put("study", {**out, "status": "error", "stage": stage,
                        "error": f"did not finish (last stage reached: {stage})",
                        "seconds": round(time.time() - t_start, 2)})
        log(f"study: {stage}")

    data_path, out["data"] = resolve_data(s.data, s.plan.synthetic_data, s.tmp)
    runs_dir = os.path.join(s.tmp, "runs")
    base = dict(data_dir=data_path, keep_checkpoints=1, progress=False,
                **s.plan.study_overrides)
    cfgs = {"sfw_ksparse": from_preset(SFW_PRESET, **base),
            "sgd": from_preset(SGD_PRESET, **base)}
    for c in cfgs.values():
        config_lib.validate(c)                  # a bad preset fails here, before any work
    first = cfgs["sfw_ksparse"]
    if not same_data(first, cfgs["sgd"]):
        raise ValueError(f"presets {SFW_PRESET!r} and {SGD_PRESET!r} load different data")
    max_epochs = min(first.epochs, cfgs["sgd"].epochs, s.plan.study_max_epochs or 10 ** 9)

    ds, loaded_info = load_study_dataset(first, data_path, s.plan.study_test_subset)
    out["data"].update(loaded_info)
    n_train = loaded_info["trained_on"]
    progress("data loaded")

    clock = s.clock
    cache0 = dict(clock.cache)
    probes = {}
    for m, c in cfgs.items():
        probes[m] = probe_epoch(c.replace(epochs=PROBE_EPOCHS,
                                          out_dir=os.path.join(runs_dir, f"{m}-probe")),
                                ds, clock)
        out["probe"] = probes
        progress(f"probe {m}: first epoch {probes[m]['first_epoch_s']} s "
                 f"(compile {probes[m]['compile_in_first_epoch_s']} s)")
    reserve = post_training_estimate(probes, n_train, len(ds.test), len(SPARSITY_PERCENTS),
                                     len(preset.scopes), len(RETRAIN_PERCENTS))
    avail = deadline - time.time() - reserve

    def exact(m: str, e: int) -> bool:
        return resume_is_exact(cfgs[m], PROBE_EPOCHS, e)

    epochs = fit_epochs(avail, {m: p["epoch_s"] for m, p in probes.items()}, exact,
                        max_epochs)
    out.update(epochs=epochs, max_epochs=max_epochs, reserve_s=round(reserve, 1),
               available_for_epochs_s=round(avail, 1),
               seconds_per_epoch={m: p["epoch_s"] for m, p in probes.items()})
    progress(f"epochs = {epochs}")

    run_dirs, mode, train_s = {}, {}, {}
    for m, c in cfgs.items():
        t = time.time()
        if exact(m, epochs):
            run_dirs[m], mode[m] = os.path.join(runs_dir, f"{m}-probe"), "resumed"
            train_lib.train(c.replace(epochs=epochs, resume=True, out_dir=run_dirs[m]), ds)
        else:
            run_dirs[m], mode[m] = os.path.join(runs_dir, m), "fresh"
            train_lib.train(c.replace(epochs=epochs, out_dir=run_dirs[m]), ds)
        train_s[m] = round(time.time() - t, 2)
        out.update(run_mode=mode, final_call_s=train_s)
        progress(f"trained {m} ({mode[m]}, {epochs} epochs)")
    out["compile_cache"] = {e.rsplit("/", 1)[-1]: n - cache0[e]
                            for e, n in clock.cache.items()}

    loaded = {m: load_trained(d, ds) for m, d in run_dirs.items()}
    out["dense_test_acc"] = {m: r.final["test_acc"] for m, r in loaded.items()}
    out["history"] = {m: [{k: h.get(k) for k in ("epoch", "lr", "train_loss", "train_acc",
                                                  "epoch_time")} for h in r.history]
                      for m, r in loaded.items()}
    out["configs"] = {m: r.config.to_dict() for m, r in loaded.items()}
    fracs = [p / 100 for p in SPARSITY_PERCENTS]
    acc: dict[str, dict[str, float]] = {}
    by_scope: dict[str, dict[str, dict[str, float]]] = {sc: {} for sc in preset.scopes}
    t = time.time()
    for m, run in loaded.items():
        rows = sweep_lib.sweep(run, fracs, scopes=preset.scopes, progress=False)
        for sc in preset.scopes:
            by_scope[sc][m] = curve(rows, sc)
        acc[m] = by_scope[preset.main_scope][m]
        out.update(accuracy=acc, accuracy_by_scope=by_scope, scope=preset.main_scope,
                   sweep_s=round(time.time() - t, 2))
        progress(f"swept {m}")

    retrained: list[dict] = []
    if time.time() > deadline + OVERRUN_FRACTION * s.budget_s:
        out["retrain"] = {"status": "skipped", "reason": "the budget was spent"}
    else:
        t = time.time()
        recs = retrain_lib.retrain_many(loaded["sgd"], [p / 100 for p in RETRAIN_PERCENTS],
                                        epochs=RETRAIN_EPOCHS, lr=preset.retrain_lr,
                                        scope=preset.main_scope, progress=False)
        retrained = [{k: r[k] for k in RETRAIN_FIELDS} for r in recs]
        acc[f"sgd_retrain_{RETRAIN_EPOCHS}ep"] = {f"{100 * r['sparsity']:g}": r["test_acc"]
                                                  for r in recs}
        out["retrain"] = {"status": "ok", "records": retrained,
                          "seconds": round(time.time() - t, 2)}
    out["accuracy"] = acc

    labels = {m: LABELS[m] for m in ("sfw_ksparse", "sgd")}
    curves = {labels[m]: ([float(p) / 100 for p in a], list(a.values()))
              for m, a in acc.items() if m in labels}
    retr = {"SGD": ([r["sparsity"] for r in retrained], [r["test_acc"] for r in retrained])}
    plots.plot_accuracy_vs_sparsity(
        os.path.join(s.out, PLOT_FILE), curves, retrained=retr if retrained else None,
        dense={labels[m]: a for m, a in out["dense_test_acc"].items()},
        title=f"{first.arch} on {out['data']['source']} data, {epochs} epoch(s): one-shot "
              f"global magnitude pruning (scope {preset.main_scope})")
    out["plot"] = PLOT_FILE
    out["seconds_total"] = round(time.time() - t_start, 2)
    return out
