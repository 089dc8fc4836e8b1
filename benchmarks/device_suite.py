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
3. ``topk``: ``benchmarks.bench_topk.time_size`` for every method of ``sfw_jax.topk.METHODS``
   (read at run time), K = 5 %, float32 and bfloat16, at the ResNet-18 tensor sizes from 36,864
   to 2,359,296 entries: median ms.
4. ``update``: ``benchmarks.bench_update.bench`` (SFW update vs ``optax.sgd(momentum=0.9)`` on
   the ResNet-18 tree) for every method: ms and ratio = sfw_ms / sgd_ms; then the op counts of
   ``benchmarks.op_count.op_counts`` (recorded as skipped, with the reason, when that module
   does not import).
5. ``train_step``: ``benchmarks.bench_train_step.bench_model`` (ResNet-18, batch 128, method
   'auto'), fp32 and bf16: SFW and SGD ms, ratio = sfw_ms / sgd_ms, images/s.
6. ``study``: ResNet-18 on the CIFAR-10 JPEG archive (``--data``) with the configs of the presets
   ``paper-resnet18-cifar10`` (SFW K-sparse) and ``paper-resnet18-cifar10-sgd`` (SGD) of
   ``sfw_jax.config``. Each method first trains one epoch of a run started with
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
import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECTIONS = ("env", "tests", "topk", "update", "train_step", "study")
REPORT_JSON = "device_report.json"
REPORT_MD = "device_report.md"
PLOT_FILE = "accuracy_vs_sparsity.png"
TESTS_LOG = "tests.log"
MAX_FILES = 8                      # what the device tool copies back from $OUT
MAX_FILE_BYTES = 16 * 2 ** 20
TESTS_LOG_CHARS = 2 * 2 ** 20

DEFAULT_DATA = "data/cifar10-jpeg.tar.gz"
SFW_PRESET = "paper-resnet18-cifar10"
SGD_PRESET = "paper-resnet18-cifar10-sgd"
STUDY_PRESET = "paper-resnet18-cifar10"    # experiments.study_presets: scopes, retrain lr
SPARSITY_PERCENTS = (0, 50, 70, 80, 90, 95, 98)
RETRAIN_PERCENTS = (90, 95)
RETRAIN_EPOCHS = 1
PROBE_EPOCHS = 4
"""Epochs of the run whose first epoch is timed. 4 shares epoch 1's lr with E in {2, ..., 5}
under the presets' milestone schedules (lr / 10 at E // 3 and 2E // 3), the E a short budget
gives, so those runs resume; at E >= 6 they retrain from scratch (one epoch more)."""
TOPK_MIN_N, TOPK_MAX_N = 36_864, 2_359_296
OVERRUN_FRACTION = 0.125           # post-training study steps still start this long (times the
                                   # budget) after the deadline: 60 s of a 480 s budget, whose
                                   # command limit is 600 s
