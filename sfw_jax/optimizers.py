"""Optimizers built from a ``TrainConfig``: SFW (all tensors or kernels only) and SGD.

All optimizers are wrapped in ``optax.inject_hyperparams`` so the learning rate(s) live in the
optimizer state (``opt_state.hyperparams``) and a per-epoch schedule can change them between
jitted steps without recompiling:

* ``optimizer='sgd'``: ``chain(add_decayed_weights(wd), sgd(lr, momentum))``, i.e. PyTorch's
  ``SGD(lr, momentum, weight_decay=wd)`` (``b = mu b + g + wd w; w <- w - lr b``).
  Hyperparameter: ``learning_rate``.
* ``optimizer='sfw'``: ``optax.partition`` of the leaves by their constraint:
  constrained leaves -> ``sfw(learning_rate, constraints, momentum, rescale)``;
  unconstrained leaves (``sfw_scope='kernels'``: biases, BatchNorm scale/bias; or every leaf for
  ``constraint='unconstrained'``) -> the SGD above at ``rest_learning_rate``.
  Hyperparameters: ``learning_rate`` (SFW step-size factor) and ``rest_learning_rate``.

A schedule scales every learning rate by the same factor ``lr_e / lr_0``
(:func:`set_learning_rates`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sfw_jax.config import TrainConfig
from sfw_jax.constraints import expected_init_norms, is_constraint, make_constraints
from sfw_jax.sfw import sfw

PyTree = Any
SFW_LABEL = "sfw"
SGD_LABEL = "sgd"


def is_kernel(path: tuple[str, ...], leaf: Any) -> bool:
    """Conv / dense weight tensors: leaves named ``kernel`` with at least 2 dimensions."""
    return bool(path) and path[-1] == "kernel" and len(getattr(leaf, "shape", ())) >= 2


def sgd_with_decay(learning_rate: Any, momentum: float,
                   weight_decay: float) -> optax.GradientTransformation:
    """PyTorch-style SGD: decay added to the gradient before heavy-ball momentum."""
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.sgd(learning_rate, momentum=momentum or None))
    return optax.chain(*parts)


def build_constraints(cfg: TrainConfig, params: PyTree,
                      init_norms: PyTree | None = None) -> PyTree:
    """Constraint pytree like ``params`` for an SFW config (``sfw_scope='kernels'``: only
    :func:`is_kernel` leaves are constrained). ``init_norms`` is needed in 'initialization' mode."""
    where = is_kernel if cfg.sfw_scope == "kernels" else None
    return make_constraints(params, cfg.constraint, k=cfg.k, k_frac=cfg.k_frac, value=cfg.tau,
                            mode=cfg.mode, init_norms=init_norms, where=where)


def compute_init_norms(init_fn: Any, rng: jax.Array, cfg: TrainConfig) -> PyTree | None:
    """``expected_init_norms`` over ``cfg.init_norm_samples`` draws when the config needs them."""
    if cfg.optimizer != "sfw" or cfg.mode != "initialization" or cfg.constraint == "unconstrained":
        return None
    return expected_init_norms(init_fn, rng, cfg.init_norm_samples)


def param_labels(constraints: PyTree) -> PyTree:
    """'sfw' for constrained leaves, 'sgd' for the others (a pytree like params)."""
    return jax.tree.map(lambda c: SFW_LABEL if c.constrained else SGD_LABEL, constraints,
                        is_leaf=is_constraint)


def build_optimizer(cfg: TrainConfig,
                    constraints: PyTree | None = None) -> optax.GradientTransformationExtraArgs:
    """Optimizer of a *resolved* config (``sfw_jax.config.validate``); see the module docstring.

    ``constraints`` is required for ``optimizer='sfw'`` (from :func:`build_constraints`).
    ``update(grads, state, params)`` needs ``params``.
    """
    if cfg.lr is None or cfg.weight_decay is None:
        raise ValueError("cfg must be resolved (sfw_jax.config.validate) before building the "
                         f"optimizer; got lr={cfg.lr!r}, weight_decay={cfg.weight_decay!r}")
    momentum, wd = float(cfg.momentum), float(cfg.weight_decay)
    if cfg.optimizer == "sgd":
        def make_sgd(learning_rate):
            return sgd_with_decay(learning_rate, momentum, wd)
        return optax.inject_hyperparams(make_sgd)(learning_rate=float(cfg.lr))
    if cfg.optimizer != "sfw":
        raise ValueError(f"optimizer must be one of ['sfw', 'sgd'], got {cfg.optimizer!r}")
    if constraints is None:
        raise ValueError("optimizer='sfw' needs constraints (build_constraints); got None")
    labels = param_labels(constraints)
    rescale = None if cfg.rescale == "none" else cfg.rescale

    def make_sfw(learning_rate, rest_learning_rate):
        return optax.partition(
            {SFW_LABEL: sfw(learning_rate, constraints, momentum=momentum, rescale=rescale,
                            cpu_kernel=cfg.cpu_kernel),
             SGD_LABEL: sgd_with_decay(rest_learning_rate, momentum, wd)},
            labels)

    return optax.inject_hyperparams(make_sfw)(learning_rate=float(cfg.lr),
                                              rest_learning_rate=float(cfg.rest_lr))


def get_learning_rates(opt_state: Any) -> dict[str, float]:
    """The injected learning rates as Python floats (e.g. for logging)."""
    return {k: float(v) for k, v in opt_state.hyperparams.items()}


def set_learning_rates(opt_state: Any, cfg: TrainConfig, lr: float) -> Any:
    """``opt_state`` with ``learning_rate = lr`` and, for SFW, ``rest_learning_rate`` scaled by
    the same factor ``lr / cfg.lr``. Values keep the dtype and sharding of the old ones."""
    scale = lr / float(cfg.lr)
    new = {"learning_rate": lr}
    if "rest_learning_rate" in opt_state.hyperparams:
        new["rest_learning_rate"] = float(cfg.rest_lr) * scale
    hp = dict(opt_state.hyperparams)
    for name, value in new.items():
        old = hp[name]
        arr = jnp.asarray(value, dtype=old.dtype)
        hp[name] = jax.device_put(arr, old.sharding) if hasattr(old, "sharding") else arr
    return opt_state._replace(hyperparams=hp)
