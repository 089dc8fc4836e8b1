"""Top-k mask time per method and tensor size (the ResNet-18 conv sizes, K = 5%).

    python -m benchmarks.bench_topk [--json] [--reps 15] [--sizes 36864 2359296] [--methods ...]
                                    [--dtype float32|bfloat16|float16]

For each size n, times a jit-compiled ``top_k_mask(|g|, K, method=m)`` with
``K = min(max(10, floor(0.05 n)), n)`` on ``|g|``, ``g`` standard normal drawn in float32 and
cast to ``--dtype`` (bfloat16 has 256 values per octave, so thousands of entries tie with the
k-th: the search must pin a value instead of gathering a few candidates), and reports the
median over ``--reps`` calls and how many entries equal the k-th value (``ties``). Every
method of ``sfw_jax.fw.topk.METHODS`` by default; ``'auto_path'`` is the method ``'auto'`` runs on
this backend. ``'sort'`` (``lax.top_k``) is skipped above ``--sort-max`` entries (it takes
~0.4 s at n = 2.36M on the 2-core CPU). The JSON record (last line with ``--json``) maps each
size to {"k", "ties", "auto_path", method: median ms}.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _timing
from sfw_jax.fw.constraints import sparsity_k
from sfw_jax.fw.topk import METHODS, resolve_method, top_k_mask

DEFAULT_SIZES = (1728, 8192, 16384, 36864, 147456, 589824, 2359296)


def time_size(n: int, methods: Sequence[str], dtype: str, reps: int,
              sort_max: int | None = None) -> dict:
    """``{"k", "ties", "auto_path", method: median ms}`` for one size ``n`` (see the module
    docstring); ``'sort'`` is left out above ``sort_max`` entries (None: never)."""
    k = sparsity_k(n, 10, 0.05)
    x = jnp.abs(jax.random.normal(jax.random.key(n), (n,), jnp.float32)).astype(dtype)
    v = np.asarray(x.astype(jnp.float32))
    ties = int(np.sum(v == np.partition(v, n - k)[n - k]))
    row = {}
    for m in methods:
        if m == "sort" and sort_max is not None and n > sort_max:
            continue
        f = jax.jit(lambda v, m=m, k=k: top_k_mask(v, k, method=m))
        row[m] = round(_timing.median(_timing.time_pure(f, (x,), reps=reps)), 3)
    return {"k": k, "ties": ties, "auto_path": resolve_method(n), **row}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--sort-max", type=int, default=600_000)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = ap.parse_args(argv)
    if args.reps < 1 or any(n < 1 for n in args.sizes):
        ap.error("--reps and --sizes must be >= 1")
    table, rec = [], {}
    for n in args.sizes:
        rec[str(n)] = row = time_size(n, args.methods, args.dtype, args.reps, args.sort_max)
        table.append((n, row["k"], row["ties"], row["auto_path"],
                      *[row.get(m, "-") for m in args.methods]))
    _timing.print_table(table, ("n", "K", "ties", "auto_path",
                                *[f"{m}_ms" for m in args.methods]))
    if args.json:
        _timing.emit_json({"benchmark": "bench_topk", "reps": args.reps, "dtype": args.dtype,
                           "sizes": rec,
                           **_timing.environment()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
