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

``--tree`` times instead the K-sparse selections ``(t, cut)`` of ``|m|`` for every leaf of the
ResNet-18 (CIFAR) tree at once (K as above per leaf, ``m`` standard normal), as the SFW update
computes them (:func:`time_tree`): ``segmented_tree`` (one search of
``sfw_jax.fw.segtopk.top_k_thresholds`` over all 62 leaves), and per threshold method
``<method>_batched`` (one ``vmap`` per group of same-shaped leaves, as ``sfw(batch_select=True)``)
and ``<method>_per_leaf``: median ms and the op count of the compiled selection
(``benchmarks.op_count.entry_counts``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _timing
from sfw_jax import sparsity_k
from sfw_jax.fw import segtopk
from sfw_jax.fw.topk import METHODS, resolve_method, top_k_mask, top_k_threshold

TREE_METHODS = ("bisect", "segmented")

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


def tree_selections(leaves: Sequence[jax.Array], methods: Sequence[str] = TREE_METHODS
                    ) -> dict:
    """The selection functions :func:`time_tree` compares, by name: each maps the list of
    momenta to their ``(t, cut)`` selections (K = ``sparsity_k(n, 10, 0.05)`` per leaf)."""
    ks = [sparsity_k(x.size, 10, 0.05) for x in leaves]
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(leaves):
        groups.setdefault((x.shape, jnp.dtype(x.dtype).name, ks[i]), []).append(i)

    def per_leaf(m):
        return lambda ms: [top_k_threshold(x, k, method=m, absolute=True)
                           for x, k in zip(ms, ks)]

    def batched(m):
        def f(ms):
            out = [None] * len(ms)
            for (_, _, k), idx in groups.items():
                t, cut = jax.vmap(lambda x, k=k: top_k_threshold(x, k, method=m,
                                                                 absolute=True))(
                    jnp.stack([ms[i] for i in idx]))
                for j, i in enumerate(idx):
                    out[i] = (t[j], cut[j])
            return out
        return f

    out = {"segmented_tree": lambda ms: segtopk.top_k_thresholds(ms, ks, absolute=True)}
    for m in methods:
        out[f"{m}_batched"] = batched(m)
        out[f"{m}_per_leaf"] = per_leaf(m)
    return out


def time_tree(reps: int, params=None, methods: Sequence[str] = TREE_METHODS,
              names: Sequence[str] | None = None) -> dict:
    """``{name: {"ms": median, "ops": op count}}`` of the selections of
    :func:`tree_selections` for the leaves of ``params`` (None: ResNet-18's), ``names`` of them
    (None: all)."""
    from benchmarks.bench_update import resnet18_params
    from benchmarks.op_count import entry_counts

    leaves = jax.tree.leaves(resnet18_params() if params is None else params)
    ms = [jax.random.normal(jax.random.key(i), x.shape, x.dtype) for i, x in enumerate(leaves)]
    out = {}
    for name, f in tree_selections(leaves, methods).items():
        if names is not None and name not in names:
            continue
        compiled = jax.jit(f).lower(ms).compile()
        out[name] = {"ms": round(_timing.median(_timing.time_pure(compiled, (ms,), reps=reps)), 3),
                     "ops": entry_counts(compiled.as_text())["ops"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--sort-max", type=int, default=600_000)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--tree", action="store_true",
                    help="time the selections of every ResNet-18 leaf at once instead")
    args = ap.parse_args(argv)
    if args.reps < 1 or any(n < 1 for n in args.sizes):
        ap.error("--reps and --sizes must be >= 1")
    if args.tree:
        rec = time_tree(args.reps)
        _timing.print_table([(name, r["ms"], r["ops"]) for name, r in rec.items()],
                            ("selection", "median_ms", "ops"))
        if args.json:
            _timing.emit_json({"benchmark": "bench_topk_tree", "reps": args.reps,
                               "selections": rec, **_timing.environment()})
        return 0
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
