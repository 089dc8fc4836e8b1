"""Operation counts of the compiled optimizer step on the ResNet-18 tree (a proxy for kernel launches).

    python -m benchmarks.op_count [--json] [--methods auto bisect ...] [--no-defaults]

Compiles, on the default backend, one jitted optimizer step ``(params, opt_state, grads) ->
(params', opt_state')`` = ``update`` + ``optax.apply_updates`` (as ``benchmarks/bench_update.py``:
ResNet-18 for CIFAR, 62 tensors, every tensor K-sparse with k = 10, k_frac = 5 %) for

  * ``sfw_default``: ``sfw(...)`` with its defaults (on the CPU the native kernel where it builds);
  * ``sfw_accelerator_default``: the update ``sfw(...)`` compiles by default on a GPU or TPU,
    compiled on the backend that runs this: the XLA path (``cpu_kernel=False``),
    ``batch_select``, ``tree_select`` (the segmented search over the whole tree) and every
    ``'auto'`` top-k method resolved for a GPU backend (:func:`accelerator_default`); the
    record's ``accelerator_default_ratio`` is its ``ops`` over SGD's;
  * ``sfw_<method>_per_leaf`` / ``sfw_<method>_batched``: the XLA path (``cpu_kernel=False``,
    ``tree_select=False``) with ``batch_select=False`` / ``True``, for each top-k method of
    ``sfw_jax.fw.topk.METHODS``
    (``'auto'`` resolved for the backend);
  * ``sgd``: ``optax.sgd(0.1, momentum=0.9)``;

and counts the instructions of the optimized HLO module's entry computation: all of them
(``instructions``), those that do work (``ops``: all but parameter, constant, tuple,
get-tuple-element and bitcast), and how many are fusions, custom-calls, while loops and
conditionals. Each op, fusion and custom-call of the entry computation is (at least) one kernel
launch on a GPU; a while loop or conditional adds a host round trip per iteration there. XLA's
own per-thunk overhead on the CPU follows the same count. :func:`op_counts` returns the record
(the device suite calls it on the accelerator); ``--json`` prints it as one JSON line.
``--no-defaults`` leaves out the first two rows and SGD.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import optax

from benchmarks import _timing
from benchmarks.bench_update import _norms, resnet18_params
from sfw_jax import is_constraint, make_constraints, sfw
from sfw_jax._tree import PyTree
from sfw_jax.fw import BATCH_SELECT, TREE_SELECT
from sfw_jax.fw.topk import METHODS, backend_name, resolve_method

_TRIVIAL = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")
_KINDS = {"fusion": "fusion", "custom_call": "custom-call", "while": "while",
          "conditional": "conditional"}


def _opcode(line: str) -> Optional[str]:
    """The opcode of one HLO instruction line (``name = shape opcode(operands), ...``)."""
    m = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*)$", line)
    if not m:
        return None
    rest = m.group(1)
    # skip the shape: a (possibly nested) tuple "(...)" or one token like f32[3,3]{1,0}
    if rest.startswith("("):
        depth = 0
        for j, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                rest = rest[j + 1:]
                break
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    op = re.match(r"\s*([\w\-]+)\(", rest)
    return op.group(1) if op else None


def entry_counts(hlo_text: str) -> dict[str, int]:
    """Instruction counts of the ENTRY computation of an optimized HLO module's text."""
    lines = hlo_text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("ENTRY"))
    ops = []
    for ln in lines[start + 1:]:
        if ln.startswith("}"):
            break
        op = _opcode(ln)
        if op is not None:
            ops.append(op)
    out = {"instructions": len(ops), "ops": sum(op not in _TRIVIAL for op in ops)}
    out.update({name: sum(op == opcode for op in ops) for name, opcode in _KINDS.items()})
    return out


def _step_hlo(opt: optax.GradientTransformation, params, grads) -> str:
    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = jax.eval_shape(opt.init, params)
    return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile().as_text()


