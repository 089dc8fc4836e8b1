"""``--dry-run`` of a device job: the real job's config, model, constraint sets, optimizer and
jitted steps built on the CIFAR-10 shapes without data or training, so a bad job table entry
fails here on any CPU in seconds and not on a lent GPU.

:func:`check_job` resolves the job's config at the full plan (the preset's epochs), validates
it, builds the model and its parameter shapes (``jax.eval_shape`` of ``model.init``: nothing
is allocated), the SFW constraint sets on those shapes (with E||W_init|| = 1 for every tensor
in place of the drawn norms: the sets' kinds and K depend on the shapes only), the optimizer and
its state, then traces (does not compile) the train step on the whole training split, the
evaluation step and a training-mode forward pass (BatchNorm re-calibration) and the N:M mask of
the job's one-shot 2:4 pruning.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.paper_jobs import NM_PATTERN, Job, job_config

CIFAR10_SHAPE = (32, 32, 3)
CIFAR10_CLASSES = 10
CIFAR10_TRAIN = 50_000


def _cifar10_info() -> Any:
    from sfw_jax.training.datasets import DatasetInfo

    return DatasetInfo(name="cifar10", num_classes=CIFAR10_CLASSES, image_shape=CIFAR10_SHAPE,
                       mean=np.full(3, 0.5, np.float32), std=np.full(3, 0.25, np.float32),
                       class_names=tuple(f"class{c}" for c in range(CIFAR10_CLASSES)),
                       source="dry-run")


def check_job(job: Job, **overrides: Any) -> dict:
    """Build and trace ``job`` (``overrides`` on top of its config; see the module docstring);
    returns what was built: arch, optimizer, epochs, parameter and tensor counts, the
    constraint kinds by count, the traced output shapes. Raises what a real run would raise
    at those steps."""
    from sfw_jax import is_constraint
    from sfw_jax.fw import parse_nm
    from sfw_jax.pruning import nm_mask
    from sfw_jax.training import config as config_lib
    from sfw_jax.training import loop
    from sfw_jax.training import optimizers as opt_lib
    from sfw_jax.training.steps import TrainState, make_eval_step, make_train_step

    cfg = config_lib.validate(job_config(job, **overrides))
    info = _cifar10_info()
    model = loop.build_model(cfg, info)
    mesh = loop.setup_devices(cfg)
    x = jax.ShapeDtypeStruct((cfg.batch_size, *CIFAR10_SHAPE), jnp.float32)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros(x.shape), train=False),
                            jax.random.key(0))
    params, batch_stats = shapes["params"], shapes.get("batch_stats", {})
    steps = CIFAR10_TRAIN // cfg.batch_size
    constraints = phases = None
    kinds: dict[str, int] = {}
    if cfg.optimizer == "sfw":
        norms = jax.tree.map(lambda p: 1.0, params)
        phases = opt_lib.build_constraint_phases(cfg, params, norms, steps * cfg.epochs)
        constraints = phases[-1][1]
        kinds = dict(collections.Counter(
            type(c).__name__ for c in jax.tree.leaves(constraints, is_leaf=is_constraint)))
    tx = opt_lib.build_optimizer(cfg, constraints, phases=phases)
    state = jax.eval_shape(lambda p, b: TrainState(
        params=p, batch_stats=b, opt_state=tx.init(p), step=jnp.zeros((), jnp.int32),
        rng=jax.random.PRNGKey(0)), params, batch_stats)
    train_step = make_train_step(model, tx, mean=info.mean, std=info.std,
                                 augment=bool(cfg.augment), mesh=mesh)
    u8 = jax.ShapeDtypeStruct((CIFAR10_TRAIN, *CIFAR10_SHAPE), jnp.uint8)
    i32 = jax.ShapeDtypeStruct((CIFAR10_TRAIN,), jnp.int32)
    _, metrics = jax.eval_shape(train_step, state, u8, i32,
                                jax.ShapeDtypeStruct((steps, cfg.batch_size), jnp.int32), 0)
    eb = cfg.eval_batch_size
    eval_step = make_eval_step(model, mean=info.mean, std=info.std, mesh=mesh)
    sums = jax.eval_shape(eval_step, params, batch_stats,
                          jax.ShapeDtypeStruct((eb, *CIFAR10_SHAPE), jnp.uint8),
                          jax.ShapeDtypeStruct((eb,), jnp.int32),
                          jax.ShapeDtypeStruct((eb,), jnp.float32))
    if batch_stats:
        jax.eval_shape(lambda v, xb: model.apply(v, xb, train=True, mutable=["batch_stats"]),
                       shapes, x)
    mask = jax.eval_shape(lambda p: nm_mask(p, *parse_nm(NM_PATTERN)), params)
    leaves = jax.tree.leaves(params)
    return {"job": job.name, "preset": job.preset, "arch": cfg.arch,
            "optimizer": cfg.optimizer, "epochs": cfg.epochs, "val_fraction": cfg.val_fraction,
            "batch_size": cfg.batch_size, "steps_per_epoch": steps,
            "params": int(sum(np.prod(a.shape) for a in leaves)), "tensors": len(leaves),
            "batch_norm": bool(jax.tree.leaves(batch_stats)), "constraints": kinds,
            "train_metrics": {k: str(v.dtype) for k, v in metrics.items()},
            "eval_outputs": len(sums), "nm_mask_tensors": len(jax.tree.leaves(mask))}