COMPILE_EVENT_PREFIX = "/jax/core/compile/"
CACHE_EVENTS = ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one suite run.

    tests: pytest arguments (files, ``-k``) of the ``tests`` section; tests_timeout_s: its
      subprocess timeout (at most the section's share).
    topk_sizes: tensor sizes of ``topk`` (None: the ResNet-18 leaf sizes in [36864, 2359296]);
      topk_dtypes, topk_reps: dtypes and timed calls per measurement.
    update_tree: leaf shapes of the ``update`` tree (None: ResNet-18's params); update_reps:
      timed calls; op_count_methods: methods passed to ``op_counts`` (None: all; empty: not
      called).
    train_model, train_model_kwargs, train_batch, train_reps, train_precisions: ``train_step``.
    study_overrides: ``TrainConfig`` fields set on top of the presets (model and data size);
      study_test_subset: evaluate on a seeded random subset of this many test images (None:
      all); study_max_epochs: cap on E (None: the presets' epochs); synthetic_data: (train, test)
      images per class of the synthetic archive used when ``--data`` is absent (None: absent
      data is an error).
    budget_s: default ``--budget-s``; shares: seconds of each timing section at that budget
      (scaled with ``--budget-s``).
    """

    name: str
    tests: tuple[str, ...]
    tests_timeout_s: float
    topk_sizes: tuple[int, ...] | None
    topk_dtypes: tuple[str, ...]
    topk_reps: int
    update_tree: Mapping[str, Any] | None
    update_reps: int
    op_count_methods: tuple[str, ...] | None
    train_model: str
    train_model_kwargs: Mapping[str, Any]
    train_batch: int
    train_reps: int
    train_precisions: tuple[str, ...]
    study_overrides: Mapping[str, Any]
    study_test_subset: int | None
    study_max_epochs: int | None
    synthetic_data: tuple[int, int] | None
    budget_s: float
    shares: Mapping[str, float]


# The accelerator subset (37 tests, ~20 s on the 2-core CPU): the counting top-k paths on large
# arrays with ties / zeros / constants, signed zeros and subnormals, the K-sparse LMO in every
# dtype, the SFW step against its NumPy reference, bfloat16 params, pruning masks. Hypothesis
# tests that compile a new shape per example are left out (a compilation costs more on XLA:GPU
# than on XLA:CPU), as is the native CPU kernel.
ACCELERATOR_TESTS = (
    "tests/test_topk.py", "tests/test_lmo.py", "tests/test_sfw.py", "tests/test_pruning.py",
    "-k", "test_large_arrays_every_counting_path or test_signed_zero_and_subnormals or "
          "test_k_sparse_lmo_zero_gradient_is_vertex or test_k_sparse_lmo_dtypes_and_jit or "
          "(test_matches_numpy_reference_step and k_sparse) or test_bfloat16_params or "
          "test_counts_exact_and_ordered_at_many_sparsities or "
          "test_keep_masked_keeps_pruned_weights_zero")
CI_TESTS = ("tests/test_topk.py", "-k", "test_counts_pass_exact or test_auto_resolution_per_backend")

# A few-leaf tree for the rehearsal: a conv kernel of 36,864 entries (which 'auto' sends down
# its counting path), a dense kernel, their biases.
SMALL_TREE = {"conv": {"kernel": (3, 3, 64, 64), "bias": (64,)},
              "fc": {"kernel": (1024, 10), "bias": (10,)}}

PLANS: dict[str, Plan] = {
    "full": Plan(
        name="full", tests=ACCELERATOR_TESTS, tests_timeout_s=90.0,
        topk_sizes=None, topk_dtypes=("float32", "bfloat16"), topk_reps=15,
        update_tree=None, update_reps=30, op_count_methods=None,
        train_model="resnet18", train_model_kwargs={}, train_batch=128, train_reps=20,
        train_precisions=("fp32", "bf16"),
        study_overrides={}, study_test_subset=None, study_max_epochs=None,
        synthetic_data=None,
        budget_s=480.0,
        shares={"env": 10.0, "tests": 90.0, "topk": 45.0, "update": 75.0, "train_step": 70.0}),
    "rehearse": Plan(
        name="rehearse", tests=ACCELERATOR_TESTS, tests_timeout_s=120.0,
        topk_sizes=(36_864,), topk_dtypes=("float32", "bfloat16"), topk_reps=3,
        update_tree=SMALL_TREE, update_reps=5, op_count_methods=("sort",),
        train_model="mlp", train_model_kwargs={"hidden": (64,)},
        train_batch=32, train_reps=3, train_precisions=("fp32", "bf16"),
        study_overrides={"arch": "simple_cnn", "model_kwargs": {"width": 0.25, "use_bn": True},
                         "max_train_samples": 2560, "batch_size": 64, "init_norm_samples": 4},
        study_test_subset=1000, study_max_epochs=3, synthetic_data=(100, 20),
        budget_s=240.0,
        shares={"env": 10.0, "tests": 120.0, "topk": 30.0, "update": 40.0, "train_step": 40.0}),
    "ci": Plan(
        name="ci", tests=CI_TESTS, tests_timeout_s=60.0,
        topk_sizes=(2048,), topk_dtypes=("float32", "bfloat16"), topk_reps=2,
        update_tree={"w": (64, 32), "b": (32,)}, update_reps=2, op_count_methods=(),
        train_model="mlp", train_model_kwargs={"hidden": (16,)}, train_batch=8, train_reps=2,
        train_precisions=("fp32", "bf16"),
        study_overrides={"arch": "mlp", "model_kwargs": {"hidden": [16]}, "batch_size": 16,
                         "init_norm_samples": 2, "eval_batch_size": 100},
        study_test_subset=None, study_max_epochs=2, synthetic_data=(8, 4),
        budget_s=600.0,
        shares={"env": 10.0, "tests": 60.0, "topk": 120.0, "update": 120.0,
                "train_step": 120.0}),
}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def _jsonable(x: Any) -> Any:
    """``x`` with numpy scalars / arrays, tuples and non-str keys made JSON-able."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return repr(x)


class CompileClock:
    """Wall-clock-stamped compilation durations (``jax.monitoring``) and cache hit counts."""

    def __init__(self):
        self.events: list[tuple[float, float]] = []       # (end time, seconds)
        self.cache = {e: 0 for e in CACHE_EVENTS}
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)

    def _duration(self, event: str, duration: float, **kw: Any) -> None:
        if event.startswith(COMPILE_EVENT_PREFIX):
            self.events.append((time.time(), float(duration)))

    def _event(self, event: str, **kw: Any) -> None:
        if event in self.cache:
            self.cache[event] += 1

    def between(self, t0: float, t1: float) -> float:
        """Seconds of compilation that ended in ``[t0, t1]``."""
        return float(sum(d for t, d in self.events if t0 <= t <= t1))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            jax.monitoring.unregister_event_duration_listener(self._duration)
            jax.monitoring.unregister_event_listener(self._event)


class Suite:
    """One run: the plan, the output folder, the budget's deadline, the compilation clock
    (``clock``; :meth:`close` unregisters it) and the report being written."""

    def __init__(self, out_dir: str, plan: Plan, budget_s: float, data: str | None,
                 tmp_dir: str, argv: Sequence[str] = ()):
        self.out = out_dir
        self.plan = plan
        self.budget_s = float(budget_s)
        self.data = data
        self.tmp = tmp_dir
        self.t0 = time.time()
        self.deadline = self.t0 + self.budget_s
        self.clock = CompileClock()
        self.report: dict[str, Any] = {
            "suite": "benchmarks.device_suite", "plan": plan.name, "budget_s": self.budget_s,
            "command": " ".join(["python -m benchmarks.device_suite", *argv]),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "git": _git_revision(), "sections": {}, "finished": None, "wall_s": None}

    def share_deadline(self, name: str) -> float:
        """End of a timing section's share (scaled by ``budget_s / plan.budget_s``), never past
        the deadline."""
        share = self.plan.shares.get(name, 0.0) * self.budget_s / self.plan.budget_s
        return min(time.time() + share, self.deadline)

    def put(self, name: str, record: dict) -> None:
        """Store a section's record and rewrite the JSON and Markdown reports."""
        self.report["sections"][name] = _jsonable(record)
        self.report["wall_s"] = round(time.time() - self.t0, 2)
        self.write()

    def close(self) -> None:
        self.clock.close()

    def write(self) -> None:
        write_ascii(os.path.join(self.out, REPORT_JSON),
                    json.dumps(self.report, indent=1, allow_nan=False) + "\n")
        write_ascii(os.path.join(self.out, REPORT_MD), render_markdown(self.report))


def write_ascii(path: str, text: str) -> None:
    """Write ``text`` (non-ASCII characters escaped, so no locale can fail the write) to a temp
    file beside ``path``, then ``os.replace`` it: readers see the old or the new file.

    The reports do not go through ``experiments._runs`` (which imports the training stack and
    Orbax): a package that fails to import on the device must fail its section, not the report.
    """
    with tempfile.NamedTemporaryFile("w", encoding="ascii", prefix=".tmp-", delete=False,
                                     dir=os.path.dirname(os.path.abspath(path))) as f:
        f.write(text.encode("ascii", "backslashreplace").decode("ascii"))
    os.replace(f.name, path)


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", REPO_ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _log(msg: str) -> None:
    print(f"[device_suite {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _error_text(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}\n" + "".join(tb)[-3000:]


# ---------------------------------------------------------------------------------------------
# Sections (each imports what it uses: a module that fails to import fails only its section)
# ---------------------------------------------------------------------------------------------

def section_env(s: Suite, deadline: float) -> dict:
    import flax
    import jaxlib
    import optax

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    devices = jax.devices()
    memory = []
    for d in devices:
        try:
            memory.append(d.memory_stats())
        except Exception as e:  # some backends do not implement it
            memory.append({"unavailable": f"{type(e).__name__}: {e}"})
    smi = None
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,"
                 "power.limit", "--format=csv"], capture_output=True, text=True,
                timeout=15).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            smi = f"{type(e).__name__}: {e}"
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
        "optax": optax.__version__, "orbax": version("orbax-checkpoint"),
        "numpy": np.__version__, "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind, "device_count": jax.device_count(),
        "devices": [str(d) for d in devices], "memory_stats": memory,
        "cpu_count": os.cpu_count(), "nvidia_smi": smi,
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
                                               "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_PLATFORMS",
                                               "CUDA_VISIBLE_DEVICES")},
    }


