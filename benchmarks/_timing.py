"""Shared timing helpers for the benchmarks (never used by tests).

Timing model: a jit-compiled function is called ``warmup`` times (compilation + caches), then
``reps`` times; each call is timed with ``time.perf_counter`` around the call and
``jax.block_until_ready`` of its outputs. We report the median (robust to the noise of a shared
2-core machine) and the minimum. Stateful steps (``state = step(*state, *extra)``) carry their
outputs into the next call so that donated buffers stay valid.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np


def _check_reps(reps: int, warmup: int) -> None:
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")


def time_stateful(step: Callable[..., tuple], state: tuple, extra: Sequence[Any] = (), *,
                  reps: int = 20, warmup: int = 3) -> tuple[list[float], tuple]:
    """Times ``state = step(*state, *extra)``; returns (per-call ms list, final state).

    ``step`` may donate the ``state`` buffers (``donate_argnums``): each call consumes the previous
    call's outputs only. (:func:`time_interleaved` with one step.)
    """
    times, states = time_interleaved({"step": (step, state, extra)}, reps=reps, warmup=warmup)
    return times["step"], states["step"]


def time_interleaved(steps: dict[str, tuple[Callable[..., tuple], tuple, Sequence[Any]]], *,
                     reps: int = 20, warmup: int = 3
                     ) -> tuple[dict[str, list[float]], dict[str, tuple]]:
    """Times several stateful steps in alternation: rep i calls every step once, in order.

    ``steps`` maps a name to ``(step, state, extra)`` as for :func:`time_stateful`. Alternating
    the calls exposes every step to the same machine load, so the ratio of two medians (and
    :func:`paired_ratio`) does not drift with the load as back-to-back blocks of reps do.
    Meant for long steps (full training steps, >= 100 ms). A short step loses the caches its
    previous call warmed (``python -m benchmarks.bench_update`` vs the same with
    ``--interleaved``: the optax SGD update of ResNet-18 took 5.2 vs 8.9 ms), so ``bench_update``
    times blocks by default.
    Returns (name -> per-call ms list, name -> final state).
    """
    _check_reps(reps, warmup)
    states = {}
    for name, (step, state, extra) in steps.items():
        for _ in range(warmup):
            state = step(*state, *extra)
        states[name] = jax.block_until_ready(state)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, (step, _, extra) in steps.items():
            t0 = time.perf_counter()
            states[name] = jax.block_until_ready(step(*states[name], *extra))
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times, states


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-rep ratios ``num[i] / den[i]`` of interleaved timings."""
    return float(np.median(np.asarray(num, float) / np.asarray(den, float)))


def time_pure(fn: Callable[..., Any], args: Sequence[Any], *, reps: int = 20,
              warmup: int = 2) -> list[float]:
    """Per-call ms of ``fn(*args)`` (no donation, outputs discarded)."""
    _check_reps(reps, warmup)
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def median(times: Sequence[float]) -> float:
    return float(statistics.median(times))


def summary(times: Sequence[float]) -> dict[str, float]:
    """{'median_ms', 'min_ms', 'p90_ms'} rounded to 3 decimals."""
    arr = np.asarray(times, float)
    return {"median_ms": round(float(np.median(arr)), 3), "min_ms": round(float(arr.min()), 3),
            "p90_ms": round(float(np.percentile(arr, 90)), 3)}


def environment() -> dict[str, Any]:
    """Backend, device kind and jax version for the JSON record."""
    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
            "jax": jax.__version__}


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    """Plain fixed-width table on stdout."""
    cols = [list(map(str, c)) for c in zip(header, *rows)]
    widths = [max(len(v) for v in c) for c in cols]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


def emit_json(record: dict[str, Any]) -> None:
    """The JSON record as the last stdout line."""
    print(json.dumps(record, sort_keys=True), flush=True)
