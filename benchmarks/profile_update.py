"""Where one optimizer step spends its time: XLA:CPU per-op profile of SFW vs SGD on one tensor.

    python -m benchmarks.profile_update [--size 2359296] [--reps 30] [--top 12]

Builds a one-leaf parameter tree of ``--size`` entries, jit-compiles the step ``(params, state) ->
(params', state')`` = ``update`` + ``optax.apply_updates`` (donated buffers) for
  * SFW: ``sfw(0.1, k_sparse(k=10, k_frac=0.05, tau 15, 'initialization'), momentum=0.9,
    rescale='gradient')`` (as ``benchmarks/bench_update.py``; the other arguments at their
    defaults: on the CPU the native kernel, one custom call, where it builds);
  * SGD: ``optax.sgd(0.1, momentum=0.9)``;
runs ``--reps`` steps of each under ``jax.profiler`` and prints, per optimizer, the mean time per
step of its ``--top`` most expensive XLA ops (fusions, custom calls, conditionals; nested ops of a
conditional are listed separately *and* counted in it) next to the wall time per step.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

from sfw_jax import make_constraints, sfw

# trace events that are runtime bookkeeping, not XLA ops of the step
_SKIP = ("Thunk", "Pjit", "PjRt", "Execute", "Allocate", "ParseArguments", "Handle", "Wait",
         "Threadpool", "PythonRefManager")


def profile(opt, params, grads, reps: int) -> tuple[float, list[tuple[str, float, float]]]:
    """(wall ms per step, [(op name, mean us per step, calls per step)] sorted by time)."""
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *opt.update(g, s, p)), donate_argnums=(0, 1))
    p, s = jax.tree.map(jnp.copy, params), opt.init(params)
    for _ in range(3):
        p, s = step(p, s, grads)
    jax.block_until_ready(p)
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        t0 = time.perf_counter()
        for _ in range(reps):
            p, s = step(p, s, grads)
            jax.block_until_ready(p)
        wall = (time.perf_counter() - t0) / reps
        jax.profiler.stop_trace()
        files = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(max(files, key=os.path.getmtime)) as f:
            events = json.load(f)["traceEvents"]
    total, calls = collections.defaultdict(float), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if (e.get("ph") == "X" and not name.startswith(("$", "end:"))
                and not any(k in name for k in _SKIP)):
            total[name] += e["dur"]
            calls[name] += 1
    ops = sorted(((n, t / reps, calls[n] / reps) for n, t in total.items()), key=lambda r: -r[1])
    return 1000 * wall, ops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2_359_296, help="entries of the one tensor")
    ap.add_argument("--reps", type=int, default=30, help="profiled steps per optimizer")
    ap.add_argument("--top", type=int, default=12, help="ops listed per optimizer")
    args = ap.parse_args(argv)
    if args.size < 1 or args.reps < 1 or args.top < 1:
        ap.error(f"--size, --reps and --top must be >= 1, got {args.size}, {args.reps}, "
                 f"{args.top}")
    params = {"w": 0.01 * jax.random.normal(jax.random.key(0), (args.size,))}
    grads = {"w": 0.01 * jax.random.normal(jax.random.key(1), (args.size,))}
    cons = make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=15.0,
                            mode="initialization", init_norms={"w": 1.0})
    for name, opt in (("sfw", sfw(0.1, cons, momentum=0.9, rescale="gradient")),
                      ("sgd", optax.sgd(0.1, momentum=0.9))):
        wall, ops = profile(opt, params, grads, args.reps)
        print(f"{name}: n={args.size} wall {wall:.3f} ms/step (profiled)")
        for op, us, n in ops[: args.top]:
            print(f"  {us:9.1f} us  x{n:4.1f}  {op[:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
