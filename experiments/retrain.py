"""The baseline the paper argues against: prune a trained net, then retrain under the mask.

``python -m experiments.retrain RUN_DIR --sparsities 90 95 98 [--nm 2:4] [--epochs N]
[--lr 0.01] [--scope kernels|all] [--out FILE.json]``

For each sparsity: global magnitude mask of the run's final params (:func:`sfw_jax.magnitude_mask`),
pruned entries set to 0, then ``N`` epochs of SGD (heavy-ball momentum 0.9, learning rate ``lr``
with per-step cosine decay to 0, weight decay from the run's config) chained with
:func:`sfw_jax.keep_masked` (last in the chain), so pruned weights stay exactly 0. BatchNorm
statistics keep updating as in training; augmentation as in the run. The engine's jitted train
step (:func:`sfw_jax.training.steps.make_train_step`) does the work; epochs continue the run's
shuffling sequence (``epoch_permutation(n, seed, run_epochs + e)``). The mask is part of the
optimizer state, an argument of the jitted step, so all levels of one call of
:func:`retrain_many` share one compiled step.

Default ``N``: 10% of the run's training epochs (at least 1). Each record holds the one-shot
accuracy before retraining, the accuracy after, the retraining compute (epochs, steps, wall
time, and the run's own training time for comparison) and the verified final sparsity: every
pruned entry must be exactly 0 at the end (else RuntimeError), so ``final_sparsity`` equals
``round(s * N) / N`` exactly.

``--nm 2:4`` prunes with an N:M mask instead (:func:`sfw_jax.nm_mask`: the N largest |w| of
every M consecutive input features of each kernel whose input size M divides; scope 'kernels')
and retrains under it the same way; its record has ``pattern`` '2:4' and ``sparsity`` 1 - N/M
(unstructured records: ``pattern`` 'unstructured'). With ``--nm`` and no ``--sparsities`` only
the N:M patterns are retrained.

The output JSON is rewritten after each sparsity; a re-run skips the sparsities already there
with the same settings (resumable).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments._loaded_run import LoadedRun, load_trained
from experiments.prune_sweep import (UNSTRUCTURED, add_run_arguments, check_patterns,
                                     check_sparsities, nm_target, percents_to_fractions,
                                     row_pattern)
from sfw_jax import LEAF_SCOPES, leaf_scope
from sfw_jax._cli import ArgumentParser, user_errors
from sfw_jax._progress import progress_bar
from sfw_jax.fw import nm_eligible, parse_nm
from sfw_jax.pruning import (apply_mask, keep_masked, magnitude_mask, nm_mask,
                             sparsity_summary)
from sfw_jax.training import distributed as dist
from sfw_jax.training import run_folder
from sfw_jax.training.datasets import epoch_permutation
from sfw_jax.training.optimizers import sgd_with_decay
from sfw_jax.training.steps import TrainState, make_train_step

PyTree = Any


def default_epochs(run_epochs: int) -> int:
    """Retraining epochs by default: 10% of the training epochs, at least 1."""
    return max(1, round(0.1 * run_epochs))


@dataclasses.dataclass
class RetrainResult:
    """record: JSON-able summary (see the module docstring). params, batch_stats: the retrained
    variables. mask: the pruning mask (True = kept)."""

    record: dict
    params: PyTree
    batch_stats: PyTree
    mask: PyTree


def _check_args(sparsity: Any, epochs: Any, lr: Any, momentum: Any, weight_decay: Any,
                batch_size: Any, scope: Any) -> float:
    s = check_sparsities([sparsity], "sparsity")[0]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 \
            or not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
            or not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if weight_decay is not None and (isinstance(weight_decay, bool) or not isinstance(
            weight_decay, (int, float)) or not weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0 or None, got {weight_decay!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
    leaf_scope(scope)
    return s


def retrain_optimizer(mask: PyTree, schedule: optax.Schedule, momentum: float,
                      weight_decay: float) -> optax.GradientTransformationExtraArgs:
    """SGD with decay and momentum on ``schedule``, then :func:`sfw_jax.keep_masked` (its state
    holds ``mask``)."""
    return optax.chain(sgd_with_decay(schedule, float(momentum), float(weight_decay)),
                       keep_masked(mask))


def retrain(run: LoadedRun, sparsity: float | None = None, *, nm: Any = None,
            epochs: int | None = None, lr: float = 0.01, momentum: float = 0.9,
            weight_decay: float | None = None, batch_size: int | None = None,
            scope: str = "kernels", seed: int | None = None, progress: bool = True,
            step_cache: dict | None = None) -> RetrainResult:
    """Prune ``run`` to ``sparsity`` (global magnitude, ``scope``), or to the N:M pattern ``nm``,
    and retrain under the mask.

    Args:
      run: a loaded finished run (:func:`experiments._loaded_run.load_trained`).
      sparsity: fraction in [0, 1] of the scope's entries to prune (give it or ``nm``).
      nm: an N:M pattern ('2:4' or ``(2, 4)``): :func:`sfw_jax.nm_mask` of the kernels
        (scope 'kernels'), the sparsity of the grouped kernels is 1 - N/M.
      epochs: retraining epochs (default :func:`default_epochs` of the run's epochs).
      lr: peak learning rate (cosine decay to 0 over all retraining steps).
      momentum: SGD heavy-ball momentum.
      weight_decay: L2 decay (default: the run's ``weight_decay``).
      batch_size: default: the run's ``batch_size``.
      scope: ``'kernels'`` or ``'all'`` (:data:`sfw_jax.LEAF_SCOPES`).
      seed: shuffling / augmentation seed (default: the run's seed).
      progress: a progress bar (on a terminal).
      step_cache: a dict shared by the calls on one run (:func:`retrain_many` passes one): the
        jitted train step is built once per setting and reused for every mask (the mask is an
        argument, in the optimizer state).

    Raises:
      ValueError: a bad argument (named, with its value and what is allowed).
      FloatingPointError: the loss became non-finite.
      RuntimeError: a pruned entry is not exactly 0 after retraining.
    """
    cfg = run.config
    epochs = default_epochs(cfg.epochs) if epochs is None else epochs
    if (sparsity is None) == (nm is None):
        raise ValueError(f"give exactly one of sparsity and nm, got sparsity={sparsity!r}, "
                         f"nm={nm!r}")
    pattern = UNSTRUCTURED if nm is None else check_patterns([nm])[0]
    if nm is not None:
        if scope != "kernels":
            raise ValueError(f"scope must be 'kernels' with nm (N:M masks prune kernels only), "
                             f"got {scope!r}")
        sparsity = nm_target(pattern)
    s = _check_args(sparsity, epochs, lr, momentum, weight_decay, batch_size, scope)
    wd = float(cfg.weight_decay if weight_decay is None else weight_decay)
    bs = cfg.batch_size if batch_size is None else batch_size
    seed = cfg.seed if seed is None else seed
    t0 = time.time()

    if nm is None:
        mask = magnitude_mask(run.params, s, scope="global", include=leaf_scope(scope))
    else:
        mask = nm_mask(run.params, *parse_nm(pattern))
    params0 = apply_mask(run.params, mask)
    val = run.evaluator.put(run.dataset.val) if len(run.dataset.val) else None
    test = run.evaluator.put(run.dataset.test)
    no_split = {"loss": None, "accuracy": None}
    before_val = run.evaluator(params0, run.batch_stats, val) if val is not None else no_split
    before_test = run.evaluator(params0, run.batch_stats, test)

    split = run.train_split
    n = len(split)
    if bs > n:
        raise ValueError(f"batch_size must be <= the number of training examples ({n}), "
                         f"got {bs}")
    steps = n // bs
    total = epochs * steps
    schedule = optax.cosine_decay_schedule(float(lr), total)
    tx = retrain_optimizer(mask, schedule, momentum, wd)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1_000_003 + round(s * 1e6))
    repl = dist.replicated(run.mesh)
    state = TrainState(params=params0, batch_stats=run.batch_stats, opt_state=tx.init(params0),
                       step=jnp.zeros((), jnp.int32), rng=key)
    # copies: the train step donates its state, which must not free the run's own arrays
    state = jax.device_put(jax.tree.map(jnp.copy, state), repl)
    images = jax.device_put(split.images, repl)
    labels = jax.device_put(split.labels, repl)
    step_fn = _train_step(run, tx, (float(lr), total, float(momentum), wd),
                          {} if step_cache is None else step_cache)
    perm_sharding = NamedSharding(run.mesh, P(None, dist.DATA_AXIS))
    history = []
    for e in range(epochs):
        te = time.time()
        order = epoch_permutation(n, seed, cfg.epochs + e)[: steps * bs]
        perm = jax.device_put(order.astype(np.int32).reshape(steps, bs), perm_sharding)
        losses = []
        with progress_bar(steps, f"retrain {100 * s:g}% epoch {e + 1}/{epochs}",
                          enabled=progress, leave=False) as bar:
            for i in range(steps):
                state, m = step_fn(state, images, labels, perm, i)
                losses.append(m["loss"])
                if (i + 1) % 20 == 0 or i + 1 == steps:
                    bar.update(i + 1 - bar.n)
        mean_loss = float(np.mean(jax.device_get(losses)))
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"non-finite retraining loss ({mean_loss}) at sparsity {s}, epoch {e + 1}; "
                f"try a smaller lr (got {lr})")
        ev = (run.evaluator(state.params, state.batch_stats, val) if val is not None
              else no_split)
        history.append({"epoch": e + 1, "train_loss": mean_loss, "val_acc": ev["accuracy"],
                        "val_loss": ev["loss"], "epoch_time": time.time() - te})

    params = jax.device_get(state.params)
    counts = sparsity_summary(params, mask, include=leaf_scope(scope))
    if nm is None:
        expected = round(s * counts.size)
    else:   # (M - N) of every M entries of each grouped kernel
        n_keep, m = parse_nm(pattern)
        expected = sum(x.size for x in jax.tree.leaves(params)
                       if nm_eligible(x.shape, m)) * (m - n_keep) // m
    if not (counts.pruned == expected and counts.pruned_zeros == expected):
        raise RuntimeError(
            f"retraining broke the {pattern} mask at sparsity {s}: {counts.pruned} pruned "
            f"entries (expected {expected}), of which {counts.pruned_zeros} are exactly 0")
    after_val = (run.evaluator(state.params, state.batch_stats, val) if val is not None
                 else no_split)
    after_test = run.evaluator(state.params, state.batch_stats, test)
    wall = time.time() - t0
    record = {
        "sparsity": s, "pattern": pattern, "scope": scope, "epochs": epochs, "steps": total,
        "lr": float(lr), "momentum": float(momentum), "weight_decay": wd, "batch_size": bs,
        "schedule": "cosine (per step, to 0)", "seed": seed,
        "oneshot_val_acc": before_val["accuracy"], "oneshot_test_acc": before_test["accuracy"],
        "val_acc": after_val["accuracy"], "val_loss": after_val["loss"],
        "test_acc": after_test["accuracy"], "test_loss": after_test["loss"],
        "final_sparsity": counts.pruned_zeros / counts.size,
        "n_pruned": counts.pruned, "n_scope": counts.size,
        "zero_fraction": counts.zeros / counts.size,
        "wall_time": wall, "retrain_epoch_fraction": epochs / cfg.epochs,
        "run_epochs": cfg.epochs, "run_train_time": run.train_time,
        "history": history,
    }
    return RetrainResult(record=record, params=params,
                         batch_stats=jax.device_get(state.batch_stats), mask=mask)


def _train_step(run: LoadedRun, tx: optax.GradientTransformationExtraArgs, setting: tuple,
                cache: dict) -> Callable:
    """The jitted train step of ``run`` under ``tx``, from ``cache`` when a step of the same
    ``setting`` (lr, total steps, momentum, decay) is there: ``tx``'s update differs between
    masks only by the mask it reads from the state."""
    if setting not in cache:
        info = run.dataset.info
        cache[setting] = make_train_step(run.model, tx, mean=np.asarray(info.mean),
                                         std=np.asarray(info.std), augment=bool(run.config.augment),
                                         mesh=run.mesh)
    return cache[setting]


def _same_settings(rec: dict, want: dict) -> bool:
    return all(rec.get(k) == v for k, v in want.items())


def retrain_many(run: LoadedRun, sparsities: Sequence[float], *, nm: Sequence[Any] = (),
                 out_path: str | None = None, progress: bool = True,
                 **kw: Any) -> list[dict]:
    """:func:`retrain` at each sparsity, then at each N:M pattern of ``nm`` (``sparsities`` may
    be empty when ``nm`` is not), all with one compiled train step; records are appended to
    ``out_path`` (JSON) after each one, and records already there with the same settings are
    reused (resumable)."""
    patterns = check_patterns(nm)
    levels = check_sparsities(sparsities) if len(sparsities) or not patterns else []
    epochs = kw.pop("epochs", None)
    epochs = default_epochs(run.config.epochs) if epochs is None else epochs
    kw["epochs"] = epochs
    records: list[dict] = []
    if out_path and os.path.isfile(out_path):
        records = list(run_folder.read_json(out_path).get("records", []))
    settings = {"epochs": epochs, "lr": float(kw.get("lr", 0.01)),
                "scope": kw.get("scope", "kernels")}
    out = []
    step_cache: dict = {}
    jobs = [(UNSTRUCTURED, s) for s in levels] + [(p, nm_target(p)) for p in patterns]
    for pattern, s in jobs:
        hit = [r for r in records if abs(r["sparsity"] - s) < 1e-9 and row_pattern(r) == pattern
               and _same_settings(r, settings)]
        if hit:
            out.append(hit[-1])
            continue
        how = {"sparsity": s} if pattern == UNSTRUCTURED else {"nm": pattern}
        rec = retrain(run, progress=progress, step_cache=step_cache, **how, **kw).record
        if progress:
            name = f"{100 * s:g}%" if pattern == UNSTRUCTURED else pattern
            print(f"retrain {name}: one-shot test {100 * rec['oneshot_test_acc']:.2f}% -> "
                  f"{100 * rec['test_acc']:.2f}% after {rec['epochs']} epoch(s), "
                  f"{rec['wall_time']:.0f}s", file=sys.stderr)
        records.append(rec)
        out.append(rec)
        if out_path:
            run_folder.write_json(out_path, {"run_dir": run.out_dir,
                                             "dense_test_acc": run.final.get("test_acc"),
                                             "records": records})
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.retrain", description=__doc__.split("\n")[0])
    add_run_arguments(p)
    p.add_argument("--sparsities", type=float, nargs="+", default=None, metavar="PERCENT",
                   help="sparsity levels in percent (default 90 95 98, none with --nm)")
    p.add_argument("--epochs", type=int, default=None,
                   help="retraining epochs per sparsity (default: 10%% of the run's epochs)")
    p.add_argument("--lr", type=float, default=0.01, help="peak lr (cosine decay to 0)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default: the run's weight_decay")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    p.add_argument("--scope", choices=LEAF_SCOPES, default="kernels")
    p.add_argument("--out", default=None,
                   help=f"JSON file (default RUN_DIR/{run_folder.RETRAIN_FILE})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser, args.debug):
        patterns = check_patterns(args.nm, "--nm")
        percents = args.sparsities
        if percents is None:
            percents = [] if patterns else [90, 95, 98]
        levels = percents_to_fractions(percents) if percents else []
        if patterns and args.scope != "kernels":
            raise ValueError(f"--nm prunes kernels only: --scope must be 'kernels', got "
                             f"{args.scope!r}")
        try:
            _check_args(levels[0] if levels else 0.0, 1 if args.epochs is None else args.epochs,
                        args.lr, args.momentum, args.weight_decay, args.batch_size, args.scope)
        except ValueError as e:
            raise ValueError(str(e).replace("epochs must", "--epochs must")) from None
        run_folder.check_finished(args.run_dir)
        out = args.out or run_folder.path(args.run_dir, run_folder.RETRAIN_FILE)
        run = load_trained(args.run_dir)
        recs = retrain_many(run, levels, nm=patterns, out_path=out,
                            progress=not args.no_progress, epochs=args.epochs, lr=args.lr,
                            momentum=args.momentum, weight_decay=args.weight_decay,
                            batch_size=args.batch_size, scope=args.scope)
    print(f"dense test acc {100 * run.final['test_acc']:.2f}%")
    for r in recs:
        name = f"{100 * r['sparsity']:5.1f}%" if row_pattern(r) == UNSTRUCTURED else \
            f"{row_pattern(r):>6s}"
        print(f"{name}  one-shot {100 * r['oneshot_test_acc']:6.2f}%  "
              f"retrained {100 * r['test_acc']:6.2f}%  ({r['epochs']} epochs, "
              f"{r['wall_time']:.0f}s, final sparsity {100 * r['final_sparsity']:.3f}%)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