def accelerator_default(learning_rate: float, constraints: PyTree, params: PyTree,
                        backend: str = "gpu", **kwargs) -> optax.GradientTransformation:
    """``sfw(learning_rate, constraints, **kwargs)`` as its defaults resolve on ``backend``,
    whatever backend traces it: the XLA path (``cpu_kernel=False``), ``batch_select`` and
    ``tree_select`` from ``BATCH_SELECT`` and ``TREE_SELECT``, and each constraint's top-k
    ``method='auto'`` resolved for ``backend`` and its leaf's size (``resolve_method``)."""
    def resolve(c, x):
        if getattr(c, "method", None) != "auto":
            return c
        return dataclasses.replace(c, method=resolve_method(x.size, "auto", backend))

    resolved = jax.tree.map(resolve, constraints, params, is_leaf=is_constraint)
    name = backend_name(backend)
    return sfw(learning_rate, resolved, cpu_kernel=False,
               batch_select=BATCH_SELECT.get(name, BATCH_SELECT["default"]),
               tree_select=TREE_SELECT.get(name, TREE_SELECT["default"]), **kwargs)


def variants(params, methods: Iterable[str], defaults: bool = True
             ) -> dict[str, optax.GradientTransformation]:
    """The optimizers compared (module docstring), by name; ``defaults=False`` leaves out
    ``sfw_default``, ``sfw_accelerator_default`` and ``sgd``."""
    def cons(method):
        return make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=15.0,
                                mode="initialization", init_norms=_norms(params), method=method)

    out = {}
    if defaults:
        out["sfw_default"] = sfw(0.1, cons("auto"), momentum=0.9, rescale="gradient")
        out["sfw_accelerator_default"] = accelerator_default(
            0.1, cons("auto"), params, momentum=0.9, rescale="gradient")
    for m in methods:
        for name, batch in (("per_leaf", False), ("batched", True)):
            out[f"sfw_{m}_{name}"] = sfw(0.1, cons(m), momentum=0.9, rescale="gradient",
                                         cpu_kernel=False, batch_select=batch,
                                         tree_select=False)
    if defaults:
        out["sgd"] = optax.sgd(0.1, momentum=0.9)
    return out


def op_counts(methods: Optional[Iterable[str]] = None, defaults: bool = True) -> dict:
    """The record of the module docstring on the default backend: ``{"variants": {name:
    counts}, "accelerator_default_ratio", "tensors", "backend", ...}``; ``methods``: top-k
    methods (default: all); ``defaults=False``: only their rows (no ratio)."""
    methods = list(METHODS if methods is None else methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"methods must be among {METHODS}, got {bad}")
    params = resnet18_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    counts = {name: entry_counts(_step_hlo(opt, params, grads))
              for name, opt in variants(params, methods, defaults).items()}
    ratio = (round(counts["sfw_accelerator_default"]["ops"] / counts["sgd"]["ops"], 2)
             if defaults else None)
    return {"benchmark": "op_count", "model": "resnet18",
            "tensors": len(jax.tree.leaves(params)), "variants": counts,
            "accelerator_default_ratio": ratio, **_timing.environment()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the record as one JSON line")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                    help="top-k methods of the sfw_<method> rows (none: only the defaults)")
    ap.add_argument("--no-defaults", action="store_true",
                    help="leave out sfw_default, sfw_accelerator_default and sgd")
    args = ap.parse_args(argv)
    rec = op_counts(args.methods, defaults=not args.no_defaults)
    print(f"ResNet-18 tensors={rec['tensors']} backend={rec['backend']} "
          f"(entry computation of the optimized HLO of update + apply_updates)")
    cols = ("instructions", "ops", *_KINDS)
    _timing.print_table([(name, *[c[k] for k in cols]) for name, c in rec["variants"].items()],
                        ("variant", *cols))
    if rec["accelerator_default_ratio"] is not None:
        print(f"sfw_accelerator_default / sgd ops = {rec['accelerator_default_ratio']:.2f}x")
    if args.json:
        _timing.emit_json(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
