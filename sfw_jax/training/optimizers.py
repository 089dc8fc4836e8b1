"""Optimizers built from a ``TrainConfig``: SFW (all tensors or kernels only), SGD, AdamW and
Adam-preconditioned SFW.

All optimizers are wrapped in ``optax.inject_hyperparams`` so the learning rate(s) live in the
optimizer state (``opt_state.hyperparams``) and a per-epoch schedule can change them between
jitted steps without recompiling:

* ``optimizer='sgd'``: ``chain(add_decayed_weights(wd), sgd(lr, momentum))``, i.e. PyTorch's
  ``SGD(lr, momentum, weight_decay=wd)`` (``b = mu b + g + wd w; w <- w - lr b``).
  Hyperparameter: ``learning_rate``.
* ``optimizer='sfw'``: ``optax.partition`` of the leaves by their constraint:
  constrained leaves -> ``sfw(learning_rate, constraints, momentum, rescale)``;
  unconstrained leaves (``sfw_scope='kernels'``: biases, BatchNorm scale/bias; for
  ``constraint='nm_sparse'`` every leaf without N:M groups; or every leaf for
  ``constraint='unconstrained'``) -> the SGD above at ``rest_learning_rate``.
  Hyperparameters: ``learning_rate`` (SFW step-size factor) and ``rest_learning_rate``.
  With a constraint schedule (``delay_lmo``, ``tau_start``, ``k_frac_start``) the constrained
  leaves get ``scheduled_sfw`` over the phases of :func:`build_constraint_phases` instead.
  (This partition is ``sfw(..., unconstrained=sgd)`` spelled out, so that the two learning
  rates are separate hyperparameters of one ``inject_hyperparams`` state.)

* ``optimizer='adamw'``: ``optax.adamw(lr, weight_decay=wd)`` with the decoupled decay on the
  leaves of rank >= 2 only (kernels and embeddings; no decay of biases and norm scales/offsets,
  as is usual for Transformers; :func:`decay_mask`). Hyperparameter: ``learning_rate``.
* ``optimizer='adam_sfw'`` (Adam-preconditioned SFW): ``optax.partition`` as for SFW, with
  constrained leaves -> ``chain(scale_by_adam(), frank_wolfe(learning_rate, constraints,
  rescale))``: the Frank-Wolfe step ``eta (LMO_C(d) - x)`` along Adam's direction
  ``d = m_hat / (sqrt(v_hat) + eps)`` instead of a momentum of the gradient;
  unconstrained leaves (``sfw_scope='kernels'``: embeddings, norms, biases) -> the AdamW above
  at ``rest_learning_rate``. Hyperparameters: ``learning_rate`` (the SFW step-size factor) and
  ``rest_learning_rate``.

A schedule scales every learning rate by the same factor ``lr_e / lr_0``
(:func:`set_learning_rates`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sfw_jax.fw import constraint_schedule as schedule_lib
from sfw_jax.fw.blocks import frank_wolfe
from sfw_jax.fw.constraints import expected_init_norms, make_constraints
from sfw_jax.fw.nm import parse_nm
from sfw_jax.fw.sets import is_constraint
from sfw_jax.fw.sfw import sfw
from sfw_jax.selectors import leaf_scope
from sfw_jax.training import distributed as dist
from sfw_jax.training.config import SFW_OPTIMIZERS, TrainConfig, has_constraint_schedule

PyTree = Any
SFW_LABEL = "sfw"
SGD_LABEL = "sgd"
ADAMW_LABEL = "adamw"


def sgd_with_decay(learning_rate: Any, momentum: float,
                   weight_decay: float) -> optax.GradientTransformation:
    """PyTorch-style SGD: decay added to the gradient before heavy-ball momentum."""
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.sgd(learning_rate, momentum=momentum or None))
    return optax.chain(*parts)


def decay_mask(params: PyTree) -> PyTree:
    """True for the leaves AdamW decays: rank >= 2 (kernels, embeddings); False for biases and
    norm scales/offsets. Leaves routed elsewhere by ``optax.partition`` (``MaskedNode``) are
    kept as they are."""
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def adamw(learning_rate: Any, weight_decay: float) -> optax.GradientTransformation:
    """``optax.adamw`` (b1 0.9, b2 0.999, eps 1e-8) with its decay on :func:`decay_mask`."""
    return optax.adamw(learning_rate, weight_decay=weight_decay, mask=decay_mask)


def build_constraints(cfg: TrainConfig, params: PyTree,
                      init_norms: PyTree | None = None) -> PyTree:
    """Constraint pytree like ``params`` for an SFW config (the leaves of the scope
    ``sfw_scope``, :func:`sfw_jax.leaf_scope`, are constrained). ``init_norms`` is needed in
    'initialization' mode.

    ``constraint='nm_sparse'``: the pattern ``cfg.nm`` along the input-feature axis (-2) of the
    eligible kernels; every other leaf is ``Unconstrained`` (SGD at ``rest_lr``)."""
    where = leaf_scope(cfg.sfw_scope)
    nm = {}
    if cfg.constraint == "nm_sparse":
        n, m = parse_nm(cfg.nm)
        nm = {"n": n, "m": m}
    return make_constraints(params, cfg.constraint, k=cfg.k, k_frac=cfg.k_frac, value=cfg.tau,
                            mode=cfg.mode, init_norms=init_norms, where=where, **nm)


def build_constraint_phases(cfg: TrainConfig, params: PyTree, init_norms: PyTree | None = None,
                            total_steps: int | None = None) -> list[tuple[int, PyTree]]:
    """The ``(start_step, constraints)`` phases of an SFW config over ``total_steps`` training
    steps (:mod:`sfw_jax.fw.constraint_schedule`); the last phase's constraints are
    :func:`build_constraints` ``(cfg, ...)``.

    * no schedule: ``[(0, build_constraints(cfg, params, init_norms))]``;
    * ``delay_lmo = f``: ``delayed_lmo(target, params, step_at(f, total_steps))`` (K = n first);
    * ``tau_start`` / ``k_frac_start``: ``tightening_phases`` of ``build_constraints`` with
      (tau, k_frac) moving from (``tau_start``, ``k_frac_start``) (None: the target value) to
      (``tau``, ``k_frac``) over ``schedule_phases`` phases, the last starting at step
      ``step_at(schedule_end, total_steps)``.

    ValueError when a schedule is set and ``total_steps`` is None, or when the steps are too
    few for its phases.
    """
    if not has_constraint_schedule(cfg):
        return [(0, build_constraints(cfg, params, init_norms))]
    if total_steps is None:
        raise ValueError("total_steps must be the number of training steps (steps per epoch x "
                         "epochs) for a constraint schedule, got None")
    if cfg.delay_lmo is not None:
        switch = schedule_lib.step_at(cfg.delay_lmo, total_steps)
        if not 0 < switch < total_steps:
            raise ValueError(f"delay_lmo={cfg.delay_lmo!r} of {total_steps} steps puts the switch "
                             f"at step {switch}; it must fall inside training (1 .. "
                             f"{total_steps - 1})")
        return schedule_lib.delayed_lmo(build_constraints(cfg, params, init_norms), params,
                                        switch)

    def make(tau, k_frac):
        return build_constraints(cfg.replace(tau=tau, k_frac=k_frac), params, init_norms)

    start = {"tau": cfg.tau if cfg.tau_start is None else cfg.tau_start,
             "k_frac": cfg.k_frac if cfg.k_frac_start is None else cfg.k_frac_start}
    end_step = schedule_lib.step_at(cfg.schedule_end, total_steps)
    if end_step < cfg.schedule_phases - 1:
        raise ValueError(f"schedule_phases={cfg.schedule_phases!r} needs at least "
                         f"{cfg.schedule_phases - 1} steps before schedule_end, got {end_step} "
                         f"(schedule_end={cfg.schedule_end!r} of {total_steps} steps)")
    return schedule_lib.tightening_phases(make, start, {"tau": cfg.tau, "k_frac": cfg.k_frac},
                                          cfg.schedule_phases, end_step)


def compute_init_norms(init_fn: Any, rng: jax.Array, cfg: TrainConfig) -> PyTree | None:
    """``expected_init_norms`` over ``cfg.init_norm_samples`` draws when the config needs them."""
    if (cfg.optimizer not in SFW_OPTIMIZERS or cfg.mode != "initialization"
            or cfg.constraint == "unconstrained"):
        return None
    return expected_init_norms(init_fn, rng, cfg.init_norm_samples, rule=cfg.init_norm_rule)


def param_labels(constraints: PyTree, rest: str = SGD_LABEL) -> PyTree:
    """'sfw' for constrained leaves, ``rest`` for the others (a pytree like params)."""
    return jax.tree.map(lambda c: SFW_LABEL if c.constrained else rest, constraints,
                        is_leaf=is_constraint)


def build_optimizer(cfg: TrainConfig, constraints: PyTree | None = None, *,
                    phases: list[tuple[int, PyTree]] | None = None
                    ) -> optax.GradientTransformationExtraArgs:
    """Optimizer of a *resolved* config (:func:`sfw_jax.training.config.validate`); see the
    module docstring.

    ``optimizer='sfw'`` needs ``constraints`` (from :func:`build_constraints`) or ``phases``
    (from :func:`build_constraint_phases`; several phases -> ``scheduled_sfw``, and
    ``constraints`` defaults to the last phase's). ``update(grads, state, params)`` needs
    ``params``.
    """
    if cfg.lr is None or cfg.weight_decay is None:
        raise ValueError("cfg must be resolved (sfw_jax.training.config.validate) before "
                         f"building the optimizer; got lr={cfg.lr!r}, "
                         f"weight_decay={cfg.weight_decay!r}")
    momentum, wd = float(cfg.momentum), float(cfg.weight_decay)
    if cfg.optimizer == "sgd":
        def make_sgd(learning_rate):
            return sgd_with_decay(learning_rate, momentum, wd)
        return optax.inject_hyperparams(make_sgd)(learning_rate=float(cfg.lr))
    if cfg.optimizer == "adamw":
        return optax.inject_hyperparams(lambda learning_rate: adamw(learning_rate, wd))(
            learning_rate=float(cfg.lr))
    if cfg.optimizer not in SFW_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of ['sfw', 'sgd', 'adamw', 'adam_sfw'], got "
                         f"{cfg.optimizer!r}")
    if constraints is None and phases:
        constraints = phases[-1][1]
    if constraints is None:
        raise ValueError(f"optimizer={cfg.optimizer!r} needs constraints (build_constraints) or "
                         f"phases (build_constraint_phases); got None")
    if cfg.optimizer == "adam_sfw":
        return _adam_sfw(cfg, constraints)
    labels = param_labels(constraints)

    def make_sfw(learning_rate, rest_learning_rate):
        kw = dict(momentum=momentum, rescale=cfg.rescale, cpu_kernel=cfg.cpu_kernel)
        if phases is not None and len(phases) > 1:
            constrained = schedule_lib.scheduled_sfw(learning_rate, phases, **kw)
        else:
            constrained = sfw(learning_rate, constraints, **kw)
        return optax.partition({SFW_LABEL: constrained,
                                SGD_LABEL: sgd_with_decay(rest_learning_rate, momentum, wd)},
                               labels)

    return optax.inject_hyperparams(make_sfw)(learning_rate=float(cfg.lr),
                                              rest_learning_rate=float(cfg.rest_lr))


def _adam_sfw(cfg: TrainConfig, constraints: PyTree) -> optax.GradientTransformationExtraArgs:
    """Adam-preconditioned SFW on the constrained leaves, AdamW on the others (module
    docstring)."""
    labels = param_labels(constraints, rest=ADAMW_LABEL)
    wd = float(cfg.weight_decay)

    def make_adam_sfw(learning_rate, rest_learning_rate):
        constrained = optax.chain(optax.scale_by_adam(),
                                  frank_wolfe(learning_rate, constraints, rescale=cfg.rescale))
        return optax.partition({SFW_LABEL: constrained,
                                ADAMW_LABEL: adamw(rest_learning_rate, wd)}, labels)

    return optax.inject_hyperparams(make_adam_sfw)(learning_rate=float(cfg.lr),
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
        hp[name] = dist.global_array(arr, old.sharding) if hasattr(old, "sharding") else arr
    return opt_state._replace(hyperparams=hp)
