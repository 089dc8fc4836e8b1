"""BatchNorm recalibration of a pruned model by forward passes only (no gradient step).

OPTIONAL EXTRA, beyond the paper's protocol. The SFW paper prunes one-shot with *no*
retraining and keeps the stored BatchNorm statistics. Pruning shifts the distribution of every
pre-BN activation, so the stored running statistics no longer match; recomputing them on a few
training batches (as ``torch.optim.swa_utils.update_bn`` does) is a cheap, data-only repair that
changes no weight. Report results with and without it separately.

Semantics (PyTorch ``momentum=None``, i.e. a cumulative average over batches). The model runs
in training mode, so every BatchNorm normalises with the statistics of the current batch and
later layers see exactly what they see in training. For each ``flax.linen.BatchNorm`` call
``c`` and batch ``b`` we take the batch statistics over the reduction axes (all axes except
``axis``)::

    mu_{c,b}  = mean(x)                 var_{c,b} = mean(|x - mu_{c,b}|^2)   (biased)

computed as the module itself computes them (float32 or wider; ``E[x^2] - E[x]^2`` clipped at
0 when ``use_fast_variance``; honouring a ``mask`` argument), and store

    mean = (1/B) sum_b mu_{c,b},        var = (1/B) sum_b var_{c,b}

the unweighted average over the ``B`` batches (a module called several times per forward pass
averages over all its calls). ``var`` is the average of *biased* per-batch variances, the
quantity Flax's running average tracks (PyTorch stores unbiased ones). With equal-size batches
``mean`` equals the pooled mean of all activations.

Not handled: cross-device reduction (``axis_name``) and BatchNorms inside lifted transforms
(``nn.scan``/``nn.vmap``); statistics are those of the batches this process sees.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sfw_jax._tree import PyTree


def _reduction_axes(ndim: int, axis: Any) -> tuple[int, ...]:
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    features = {a % ndim for a in axes}
    return tuple(i for i in range(ndim) if i not in features)


def _batch_stats(module: nn.BatchNorm, x: jax.Array, mask: jax.Array | None
                 ) -> tuple[jax.Array, jax.Array]:
    """Per-feature (mean, biased var) of ``x`` as ``module`` computes them in training mode."""
    dtype = module.dtype if module.dtype is not None else jnp.result_type(x)
    if module.force_float32_reductions:
        dtype = jnp.promote_types(dtype, jnp.float32)
    x = jnp.asarray(x, dtype)
    axes = _reduction_axes(x.ndim, module.axis)
    where = None if mask is None else jnp.asarray(mask, bool)
    mu = jnp.mean(x, axes, where=where)
    if module.use_fast_variance:
        var = jnp.maximum(0.0, jnp.mean(jnp.square(jnp.abs(x)), axes, where=where)
                          - jnp.square(jnp.abs(mu)))
    else:
        var = jnp.mean(jnp.square(jnp.abs(x - jnp.expand_dims(mu, axes))), axes, where=where)
    return mu, var


def _uses_batch_stats(module: nn.BatchNorm, args: tuple, kwargs: dict) -> bool:
    """Whether this call normalises with batch statistics (training mode)."""
    flag = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
    if flag is None:
        flag = module.use_running_average
    return not bool(flag) and not module.is_initializing()


def _batch_norm_statistics(apply_fn: Callable[..., Any], variables: PyTree, batch: Any,
                          *, collection: str = "batch_stats"
                          ) -> dict[tuple[str, ...], list[tuple[jax.Array, jax.Array]]]:
    """Per-call batch statistics of every training-mode BatchNorm in one forward pass.

    Runs ``apply_fn(variables, batch, mutable=[collection])`` while intercepting
    ``nn.BatchNorm.__call__``. Returns ``{scope path: [(mean, var) per call]}``; jit-able.
    """
    captured: dict[tuple[str, ...], list[tuple[jax.Array, jax.Array]]] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"
                and _uses_batch_stats(module, args, kwargs)):
            stats = _batch_stats(module, args[0], kwargs.get("mask"))
            captured.setdefault(tuple(module.scope.path), []).append(stats)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        apply_fn(variables, batch, mutable=[collection])
    return captured


_jitted_statistics = jax.jit(_batch_norm_statistics, static_argnames=("apply_fn", "collection"))


def recalibrate_batch_norm(apply_fn: Callable[..., Any], variables: PyTree,
                           batches: Iterable[Any], *, collection: str = "batch_stats",
                           jit: bool = True) -> PyTree:
    """``variables`` with every BatchNorm's running ``mean``/``var`` recomputed from ``batches``.

    Args:
      apply_fn: ``apply_fn(variables, batch, mutable=[collection])`` runs the model in
        TRAINING mode, e.g. ``functools.partial(model.apply, train=True)`` for a model whose
        ``__call__(x, train)`` sets ``use_running_average=not train``.
      variables: Flax variables with a ``collection`` entry (e.g. ``{'params', 'batch_stats'}``);
        typically the pruned model's.
      batches: iterable of model inputs (passed as the second argument of ``apply_fn``).
      collection: name of the BatchNorm statistics collection.
      jit: run each forward pass under ``jax.jit`` (compiled once per ``apply_fn`` object,
        variables structure and batch shape: reuse one ``apply_fn`` across calls, e.g. across
        sparsity levels, to reuse the compiled pass).

    Returns a new variables dict: the ``mean``/``var`` of each BatchNorm that ran in training
    mode replaced by the average over batches of its per-batch mean and biased variance (see
    the module docstring); everything else (params, other statistics) unchanged. No gradient
    step is taken. Raises ValueError for an empty ``batches`` or when no BatchNorm ran in
    training mode.
    """
    if collection not in variables:
        raise ValueError(f"variables must contain the collection {collection!r}, got keys "
                         f"{sorted(variables)}")
    stats_fn = _jitted_statistics if jit else _batch_norm_statistics
    sums, n_batches = None, 0
    for batch in batches:
        stats = stats_fn(apply_fn, variables, batch, collection=collection)
        per_module = {path: (sum(m for m, _ in calls) / len(calls),
                             sum(v for _, v in calls) / len(calls))
                      for path, calls in stats.items()}
        sums = per_module if sums is None else jax.tree.map(jnp.add, sums, per_module)
        n_batches += 1
    if n_batches == 0:
        raise ValueError("batches must contain at least one batch, got 0")
    if not sums:
        raise ValueError("apply_fn ran no flax.linen.BatchNorm in training mode "
                         "(use_running_average=False); pass e.g. "
                         "functools.partial(model.apply, train=True)")
    new_stats = jax.tree.map(lambda x: x, variables[collection])  # fresh nested dicts
    for path, (mean_sum, var_sum) in sums.items():
        node = new_stats
        try:
            for name in path:
                node = node[name]
            old_mean, old_var = node["mean"], node["var"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"variables[{collection!r}] has no mean/var for the BatchNorm at "
                             f"{'/'.join(path)!r}") from err
        node["mean"] = (mean_sum / n_batches).astype(jnp.asarray(old_mean).dtype)
        node["var"] = (var_sum / n_batches).astype(jnp.asarray(old_var).dtype)
    out = dict(variables)
    out[collection] = new_stats
    return out
