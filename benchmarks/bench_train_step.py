"""Full training step, SFW vs SGD-momentum, for SimpleCNN and ResNet-18.

    python -m benchmarks.bench_train_step [--json] [--reps 20] [--models simple_cnn resnet18]
                                          [--precision fp32|bf16]

One jit-compiled step per optimizer: softmax cross-entropy of ``model.apply`` (``train=True``,
``batch_stats`` mutable when the model has BatchNorm) on a fixed random batch of 32x32x3 images
(batch 32 on CPU, 128 on GPU/TPU unless ``--batch``), gradients, optimizer update and
``optax.apply_updates``, with params / batch_stats / optimizer state donated. SFW: K-sparse on
every tensor (as the reference), k=10, k_frac=0.05, value=15, initialization mode, momentum 0.9,
gradient rescale, the other ``sfw`` arguments at their defaults (on the CPU the native kernel
where it builds); SGD: ``optax.sgd(0.1, momentum=0.9)``. The two steps are called in alternation
(one SFW step, one SGD step per rep) so that both see the same machine load. Medians over
``--reps`` steps after warm-up; ``--precision bf16`` computes in bfloat16. The JSON record
(last line with ``--json``) has "batch" and a "results" list with one entry per model:
{"model", "batch", "precision", "sfw_step_ms", "sgd_step_ms", "ratio" (of the medians),
"paired_ratio" (median of the per-rep ratios), ...}; with a single model those keys are also
at the top level.

``--steps-per-call 1 4 16`` times instead the training loop's own jitted step
(``sfw_jax.training.steps.make_train_step``: batches gathered by index from a synthetic uint8
split on the devices, no augmentation) with SFW at its defaults (``--optimizer sgd``: SGD
momentum), running S steps per call (:func:`bench_steps_per_call`): median ms per call and per
step for each S, for the first ``--models`` entry (``mlp`` too); the per-backend default
``STEPS_PER_CALL`` is read off it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import _timing
from sfw_jax import make_constraints, sfw
from sfw_jax.training.config import PRECISIONS
from sfw_jax.training.models import get_model
from sfw_jax.fw.topk import METHODS


def _norms(params):
    return jax.tree.map(lambda w: max(float(jnp.linalg.norm(w.reshape(-1))), 1.0), params)


def bench_model(name: str, batch: int, reps: int, method: str, precision: str = "fp32",
                model_kwargs: dict | None = None) -> dict:
    """The record of one model (see the module docstring); ``precision`` 'bf16' computes in
    bfloat16 (params stay float32, as ``TrainConfig.precision``); ``model_kwargs`` are extra
    model attributes (e.g. ``{"width": 0.25}``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    model = get_model(name, 10, dtype=dtype, **dict(model_kwargs or {}))
    kx, ky, ki = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, 32, 32, 3), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, 10)
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(ki)
    params = variables["params"]
    extra = {c: v for c, v in variables.items() if c != "params"}
    mutable = list(extra)
    constraints = make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=15.0,
                                   mode="initialization", init_norms=_norms(params),
                                   method=method)
    out = {"model": name, "batch": batch, "precision": precision,
           "params": int(sum(p.size for p in jax.tree.leaves(params))),
           "tensors": len(jax.tree.leaves(params))}
    steps = {}
    for opt_name, opt in (("sfw", sfw(0.1, constraints, momentum=0.9, rescale="gradient")),
                          ("sgd", optax.sgd(0.1, momentum=0.9))):
        def loss_fn(p, ext, xb, yb):
            if mutable:
                logits, new_ext = model.apply({"params": p, **ext}, xb, train=True,
                                              mutable=mutable)
            else:
                logits, new_ext = model.apply({"params": p}, xb, train=True), ext
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return loss, new_ext

        def step(p, ext, s, xb, yb, opt=opt, loss_fn=loss_fn):
            (_, new_ext), g = jax.value_and_grad(loss_fn, has_aux=True)(p, ext, xb, yb)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), new_ext, s

        p0 = jax.tree.map(jnp.copy, params)
        e0 = jax.tree.map(jnp.copy, extra)
        steps[opt_name] = (jax.jit(step, donate_argnums=(0, 1, 2)), (p0, e0, opt.init(p0)),
                           (x, y))
    times, _ = _timing.time_interleaved(steps, reps=reps, warmup=3)
    for opt_name in steps:
        out[f"{opt_name}_step_ms"] = round(_timing.median(times[opt_name]), 3)
        out[opt_name] = _timing.summary(times[opt_name])
    out["paired_ratio"] = round(_timing.paired_ratio(times["sfw"], times["sgd"]), 3)
    out["ratio"] = round(out["sfw_step_ms"] / out["sgd_step_ms"], 3)
    return out


