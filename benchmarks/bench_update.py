"""SFW update vs optax SGD-momentum update on the ResNet-18 (CIFAR) parameter tree.

    python -m benchmarks.bench_update [--json] [--reps 30] [--method auto] [--interleaved]

Times, in the same run, one jit-compiled optimizer step ``(params, opt_state) -> (params',
opt_state')`` = ``update`` + ``optax.apply_updates`` with ``donate_argnums`` on params and
opt_state, for
  * SFW ``default``: ``sfw_jax.sfw(lr=0.1, make_constraints(params, 'k_sparse', k=10,
    k_frac=0.05, value=15.0, mode='initialization'), momentum=0.9, rescale='gradient')`` on all
    62 tensors (as the reference), top-k path ``--method``, every other argument at its default:
    on the CPU the native kernel of ``sfw_jax.fw.native`` where it builds (``cpu_kernel=None``),
    elsewhere the XLA path; the record's ``default_path`` says which ran;
  * SFW ``xla``: the same with ``cpu_kernel=False``, ``batch_select=False`` and
    ``tree_select=False`` (the XLA path, one top-k selection per leaf);
  * SFW ``xla_batched``: ``cpu_kernel=False``, ``batch_select=True``, ``tree_select=False``
    (one vmapped selection per group of same-shaped leaves);
  * SFW ``xla_tree``: ``cpu_kernel=False``, ``tree_select=True`` (one segmented search over all
    62 leaves, the norms on its flat view: the GPU / TPU default; ``--method`` unused);
  * SGD: ``optax.sgd(0.1, momentum=0.9)``.
Gradients are fixed random normals; each optimizer is timed in a block of ``--reps`` calls
(``--interleaved``: one call of each per rep, which cools each call's caches). Also times the
K-sparse LMO alone (``k_sparse_lmo``) for each distinct tensor size of the tree.
Reports medians over ``--reps`` calls after warm-up; the JSON record (last line with ``--json``)
has "params", "default_path", "default_update_ms" and "default_ratio" (default SFW / SGD),
"sfw_update_ms" and "ratio" (the XLA path), "sfw_batched_update_ms" and "batched_ratio",
"sfw_tree_update_ms" and "tree_ratio", "sgd_update_ms", "paired_ratios" (with
``--interleaved``: per optimizer the median of its per-rep ratios to SGD, else null) and
"lmo_ms_by_size" ({n: {"k": K, "ms": median}}).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _timing
from sfw_jax import k_sparse_lmo, make_constraints, sfw, sparsity_k
from sfw_jax.training.models import get_model
from sfw_jax.fw.topk import METHODS, resolve_method


def resnet18_params(seed: int = 0):
    """ResNet-18 (10 classes, 32x32x3 input) ``params`` collection."""
    model = get_model("resnet18", 10)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(
        jax.random.key(seed))
    return variables["params"]


def _norms(params):
    return jax.tree.map(lambda w: max(float(jnp.linalg.norm(w.reshape(-1))), 1.0), params)


def default_path(method: str = "auto") -> str:
    """Which path ``sfw(...)`` with default arguments runs on this backend, in words."""
    from sfw_jax.fw import BATCH_SELECT, uses_cpu_kernel
    from sfw_jax.fw.topk import backend_name
    if uses_cpu_kernel(None):
        return "native CPU kernel (cpu_kernel=None resolved to the kernel)"
    batch = BATCH_SELECT.get(backend_name(), BATCH_SELECT["default"])
    return (f"XLA path (cpu_kernel=None resolved to XLA), batch_select={batch}, top-k "
            f"'{method}' = '{resolve_method(2_359_296, method)}' at n = 2359296")


def bench(reps: int, method: str, lmo_reps: int, interleaved: bool = False, *,
          params: Any = None, default: bool = True, tree: bool = True) -> dict:
    """The JSON record of the module docstring for ``params`` (default: ResNet-18's).

    ``lmo_reps=0`` leaves out the per-size LMO timings; ``default=False`` leaves out the
    default-arguments variant (on the CPU: the native kernel); ``tree=False`` the
    ``xla_tree`` variant (its fields are then null).
    """
    model = "resnet18" if params is None else "custom"
    params = resnet18_params() if params is None else params
    leaves = jax.tree.leaves(params)
    n_params = int(sum(x.size for x in leaves))
    grads = jax.tree.map(
        lambda x, k: 0.01 * jax.random.normal(k, x.shape, x.dtype), params,
        jax.tree.unflatten(jax.tree.structure(params),
                           list(jax.random.split(jax.random.key(1), len(leaves)))))
    constraints = make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=15.0,
                                   mode="initialization", init_norms=_norms(params),
                                   method=method)
    opts = [("default", sfw(0.1, constraints, momentum=0.9, rescale="gradient"))] if default else []
    xla = dict(momentum=0.9, rescale="gradient", cpu_kernel=False)
    opts += [("xla", sfw(0.1, constraints, batch_select=False, tree_select=False, **xla)),
             ("xla_batched", sfw(0.1, constraints, batch_select=True, tree_select=False, **xla))]
    if tree:
        opts.append(("xla_tree", sfw(0.1, constraints, batch_select=True, tree_select=True,
                                     **xla)))
    opts.append(("sgd", optax.sgd(0.1, momentum=0.9)))
    steps = {}
    for name, opt in opts:
        def step(p, s, g, opt=opt):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        p0 = jax.tree.map(jnp.copy, params)
        steps[name] = (jax.jit(step, donate_argnums=(0, 1)), (p0, opt.init(p0)), (grads,))
    if interleaved:
        results, _ = _timing.time_interleaved(steps, reps=reps, warmup=3)
    else:
        results = {name: _timing.time_stateful(*st, reps=reps, warmup=3)[0]
                   for name, st in steps.items()}

    lmo = {}
    sizes = sorted({x.size for x in leaves}) if lmo_reps > 0 else []
    for n in sizes:
        k = sparsity_k(n, 10, 0.05)
        g = jax.random.normal(jax.random.key(n), (n,), jnp.float32)
        f = jax.jit(lambda g, k=k: k_sparse_lmo(g, k, 1.0, method=method))
        t = _timing.time_pure(f, (g,), reps=lmo_reps)
        count = sum(1 for x in leaves if x.size == n)
        lmo[str(n)] = {"k": k, "ms": round(_timing.median(t), 3), "tensors": count,
                       "path": resolve_method(n, method)}
    ms = {name: _timing.median(r) for name, r in results.items()}
    return {
        "benchmark": "bench_update", "model": model, "params": n_params,
        "tensors": len(leaves), "method": method, "reps": reps, "interleaved": interleaved,
        "default_path": default_path(method),
        "default_update_ms": round(ms["default"], 3) if "default" in ms else None,
        "default_ratio": round(ms["default"] / ms["sgd"], 3) if "default" in ms else None,
        "sfw_update_ms": round(ms["xla"], 3), "ratio": round(ms["xla"] / ms["sgd"], 3),
        "sfw_batched_update_ms": round(ms["xla_batched"], 3),
        "batched_ratio": round(ms["xla_batched"] / ms["sgd"], 3),
        "sfw_tree_update_ms": round(ms["xla_tree"], 3) if "xla_tree" in ms else None,
        "tree_ratio": round(ms["xla_tree"] / ms["sgd"], 3) if "xla_tree" in ms else None,
        "sgd_update_ms": round(ms["sgd"], 3),
        # with --interleaved: medians of the per-rep ratios (each pair saw the same load)
        "paired_ratios": ({name: round(_timing.paired_ratio(results[name], results["sgd"]), 3)
                           for name in ("default", "xla", "xla_batched", "xla_tree")
                           if name in results}
                          if interleaved else None),
        **{f"{name}_summary": _timing.summary(r) for name, r in results.items()},
        "lmo_ms_by_size": lmo,
        "lmo_sum_ms": round(sum(v["ms"] * v["tensors"] for v in lmo.values()), 3),
        **_timing.environment(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print a JSON record as the last line")
    ap.add_argument("--reps", type=int, default=30, help="timed calls per optimizer (median)")
    ap.add_argument("--lmo-reps", type=int, default=10, help="timed calls per LMO size")
    ap.add_argument("--method", default="auto", choices=METHODS, help="top-k path of the LMO")
    ap.add_argument("--interleaved", action="store_true",
                    help="alternate one SFW and one SGD call per rep instead of timing a block of "
                         "reps each (each call then finds the caches cooled by the other)")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.lmo_reps < 1:
        ap.error("--reps and --lmo-reps must be >= 1")
    rec = bench(args.reps, args.method, args.lmo_reps, args.interleaved)
    print(f"ResNet-18 params={rec['params']} tensors={rec['tensors']} backend={rec['backend']} "
          f"method={rec['method']}")
    print(f"default sfw(): {rec['default_path']}")
    rows = [("sfw default", "default"), ("sfw xla (cpu_kernel=False)", "xla"),
            ("sfw xla batch_select=True", "xla_batched"), ("sfw xla tree_select=True", "xla_tree"),
            ("sgd(momentum=0.9)", "sgd")]
    _timing.print_table([(label, *rec[f"{name}_summary"].values()) for label, name in rows],
                        ("update", "median_ms", "min_ms", "p90_ms"))
    print(f"SFW default / SGD = {rec['default_ratio']:.2f}x   XLA path / SGD = "
          f"{rec['ratio']:.2f}x   XLA batched / SGD = {rec['batched_ratio']:.2f}x   XLA tree / "
          f"SGD = {rec['tree_ratio']:.2f}x")
    if rec["paired_ratios"]:
        print("paired (median of per-rep ratios to SGD): "
              + "   ".join(f"{k} {v:.2f}x" for k, v in rec["paired_ratios"].items()))
    _timing.print_table(
        [(n, v["k"], v["tensors"], v["path"], v["ms"]) for n, v in rec["lmo_ms_by_size"].items()],
        ("n", "K", "tensors", "path", "lmo_ms"))
    print(f"sum of per-tensor LMO medians: {rec['lmo_sum_ms']} ms")
    if args.json:
        _timing.emit_json(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