_RESULT_RE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_pytest_lines(lines: Sequence[str]) -> dict:
    """Counts and failing ids from ``pytest -v`` lines (``tests/x.py::test_y PASSED [ 5%]``).

    A test whose call failed after its setup passed prints one line per phase; the last word of
    each id counts (a teardown ERROR after PASSED counts as an error).
    """
    outcome: dict[str, str] = {}
    for line in lines:
        m = _RESULT_RE.match(line.strip())
        if m:
            outcome[m.group(1)] = m.group(2)
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped", "xfailed", "xpassed")}
    key = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped",
           "XFAIL": "xfailed", "XPASS": "xpassed"}
    for o in outcome.values():
        counts[key[o]] += 1
    counts["failing"] = sorted(t for t, o in outcome.items() if o in ("FAILED", "ERROR"))
    return counts


def section_tests(s: Suite, deadline: float) -> dict:
    timeout = max(1.0, min(s.plan.tests_timeout_s, deadline - time.time()))
    args = list(s.plan.tests)
    cmd = [sys.executable, "-m", "pytest", *args, "-v", "-p", "no:cacheprovider", "--tb=short",
           "-o", "console_output_style=classic"]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH"))
                                          if p))
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
    reader.join(timeout=10)
    text = "".join(lines)
    write_ascii(os.path.join(s.out, TESTS_LOG), text[-TESTS_LOG_CHARS:])
    res = parse_pytest_lines(text.splitlines())
    summary = next((ln.strip("= \n") for ln in reversed(lines)
                    if re.search(r"\d+ (passed|failed|error)", ln)), None)
    out = {"command": " ".join(cmd[1:]), "timeout_s": round(timeout, 1),
           "returncode": proc.returncode, "timed_out": timed_out, "summary": summary, **res}
    if timed_out:
        out["status"] = "error"
        out["error"] = (f"timed out after {timeout:.0f} s (counts are the tests finished by "
                        f"then); see {TESTS_LOG}")
    elif res["failed"] or res["errors"] or proc.returncode != 0:
        out["status"] = "error"
        out["error"] = (f"pytest exit code {proc.returncode}: {res['failed']} failed, "
                        f"{res['errors']} errors: {', '.join(res['failing'][:20])}; see "
                        f"{TESTS_LOG}")
    return out