def bench_steps_per_call(name: str, batch: int, reps: int, per_calls: Sequence[int],
                         precision: str = "fp32", model_kwargs: dict | None = None,
                         optimizer: str = "sfw") -> dict:
    """``{S: {"call_ms", "step_ms"}}`` (medians over ``reps`` calls after warm-up) of the
    training loop's step with ``steps_per_call = S`` for each S of ``per_calls`` (see the
    module docstring). ``optimizer``: ``'sfw'`` (K-sparse, the defaults) or ``'sgd'``
    (``optax.sgd(0.1, momentum=0.9)``: whether a cost comes from the model or from SFW)."""
    from sfw_jax.training import distributed as dist
    from sfw_jax.training.steps import TrainState, make_train_step

    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    model = get_model(name, 10, dtype=dtype, **dict(model_kwargs or {}))
    most = max(per_calls)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * most, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch * most).astype(np.int32)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(
        jax.random.key(0))
    params = variables["params"]
    tx = (optax.sgd(0.1, momentum=0.9) if optimizer == "sgd" else
          sfw(0.1, make_constraints(params, "k_sparse", k=10, k_frac=0.05, value=15.0,
                                    mode="initialization", init_norms=_norms(params)),
              momentum=0.9, rescale="gradient"))
    mesh = dist.make_mesh(dist.select_devices(1))
    data = dist.replicate((images, labels), mesh)
    perm = dist.global_array(np.arange(batch * most, dtype=np.int32).reshape(most, batch),
                             NamedSharding(mesh, P(None, dist.DATA_AXIS)))
    out = {}
    for per_call in per_calls:
        step = make_train_step(model, tx, mean=np.full(3, 127.5), std=np.full(3, 64.0),
                               augment=False, mesh=mesh, steps_per_call=per_call)
        p0 = jax.tree.map(jnp.copy, params)
        state = dist.replicate(TrainState(p0, variables.get("batch_stats", {}), tx.init(p0),
                                          jnp.zeros([], jnp.int32), jax.random.key(1)), mesh)
        times, _ = _timing.time_stateful(lambda st, *_: step(st, *data, perm, 0), (state,),
                                         reps=reps, warmup=2)
        call = _timing.median(times)
        out[str(per_call)] = {"call_ms": round(call, 3), "step_ms": round(call / per_call, 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print a JSON record as the last line")
    ap.add_argument("--reps", type=int, default=20, help="timed steps per optimizer (median)")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch size (default 32 on CPU, 128 otherwise)")
    ap.add_argument("--models", nargs="+", default=["simple_cnn", "resnet18"],
                    choices=["simple_cnn", "resnet18", "mlp"])
    ap.add_argument("--method", default="auto", choices=METHODS, help="top-k path of the LMO")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="compute precision (params stay float32)")
    ap.add_argument("--steps-per-call", type=int, nargs="+", metavar="S",
                    help="time the loop's step at S steps per call instead (first model)")
    ap.add_argument("--optimizer", default="sfw", choices=["sfw", "sgd"],
                    help="the optimizer of the --steps-per-call step")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")
    batch = args.batch or (32 if jax.default_backend() == "cpu" else 128)
    if batch < 1:
        ap.error(f"--batch must be >= 1, got {batch}")
    if args.steps_per_call:
        if min(args.steps_per_call) < 1:
            ap.error(f"--steps-per-call must be >= 1, got {args.steps_per_call}")
        rec = bench_steps_per_call(args.models[0], batch, args.reps, args.steps_per_call,
                                   args.precision, optimizer=args.optimizer)
        _timing.print_table([(s, r["call_ms"], r["step_ms"]) for s, r in rec.items()],
                            ("steps_per_call", "call_ms", "step_ms"))
        if args.json:
            _timing.emit_json({"benchmark": "bench_train_step_per_call", "model": args.models[0],
                               "optimizer": args.optimizer,
                               "batch": batch, "precision": args.precision, "reps": args.reps,
                               "steps_per_call": rec, **_timing.environment()})
        return 0
    results = [bench_model(m, batch, args.reps, args.method, args.precision)
               for m in args.models]
    _timing.print_table(
        [(r["model"], r["batch"], r["params"], r["sfw_step_ms"], r["sgd_step_ms"], r["ratio"],
          r["paired_ratio"]) for r in results],
        ("model", "batch", "params", "sfw_step_ms", "sgd_step_ms", "sfw/sgd", "paired"))
    rec = {"benchmark": "bench_train_step", "batch": batch, "method": args.method,
           "precision": args.precision,
           "reps": args.reps, "results": results, **_timing.environment()}
    if len(results) == 1:
        rec.update({k: results[0][k] for k in ("model", "sfw_step_ms", "sgd_step_ms", "ratio",
                                              "paired_ratio")})
    if args.json:
        _timing.emit_json(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
