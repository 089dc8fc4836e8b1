"""What a suite run carries: the budget and its deadlines, the compilation clock, the report
being written, and the helpers that run timed jobs inside a share of the budget."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
import traceback
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax

from benchmarks.suite.plans import (CACHE_EVENTS, COMPILE_EVENT_PREFIX, REPO_ROOT, REPORT_JSON,
                                    REPORT_MD, Plan)
from benchmarks.suite.report import jsonable, render_markdown, write_ascii


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
            "git": git_revision(), "sections": {}, "finished": None, "wall_s": None}

    def share_deadline(self, name: str) -> float:
        """End of a timing section's share (scaled by ``budget_s / plan.budget_s``), never past
        the deadline."""
        share = self.plan.shares.get(name, 0.0) * self.budget_s / self.plan.budget_s
        return min(time.time() + share, self.deadline)

    def put(self, name: str, record: dict) -> None:
        """Store a section's record and rewrite the JSON and Markdown reports."""
        self.report["sections"][name] = jsonable(record)
        self.report["wall_s"] = round(time.time() - self.t0, 2)
        self.write()

    def close(self) -> None:
        self.clock.close()

    def write(self) -> None:
        write_ascii(os.path.join(self.out, REPORT_JSON),
                    json.dumps(self.report, indent=1, allow_nan=False) + "\n")
        write_ascii(os.path.join(self.out, REPORT_MD), render_markdown(self.report))


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", REPO_ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def log(msg: str, who: str = "device_suite") -> None:
    print(f"[{who} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def compilation_cache(prefix: str) -> Iterator[str]:
    """JAX's persistent compilation cache in a fresh temp dir (removed on exit), for programs
    that take at least 0.5 s to compile: a recompilation of the same program (a resumed run,
    a second evaluator or train step of the same shapes) is read from it instead."""
    cache_dir = tempfile.mkdtemp(prefix=prefix)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    try:
        yield cache_dir
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def error_text(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}\n" + "".join(tb)[-3000:]


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
        log(f"  {label}: {time.time() - t0:.1f} s")
    return results, skipped, errors


def with_errors(out: dict, errors: Sequence[str], what: str) -> dict:
    if errors:
        out.update(status="error", error=f"{len(errors)} {what} failed: {errors[0]}")
    return out