def resnet18_sizes(lo: int = TOPK_MIN_N, hi: int = TOPK_MAX_N) -> list[int]:
    """Distinct leaf sizes of the ResNet-18 (CIFAR) params in [lo, hi] (shapes only)."""
    from sfw_jax.models import get_model

    model = get_model("resnet18", 10)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False),
                            jax.random.key(0))["params"]
    return sorted({int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)
                   if lo <= int(np.prod(x.shape)) <= hi})


def run_jobs(jobs: Mapping[str, Callable[[], Any]], deadline: float
             ) -> tuple[dict[str, Any], list[str], list[str]]:
    """Call the jobs in order while ``time.time() <= deadline``.

    Returns (label -> result, labels not started, ``"label: error"`` of the jobs that raised);
    a job that raises does not stop the next one.
    """
    results, skipped, errors = {}, [], []
    for label, job in jobs.items():
        if time.time() > deadline:
            skipped.append(label)
            continue
        t0 = time.time()
        try:
            results[label] = job()
        except Exception as e:
            errors.append(f"{label}: {type(e).__name__}: {e}")
        _log(f"  {label}: {time.time() - t0:.1f} s")
    return results, skipped, errors


def _with_errors(out: dict, errors: Sequence[str], what: str) -> dict:
    if errors:
        out.update(status="error", error=f"{len(errors)} {what} failed: {errors[0]}")
    return out


def section_topk(s: Suite, deadline: float) -> dict:
    from benchmarks import bench_topk
    from sfw_jax.topk import METHODS

    sizes = list(s.plan.topk_sizes or resnet18_sizes())
    # lax.top_k is a partial sort on XLA:CPU (~0.4 s at n = 2.36M); elsewhere time it everywhere
    sort_max = 600_000 if jax.default_backend() == "cpu" else None
    label = "{} n={} {}".format
    jobs = {label(d, n, m): functools.partial(bench_topk.time_size, n, [m], d,
                                              s.plan.topk_reps, sort_max)
            for d in s.plan.topk_dtypes for n in sizes for m in METHODS}
    res, skipped, errors = run_jobs(jobs, deadline)
    table: dict[str, dict[str, dict]] = {d: {} for d in s.plan.topk_dtypes}
    for d in s.plan.topk_dtypes:
        for n in sizes:
            row = {k: v for m in METHODS for k, v in res.get(label(d, n, m), {}).items()}
            if row:
                table[d][str(n)] = row
    return _with_errors(
        {"methods": list(METHODS), "sizes": sizes, "k_rule": "min(max(10, floor(0.05 n)), n)",
         "reps": s.plan.topk_reps, "sort_max": sort_max, "ms": table, "skipped": skipped,
         "errors": errors}, errors, "measurement(s)")


