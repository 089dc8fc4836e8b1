"""The timing sections of the suite: environment, the accelerator test subset, top-k, the SFW
update and the train step. Each imports what it uses, so a module that fails to import fails
only its section."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.suite.plans import (REPO_ROOT, STEPS_PER_CALL_TIMED, TESTS_LOG, TESTS_LOG_CHARS,
                                    TOPK_MAX_N, TOPK_MIN_N)
from benchmarks.suite.report import write_ascii
from benchmarks.suite.runtime import Suite, run_jobs, with_errors


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
    if not os.path.isdir(os.path.join(REPO_ROOT, "tests")):
        return {"status": "skipped", "reason": f"no tests/ beside {REPO_ROOT}: the tests run "
                                               f"from a clone of the repository, not an install"}
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
    from sfw_jax.training.models import get_model

    model = get_model("resnet18", 10)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False),
                            jax.random.key(0))["params"]
    return sorted({int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)
                   if lo <= int(np.prod(x.shape)) <= hi})


def section_topk(s: Suite, deadline: float) -> dict:
    from benchmarks import bench_topk
    from sfw_jax.fw.topk import METHODS

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
    return with_errors(
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
    """``benchmarks.op_count.op_counts``: first the defaults (``sfw_default``,
    ``sfw_accelerator_default``, ``sgd``) under ``"defaults"``, then ``methods=[m]`` per method,
    until ``deadline``."""
    try:
        from benchmarks.op_count import op_counts
    except Exception as e:  # the module is optional: recorded, not fatal
        return {"status": "skipped", "reason": f"benchmarks.op_count does not import: "
                                               f"{type(e).__name__}: {e}"}
    jobs = {"defaults": functools.partial(op_counts, methods=[], defaults=True)}
    jobs.update({m: functools.partial(op_counts, methods=[m], defaults=False) for m in methods})
    counts, skipped, errors = run_jobs(jobs, deadline)
    return with_errors({"status": "ok", "counts": counts, "skipped": skipped}, errors,
                        "method(s)")


def section_update(s: Suite, deadline: float) -> dict:
    from benchmarks import bench_topk, bench_update
    from sfw_jax.fw.topk import METHODS

    tree = s.plan.update_tree
    params = bench_update.resnet18_params() if tree is None else tree_of_shapes(tree)
    leaves = jax.tree.leaves(params)

    def one(m: str, tree: bool) -> dict:
        rec = bench_update.bench(s.plan.update_reps, m, 0, params=params, default=False,
                                 tree=tree)
        sfw_ms, sgd_ms = rec["sfw_update_ms"], rec["sgd_update_ms"]
        out = {"sfw_ms": sfw_ms, "sgd_ms": sgd_ms, "ratio": round(sfw_ms / sgd_ms, 4),
               "sfw_batched_ms": rec["sfw_batched_update_ms"],
               "batched_ratio": round(rec["sfw_batched_update_ms"] / sgd_ms, 4),
               "sfw": rec["xla_summary"], "sfw_batched": rec["xla_batched_summary"],
               "sgd": rec["sgd_summary"]}
        if tree:
            out.update(sfw_tree_ms=rec["sfw_tree_update_ms"], tree_ratio=rec["tree_ratio"],
                       sfw_tree=rec["xla_tree_summary"])
        return out

    # first the K-sparse selections of all leaves at once: one segmented search over the whole
    # tree against the per-shape-group vmap and the per-leaf calls (bench_topk --tree)
    names = list(bench_topk.tree_selections(leaves))
    selection, sel_skipped, sel_errors = run_jobs(
        {n: functools.partial(bench_topk.time_tree, s.plan.update_reps, params, names=[n])
         for n in names}, deadline)
    selection = {n: r[n] for n, r in selection.items()}
    # the tree path (the GPU / TPU default; the same for every method) with the first method
    rows, skipped, errors = run_jobs(
        {m: functools.partial(one, m, m == METHODS[0]) for m in METHODS}, deadline)
    skipped += [f"selection {n}" for n in sel_skipped]
    errors += [f"selection {e}" for e in sel_errors]
    if s.plan.op_count_methods == ():
        ops = {"status": "skipped", "reason": f"plan {s.plan.name!r} does not count ops"}
    elif time.time() > deadline:
        ops = {"status": "skipped", "reason": "the section's share of the budget was spent"}
    else:
        ops = _op_counts(METHODS if s.plan.op_count_methods is None
                         else s.plan.op_count_methods, deadline)
    if ops["status"] == "error":
        errors.append(f"op counts: {ops['error']}")
    return with_errors(
        {"tree": "resnet18" if tree is None else "small",
         "params": int(sum(x.size for x in leaves)), "tensors": len(leaves),
         "reps": s.plan.update_reps,
         "optimizers": "sfw(0.1, k_sparse k=10 k_frac=0.05 value=15 initialization, "
                       "momentum=0.9, rescale='gradient') vs optax.sgd(0.1, momentum=0.9)",
         "methods": rows, "selection": selection, "skipped": skipped, "errors": errors,
         "op_counts": ops},
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

    jobs = {p: functools.partial(one, p) for p in s.plan.train_precisions}
    # the loop's own step at 1 and 8 optimizer steps per jitted call (STEPS_PER_CALL's measure)
    jobs["steps_per_call"] = functools.partial(
        bench_train_step.bench_steps_per_call, s.plan.train_model, s.plan.train_batch,
        s.plan.train_reps, STEPS_PER_CALL_TIMED, "fp32", dict(s.plan.train_model_kwargs))
    rows, skipped, errors = run_jobs(jobs, deadline)
    per_call = rows.pop("steps_per_call", None)
    return with_errors(
        {"model": s.plan.train_model, "model_kwargs": dict(s.plan.train_model_kwargs),
         "batch": s.plan.train_batch, "method": "auto", "reps": s.plan.train_reps,
         "precisions": rows, "steps_per_call": per_call, "skipped": skipped,
         "errors": errors}, errors, "measurement(s)")
