"""The run folder: the names and formats of the files a training run writes, and what reads them.

A run folder (``TrainConfig.out_dir``)::

    config.json        the resolved TrainConfig (``TrainConfig.to_dict``), written when the run
                       starts
    metrics.jsonl      one JSON record per finished epoch (``train_loss``, ``val_acc``, ...)
    final.json         ``test_loss``, ``test_acc``, ``epochs``, ``wall_time``: written last, so
                       its presence marks a finished run
    sfw_init.json      the SFW-Init summary (``sfw_init=True``)
    checkpoints/<n>/   the Orbax train state and meta after n finished epochs
                       (:mod:`sfw_jax.training.checkpoint`)

and, written by the experiments on a finished run: ``sweep.csv`` / ``sweep.json`` (one-shot
pruning, ``experiments.prune_sweep``), ``retrain.json`` (prune + retrain,
``experiments.retrain``), ``weights.json`` (weight statistics, ``experiments.study``).
A study folder holds ``runs/<method>/`` (one run folder per method), ``configs.json`` and
``summary.json`` (``experiments.study``; for a language-model study the headline numbers, with
the whole record in ``study.json``).

JSON is written atomically (a temp file in the same folder, then a rename), so an interrupted
write leaves the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping, Sequence

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
SFW_INIT_FILE = "sfw_init.json"
CHECKPOINT_DIR = "checkpoints"
SWEEP_CSV = "sweep.csv"
SWEEP_JSON = "sweep.json"
RETRAIN_FILE = "retrain.json"
WEIGHTS_FILE = "weights.json"
STUDY_RUNS_DIR = "runs"
STUDY_CONFIGS_FILE = "configs.json"
STUDY_SUMMARY_FILE = "summary.json"
STUDY_RECORD_FILE = "study.json"

RESUME_MAY_DIFFER = ("resume", "epochs", "progress", "log_every", "keep_checkpoints",
                     "num_devices", "distributed", "coordinator_address", "num_processes",
                     "process_id", "eval_batch_size", "out_dir", "data_dir", "cpu_kernel",
                     "steps_per_call")
"""Config fields that may differ between a run folder's ``config.json`` and the config that
continues it (how the run is executed, not what it computes: e.g. the device count and
``cpu_kernel`` change summation orders only, ``steps_per_call`` the dispatches)."""


class NotARunError(FileNotFoundError):
    """A folder is not a (finished) training run; the message names it and what is missing."""


def path(out_dir: str, name: str) -> str:
    """``out_dir/name``."""
    return os.path.join(out_dir, name)


def write_text(file: str, text: str) -> None:
    """Write ``text`` atomically (temp file in the same folder + rename)."""
    folder = os.path.dirname(os.path.abspath(file))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(file: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(file, json.dumps(obj, indent=2))


def read_json(file: str) -> Any:
    """Parsed JSON of ``file``."""
    with open(file) as f:
        return json.load(f)


def write_jsonl(file: str, records: Sequence[Mapping], mode: str = "w") -> None:
    """One JSON line per record (``mode='a'`` appends)."""
    with open(file, mode) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_history(out_dir: str) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl`` ([] if the file is missing)."""
    file = path(out_dir, METRICS_FILE)
    if not os.path.isfile(file):
        return []
    with open(file) as f:
        return [json.loads(line) for line in f if line.strip()]


def is_finished(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a finished run (its ``final.json`` exists)."""
    return os.path.isfile(path(out_dir, FINAL_FILE))


def check_finished(out_dir: Any) -> None:
    """:class:`NotARunError` (one line naming the folder and what is missing) unless ``out_dir``
    is a folder with a ``config.json`` and a ``final.json``."""
    if not isinstance(out_dir, str) or not os.path.isdir(out_dir):
        raise NotARunError(f"{out_dir!r} is not a folder; expected a training run folder "
                           f"(with {CONFIG_FILE}, {FINAL_FILE}, {CHECKPOINT_DIR}/)")
    if not os.path.isfile(path(out_dir, CONFIG_FILE)):
        raise NotARunError(f"{out_dir} has no {CONFIG_FILE}: not a training run folder")
    if not is_finished(out_dir):
        raise NotARunError(f"{out_dir} has no {FINAL_FILE}: the run did not finish (continue it "
                           f"with `sfw-train --resume --out-dir {out_dir} ...`)")


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """The fields (outside :data:`RESUME_MAY_DIFFER`) in which two ``TrainConfig.to_dict``
    dicts differ, as ``"k: saved A vs now B, ..."``; '' when they agree."""
    return ", ".join(f"{k}: saved {saved.get(k)!r} vs now {v!r}" for k, v in now.items()
                     if k not in RESUME_MAY_DIFFER and saved.get(k) != v)


def has_weights(out_dir: str) -> bool:
    """Whether ``out_dir/checkpoints`` holds a checkpoint."""
    from sfw_jax.training.checkpoint import has_checkpoint
    return has_checkpoint(path(out_dir, CHECKPOINT_DIR))


def check_weights(out_dir: str) -> None:
    """:class:`NotARunError` (one line naming the folder) unless ``out_dir`` holds a checkpoint."""
    if not has_weights(out_dir):
        raise NotARunError(f"{out_dir} holds no checkpoint (looked in "
                           f"{path(out_dir, CHECKPOINT_DIR)}); the run must be trained with "
                           f"keep_checkpoints >= 1")


def restore_variables(out_dir: str) -> tuple[Any, Any]:
    """(params, batch_stats) of the newest checkpoint in ``out_dir/checkpoints``.

    Restored without a target (plain nested dicts of arrays), so the optimizer state's structure
    (which depends on the constraints) need not be rebuilt.
    """
    import jax
    import jax.numpy as jnp

    from sfw_jax.training.checkpoint import Checkpointer

    check_weights(out_dir)
    with Checkpointer(path(out_dir, CHECKPOINT_DIR), max_to_keep=1, async_save=False) as ckpt:
        state, _ = ckpt.restore(None)
    to_jnp = lambda t: jax.tree.map(jnp.asarray, t)  # noqa: E731
    return to_jnp(state["params"]), to_jnp(state.get("batch_stats") or {})