def tree_of_shapes(shapes: Mapping[str, Any], seed: int = 0) -> Any:
    """A params pytree with ``shapes``' structure: float32 N(0, 0.05^2) leaves (NumPy draws,
    nothing to compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda shape: jnp.asarray(0.05 * rng.standard_normal(shape), jnp.float32),
                        shapes, is_leaf=lambda x: isinstance(x, tuple))


def _op_counts(methods: Sequence[str], deadline: float) -> dict:
    """``benchmarks.op_count.op_counts(methods=[m])`` per method until ``deadline``."""
    try:
        from benchmarks.op_count import op_counts
    except Exception as e:  # the module is optional: recorded, not fatal
        return {"status": "skipped", "reason": f"benchmarks.op_count does not import: "
                                               f"{type(e).__name__}: {e}"}
    counts, skipped, errors = run_jobs(
        {m: functools.partial(op_counts, methods=[m]) for m in methods}, deadline)
    return _with_errors({"status": "ok", "counts": counts, "skipped": skipped}, errors,
                        "method(s)")


def section_update(s: Suite, deadline: float) -> dict:
    from benchmarks import bench_update
    from sfw_jax.topk import METHODS

    tree = s.plan.update_tree
    params = bench_update.resnet18_params() if tree is None else tree_of_shapes(tree)
    leaves = jax.tree.leaves(params)

    def one(m: str) -> dict:
        rec = bench_update.bench(s.plan.update_reps, m, 0, params=params, default=False)
        sfw_ms, sgd_ms = rec["sfw_update_ms"], rec["sgd_update_ms"]
        return {"sfw_ms": sfw_ms, "sgd_ms": sgd_ms, "ratio": round(sfw_ms / sgd_ms, 4),
                "sfw_batched_ms": rec["sfw_batched_update_ms"],
                "batched_ratio": round(rec["sfw_batched_update_ms"] / sgd_ms, 4),
                "sfw": rec["xla_summary"], "sfw_batched": rec["xla_batched_summary"],
                "sgd": rec["sgd_summary"]}

    rows, skipped, errors = run_jobs({m: functools.partial(one, m) for m in METHODS}, deadline)
    if s.plan.op_count_methods == ():
        ops = {"status": "skipped", "reason": f"plan {s.plan.name!r} does not count ops"}
    elif time.time() > deadline:
        ops = {"status": "skipped", "reason": "the section's share of the budget was spent"}
    else:
        ops = _op_counts(METHODS if s.plan.op_count_methods is None
                         else s.plan.op_count_methods, deadline)
    if ops["status"] == "error":
        errors.append(f"op counts: {ops['error']}")
    return _with_errors(
        {"tree": "resnet18" if tree is None else "small",
         "params": int(sum(x.size for x in leaves)), "tensors": len(leaves),
         "reps": s.plan.update_reps,
         "optimizers": "sfw(0.1, k_sparse k=10 k_frac=0.05 value=15 initialization, "
                       "momentum=0.9, rescale='gradient') vs optax.sgd(0.1, momentum=0.9)",
         "methods": rows, "skipped": skipped, "errors": errors, "op_counts": ops},
        errors, "measurement(s)")


def section_train_step(s: Suite, deadline: float) -> dict:
    from benchmarks import bench_train_step

    def one(prec: str) -> dict:
        r = bench_train_step.bench_model(s.plan.train_model, s.plan.train_batch,
                                         s.plan.train_reps, "auto", prec,
                                         dict(s.plan.train_model_kwargs))
        b, sfw_ms, sgd_ms = r["batch"], r["sfw_step_ms"], r["sgd_step_ms"]
        return {"sfw_ms": sfw_ms, "sgd_ms": sgd_ms, "ratio": round(sfw_ms / sgd_ms, 4),
                "paired_ratio": r["paired_ratio"],
                "sfw_images_per_s": round(1e3 * b / sfw_ms, 1),
                "sgd_images_per_s": round(1e3 * b / sgd_ms, 1), "sfw": r["sfw"], "sgd": r["sgd"]}

    rows, skipped, errors = run_jobs(
        {p: functools.partial(one, p) for p in s.plan.train_precisions}, deadline)
    return _with_errors(
        {"model": s.plan.train_model, "model_kwargs": dict(s.plan.train_model_kwargs),
         "batch": s.plan.train_batch, "method": "auto", "reps": s.plan.train_reps,
         "precisions": rows, "skipped": skipped, "errors": errors}, errors, "precision(s)")


# ---------------------------------------------------------------------------------------------
# Study
# ---------------------------------------------------------------------------------------------

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


def _study_data(s: Suite) -> tuple[str, dict]:
    path = s.data or DEFAULT_DATA
    if not os.path.isabs(path) and not os.path.exists(path):
        alt = os.path.join(REPO_ROOT, path)
        path = alt if os.path.exists(alt) else path
    if os.path.exists(path):
        return os.path.abspath(path), {"source": "archive", "path": os.path.abspath(path),
                                       "bytes": os.path.getsize(path)}
    if s.plan.synthetic_data is None:
        raise FileNotFoundError(
            f"--data {path!r} does not exist; copy the archive into the checkout first "
            f"(mkdir -p data && cp ../shared/data/cifar10-jpeg.tar.gz data/) and carry 'data'")
    tr, te = s.plan.synthetic_data
    syn = write_synthetic_archive(os.path.join(s.tmp, "synthetic-cifar.tar.gz"), tr, te)
    return syn, {"source": "synthetic", "path": syn, "missing": path,
                 "train_per_class": tr, "test_per_class": te}


class _StopAfterFirstEpoch(Exception):
    def __init__(self, record: dict):
        super().__init__("stopped after the first epoch")
        self.record = record


def _stop_after_first_epoch(record: dict, state: Any) -> None:
    raise _StopAfterFirstEpoch(record)


def probe_epoch(cfg: Any, dataset: Any, clock: CompileClock) -> dict:
    """Train epoch 1 of ``cfg`` (``cfg.out_dir``, checkpoint kept) and stop: its times."""
    from sfw_jax import train as train_lib

    t0 = time.time()
    record = None
    try:
        train_lib.train(cfg, dataset, callbacks=[_stop_after_first_epoch])
    except _StopAfterFirstEpoch as stop:
        record = stop.record
    wall = time.time() - t0
    if record is None:
        raise RuntimeError(f"the probe of {cfg.optimizer} finished without reaching the "
                           f"callback (epochs={cfg.epochs})")
    end = t0 + record["elapsed"]
    compile_s = clock.between(end - record["epoch_time"], end)
    setup_compile_s = clock.between(t0, t0 + wall) - compile_s
    return {"first_epoch_s": round(record["epoch_time"], 3),
            "compile_in_first_epoch_s": round(compile_s, 3),
            "epoch_s": round(max(record["epoch_time"] - compile_s, 1e-3), 3),
            "setup_s": round(wall - record["epoch_time"], 3),
            "compile_in_setup_s": round(setup_compile_s, 3), "wall_s": round(wall, 3),
            "train_loss": record["train_loss"], "train_acc": record["train_acc"]}


def resume_is_exact(cfg: Any, probe_epochs: int, epochs: int) -> bool:
    """Whether finishing a run stopped after epoch 1 of ``probe_epochs`` with ``epochs`` epochs
    trains exactly as a fresh ``epochs``-epoch run: epoch 1's lr (saved in the checkpoint)
    agrees under both totals (epoch 0's is the base lr for every schedule; the loss-trend rule
    starts after epoch 20)."""
    from sfw_jax import config as config_lib
    from sfw_jax import schedules

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


def post_training_estimate(probe: Mapping[str, dict], n_train: int, n_test: int,
                           levels: int, scopes: int, retrain_levels: int) -> float:
    """Seconds of the study after the probes, besides training epochs: per method the final
    call's setup (the probe's, less its compilation: the final call reads the compilation
    cache) and test evaluation, the sweep's evaluations and, for SGD, the retraining (one epoch
    plus its compilation and two evaluations per level). An evaluation pass over the test split
    is taken as a third of an SGD epoch scaled by n_test / n_train (forward only)."""
    sgd = probe["sgd"]
    eval_s = sgd["epoch_s"] * n_test / max(n_train, 1) / 3.0
    eval_compile = 0.3 * sgd["compile_in_first_epoch_s"]
    per_method = sum(p["setup_s"] - p["compile_in_setup_s"] + eval_s + eval_compile
                     + levels * scopes * eval_s for p in probe.values())
    retrain = retrain_levels * (RETRAIN_EPOCHS * sgd["epoch_s"] + sgd["compile_in_first_epoch_s"]
                                + 2 * eval_s)
    return 1.2 * (per_method + retrain) + 5.0


def _curve(rows: Sequence[dict], scope: str) -> dict[str, float]:
    return {f"{100 * r['target_sparsity']:g}": r["test_acc"] for r in rows
            if r["scope"] == scope and not r["bn_recal"]}


def section_study(s: Suite, deadline: float) -> dict:
    from experiments import _runs, plots
    from experiments import prune_sweep as sweep_lib
    from experiments import retrain as retrain_lib
    from experiments.study_presets import get_study_preset
    from sfw_jax import config as config_lib
    from sfw_jax import train as train_lib
    from sfw_jax.data import load_dataset

    preset = get_study_preset(STUDY_PRESET)
    out: dict[str, Any] = {"presets": {"sfw_ksparse": SFW_PRESET, "sgd": SGD_PRESET},
                           "overrides": dict(s.plan.study_overrides)}

    t_start = time.time()

    def progress(stage: str) -> None:
        """Record what the study has so far (kept if it fails or is killed later)."""
        s.put("study", {**out, "status": "error", "stage": stage,
                        "error": f"did not finish (last stage reached: {stage})",
                        "seconds": round(time.time() - t_start, 2)})
        _log(f"study: {stage}")

    data_path, out["data"] = _study_data(s)
    runs_dir = os.path.join(s.tmp, "runs")
    base = dict(data_dir=data_path, keep_checkpoints=1, progress=False,
                **s.plan.study_overrides)
    cfgs = {"sfw_ksparse": config_lib.from_preset(SFW_PRESET, **base),
            "sgd": config_lib.from_preset(SGD_PRESET, **base)}
    for c in cfgs.values():
        config_lib.validate(c)                  # a bad preset fails here, before any work
    first = cfgs["sfw_ksparse"]
    if not _runs.same_data(first, cfgs["sgd"]):
        raise ValueError(f"presets {SFW_PRESET!r} and {SGD_PRESET!r} load different data")
    max_epochs = min(first.epochs, cfgs["sgd"].epochs, s.plan.study_max_epochs or 10 ** 9)

    t = time.time()
    ds = load_dataset(first.dataset, data_dir=data_path, val_fraction=first.val_fraction,
                      seed=first.seed, image_size=first.image_size, use_cache=False)
    if s.plan.study_test_subset is not None and s.plan.study_test_subset < len(ds.test):
        keep = np.random.default_rng(0).permutation(len(ds.test))[:s.plan.study_test_subset]
        ds = dataclasses.replace(ds, test=ds.test.take(np.sort(keep)))
    out["data"].update(decode_s=round(time.time() - t, 2), train=len(ds.train),
                       val=len(ds.val), test=len(ds.test), image_shape=ds.info.image_shape)
    n_train = len(train_lib.training_subset(first, ds.train))
    out["data"]["trained_on"] = n_train
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

    loaded = {m: _runs.load_trained(d, ds) for m, d in run_dirs.items()}
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
            by_scope[sc][m] = _curve(rows, sc)
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
        retrained = [{k: r[k] for k in ("sparsity", "epochs", "lr", "oneshot_test_acc",
                                         "test_acc", "final_sparsity", "wall_time")}
                     for r in recs]
        acc[f"sgd_retrain_{RETRAIN_EPOCHS}ep"] = {f"{100 * r['sparsity']:g}": r["test_acc"]
                                                  for r in recs}
        out["retrain"] = {"status": "ok", "records": retrained,
                          "seconds": round(time.time() - t, 2)}
    out["accuracy"] = acc

    labels = {"sfw_ksparse": "SFW K-sparse", "sgd": "SGD"}
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


SECTION_FUNCS: dict[str, Callable[[Suite, float], dict]] = {
    "env": section_env, "tests": section_tests, "topk": section_topk, "update": section_update,
    "train_step": section_train_step, "study": section_study}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

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
        _log(f"section {name} (share ends in {deadline - t0:.0f} s, budget left "
             f"{s.deadline - t0:.0f} s)")
        try:
            rec = SECTION_FUNCS[name](s, deadline)
            rec.setdefault("status", "ok")
        except Exception as e:
            # keep what the section recorded on the way (the study's stages)
            rec = {**s.report["sections"][name], "status": "error", "error": _error_text(e)}
        rec["seconds"] = round(time.time() - t0, 2)
        rec["compile_s"] = round(s.clock.between(t0, time.time()), 2)
        s.put(name, rec)
        _log(f"section {name}: {rec['status']} in {rec['seconds']} s")


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{100 * x:.2f}"


def _md_env(r: dict) -> list[str]:
    mem = r.get("memory_stats") or []
    limit = next((m.get("bytes_limit") for m in mem if isinstance(m, dict)
                  and m.get("bytes_limit")), None)
    return [f"- {r.get('device_count')} x {r.get('device_kind')} ({r.get('backend')}), "
            f"memory limit {'-' if limit is None else f'{limit / 2 ** 30:.1f} GiB'}, "
            f"{r.get('cpu_count')} CPU cores",
            f"- python {r.get('python')}, jax {r.get('jax')}, jaxlib {r.get('jaxlib')}, flax "
            f"{r.get('flax')}, optax {r.get('optax')}, orbax {r.get('orbax')}, numpy "
            f"{r.get('numpy')}"] + ([f"- nvidia-smi: `{r['nvidia_smi']}`"]
                                    if r.get("nvidia_smi") else [])


def _md_tests(r: dict) -> list[str]:
    out = [f"- {r.get('passed')} passed, {r.get('failed')} failed, {r.get('errors')} errors, "
           f"{r.get('skipped')} skipped (timeout {r.get('timeout_s')} s, timed out: "
           f"{r.get('timed_out')}); `{r.get('command')}`"]
    return out + [f"- failing: `{t}`" for t in r.get("failing", [])[:30]]


def _md_topk(r: dict) -> list[str]:
    out = []
    methods = r.get("methods", [])
    for dtype, rows in (r.get("ms") or {}).items():
        out += [f"{dtype}, median ms (K = 5 %):", ""]
        out += _table(["n", "K", "ties", "auto path", *methods],
                      [(n, v.get("k"), v.get("ties"), v.get("auto_path"),
                        *[v.get(m) for m in methods]) for n, v in rows.items()])
        out.append("")
    if r.get("skipped"):
        out.append(f"- skipped (budget): {len(r['skipped'])}: {', '.join(r['skipped'][:10])}")
    return out


def _ratio_table(first: str, rows: Mapping[str, dict],
                 extra: Sequence[tuple[str, str]] = ()) -> list[str]:
    cols = [("SFW ms", "sfw_ms"), ("SGD ms", "sgd_ms"), ("SFW / SGD", "ratio"), *extra]
    return _table([first, *[c for c, _ in cols]],
                  [(k, *[v.get(f) for _, f in cols]) for k, v in (rows or {}).items()])


def _md_update(r: dict) -> list[str]:
    out = [f"{r.get('tree')} tree: {r.get('params')} params in {r.get('tensors')} tensors; "
           f"{r.get('optimizers')}; medians of {r.get('reps')} calls.", ""]
    out += _ratio_table("method", r.get("methods"))
    ops = r.get("op_counts") or {}
    detail = ops.get("reason") or ops.get("error", "").split("\n")[0]
    out += ["", f"- op counts: {ops.get('status')}" + (f" ({detail})" if detail else "")]
    if ops.get("status") == "ok":
        out.append(f"  `{json.dumps(ops.get('counts'), sort_keys=True)[:2000]}`")
    if r.get("skipped"):
        out.append(f"- skipped (budget): {', '.join(r['skipped'])}")
    return out


def _md_train_step(r: dict) -> list[str]:
    out = [f"{r.get('model')} {r.get('model_kwargs') or ''}, batch {r.get('batch')}, method "
           f"{r.get('method')}, medians of {r.get('reps')} alternated steps.", ""]
    return out + _ratio_table("precision", r.get("precisions"),
                              [("paired", "paired_ratio"), ("SFW img/s", "sfw_images_per_s"),
                               ("SGD img/s", "sgd_images_per_s")])


def _md_study(r: dict) -> list[str]:
    d = r.get("data") or {}
    out = [f"- data: {d.get('source')} `{d.get('path')}` ({d.get('train')} train / "
           f"{d.get('test')} test, decoded in {d.get('decode_s')} s)",
           f"- epochs: {r.get('epochs')} (cap {r.get('max_epochs')}); seconds per epoch "
           f"(first epoch minus its compilation): {r.get('seconds_per_epoch')}; runs: "
           f"{r.get('run_mode')}"]
    for m, p in (r.get("probe") or {}).items():
        out.append(f"- {m}: first epoch {p.get('first_epoch_s')} s, of which compilation "
                   f"{p.get('compile_in_first_epoch_s')} s; setup {p.get('setup_s')} s")
    acc = r.get("accuracy") or {}
    if acc:
        levels = sorted({float(p) for a in acc.values() for p in a})
        out += ["", f"Test accuracy (%) after one-shot global magnitude pruning, scope "
                    f"`{r.get('scope')}`:", ""]
        out += _table(["sparsity %", *acc],
                      [(f"{p:g}", *[_pct(a.get(f"{p:g}")) for a in acc.values()])
                       for p in levels])
    if r.get("dense_test_acc"):
        out += ["", f"- dense test accuracy: "
                    + ", ".join(f"{m} {_pct(a)} %" for m, a in r["dense_test_acc"].items())]
    return out


_MD_SECTIONS = {"env": _md_env, "tests": _md_tests, "topk": _md_topk, "update": _md_update,
                "train_step": _md_train_step, "study": _md_study}


def render_markdown(report: dict) -> str:
    """``device_report.md``: the status of every section and its tables."""
    secs = report.get("sections", {})
    out = [f"# Device suite report ({report.get('plan')} plan)", "",
           f"`{report.get('command')}` at {report.get('started')}, git {report.get('git')}, "
           f"budget {report.get('budget_s')} s, wall {report.get('wall_s')} s, finished: "
           f"{report.get('finished')}.", ""]
    out += _table(["section", "status", "seconds", "compile s", "error"],
                  [(n, r.get("status"), r.get("seconds"), r.get("compile_s"),
                    (r.get("error") or "").split("\n")[0][:200]) for n, r in secs.items()])
    for name, r in secs.items():
        out += ["", f"## {name}", ""]
        try:
            out += _MD_SECTIONS[name](r)
        except Exception as e:  # the Markdown must never stop the suite; the JSON has it all
            out.append(f"(cannot render: {type(e).__name__}: {e})")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_suite",
                                description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--out", required=True, help="report folder (at most 8 files land there)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds of work (default: the plan's; 480 for the full plan)")
    p.add_argument("--rehearse", action="store_true",
                   help="the same code path at tiny sizes (= --plan rehearse)")
    p.add_argument("--plan", choices=sorted(PLANS), default=None,
                   help="sizes: full (default), rehearse, ci")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="CIFAR-10 JPEG image-folder archive of the study")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="run only these sections (in the suite's order)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.rehearse and args.plan not in (None, "rehearse"):
        parser.error(f"--rehearse conflicts with --plan {args.plan}")
    plan = PLANS[args.plan or ("rehearse" if args.rehearse else "full")]
    if args.budget_s is not None and not (math.isfinite(args.budget_s) and args.budget_s > 0):
        parser.error(f"--budget-s must be a number > 0, got {args.budget_s}")
    # Recompilations of identical programs (the study's resumed runs, the retrained and the
    # sweep's evaluators) are read from this cache instead of compiled again.
    cache_dir = tempfile.mkdtemp(prefix="device_suite-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    try:
        report = run_suite(args.out, plan, budget_s=args.budget_s, sections=args.sections,
                           data=args.data, argv=argv)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    for name, r in report["sections"].items():
        print(f"{name:11s} {r['status']:8s} {r['seconds']} s "
              f"{(r.get('error') or '').splitlines()[0] if r.get('error') else ''}")
    print(f"wrote {os.path.join(args.out, REPORT_JSON)} and {REPORT_MD} "
          f"({report['wall_s']} s, files: {report['files']})")
    return 0 if all(r["status"] != "error" for r in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
