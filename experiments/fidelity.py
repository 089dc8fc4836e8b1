"""Side-by-side check of the paper preset's first SFW steps against the reference behaviour.

    python -m experiments.fidelity --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        [--init-norm-rule reference|per_leaf] [--samples 512] [--passes 2] [--eval 1000]

ResNet-18 with the settings of the ``paper-resnet18-cifar10`` preset (K-sparse constraints on
every tensor, k 10, k_frac 0.05, tau 15 'initialization' diameters from E||W_init|| over 100
draws, lr 1.0, momentum 0.9, 'gradient' rescale), trained on the first ``--samples`` images of a
seeded permutation of the training split, normalized by their own per-channel mean and std, in
batches of 128 without augmentation, ``--passes`` passes in a fixed order; then BatchNorm
inference mode on the first ``--eval`` test images. Prints the training loss of every step,
the eval loss and accuracy, and three audit figures (``docs/reference-semantics.md``):

* ``min_nnz_minus_k``: min over steps and K-sparse leaves of (#nonzero entries of the
  momentum m) - K. When it is >= 0 no zero entry of m is ever selected by the LMO, so the
  vertex sign of a zero entry (the reference's ``sign(0) = 0`` vs this package's ``+r``) never
  matters;
* ``eval_loss_unbiased_bn``: the eval loss with BatchNorm running variances as PyTorch keeps
  them (the unbiased batch variance, N/(N-1) times Flax's, N = batch x height x width of the
  layer), computed exactly from Flax's running averages;
* with ``--normalize reference``: inputs normalized by the reference's fixed CIFAR-10
  constants instead of the images' own statistics.

The functions are importable (the CI test runs :func:`run_fidelity` on synthetic images).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sfw_jax
from sfw_jax import INIT_NORM_RULES
from sfw_jax._cli import ArgumentParser, add_debug_flag, user_errors
from sfw_jax.training.datasets import load_dataset
from sfw_jax.training.models import get_model
from sfw_jax.training.presets import from_preset

REFERENCE_MEAN = (0.4914, 0.4822, 0.4465)
REFERENCE_STD = (0.2023, 0.1994, 0.2010)
"""The reference's CIFAR-10 ``transforms.Normalize`` constants."""

PRESET = "paper-resnet18-cifar10"


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 ``(x / 255 - mean) / std``."""
    return ((images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
            / np.asarray(std, np.float32))


def own_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (in [0, 1] scale) of uint8 [N, H, W, C] images."""
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


def _bn_sizes(model: Any, variables: dict, x: jax.Array) -> dict:
    """N = batch x H x W of every BatchNorm layer's input, as a tree like ``batch_stats``
    (read off the captured BatchNorm outputs: same shape as the inputs)."""
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"],
                              capture_intermediates=lambda mdl, _: type(mdl).__name__ ==
                              "BatchNorm"), variables)
    inter = state["intermediates"]

    def size(path, _):
        node = inter
        for key in path[:-1]:
            node = node[key.key]
        out = node["__call__"][0]
        return int(np.prod(out.shape[:-1]))

    return jax.tree_util.tree_map_with_path(size, variables["batch_stats"])


def unbiased_running_var(batch_stats: dict, sizes: dict, steps: int, momentum: float = 0.9
                         ) -> dict:
    """PyTorch's running variance from Flax's after ``steps`` updates with batches of ``N``
    values per channel: both start at 1 and average with weight ``1 - momentum``; PyTorch
    averages ``v N/(N-1)``, so ``var_pt = var_flax + (var_flax - momentum**steps) / (N - 1)``."""
    def fix(path, leaf):
        if getattr(path[-1], "key", None) != "var":
            return leaf
        node = sizes
        for key in path:
            node = node[key.key]
        return leaf + (leaf - momentum ** steps) / (node - 1)

    return jax.tree_util.tree_map_with_path(fix, batch_stats)


def run_fidelity(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, init_norm_rule: str = "reference", passes: int = 2,
                 batch_size: int = 128, seed: int = 0, arch: str = "resnet18",
                 model_kwargs: dict | None = None, init_norm_samples: int | None = None) -> dict:
    """Train the preset's SFW on ``train_x`` (float32, normalized) for ``passes`` passes of
    ``len(train_x) // batch_size`` steps in order, then evaluate on ``test_x``.

    Returns ``{"train_losses": [...], "eval_loss", "eval_acc", "eval_loss_unbiased_bn",
    "min_nnz_minus_k", "init_norm_rule"}``."""
    cfg = from_preset(PRESET)
    samples = cfg.init_norm_samples if init_norm_samples is None else init_norm_samples
    model = get_model(arch, 10, **(model_kwargs or {}))
    x0 = jnp.zeros((1,) + train_x.shape[1:], jnp.float32)
    init_key, norm_key = jax.random.split(jax.random.key(seed))
    variables = model.init(init_key, x0, train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    norms = sfw_jax.expected_init_norms(lambda k: model.init(k, x0, train=False)["params"],
                                        norm_key, samples, rule=init_norm_rule)
    constraints = sfw_jax.make_constraints(params, cfg.constraint, k=cfg.k, k_frac=cfg.k_frac,
                                           value=cfg.tau, mode=cfg.mode, init_norms=norms)
    params = sfw_jax.make_feasible(params, constraints)
    tx = sfw_jax.sfw(cfg.lr, constraints, momentum=cfg.momentum, rescale=cfg.rescale)
    opt_state = tx.init(params)
    ks = jax.tree.map(lambda c: c.k, constraints, is_leaf=sfw_jax.is_constraint)

    @jax.jit
    def step(params, batch_stats, opt_state, x, y):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                      mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]
        (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        nnz_gap = jax.tree.map(lambda m, k: jnp.sum(m != 0) - k, opt_state.momentum, ks)
        return (optax.apply_updates(params, updates), new_bs, opt_state, loss,
                jnp.min(jnp.stack(jax.tree.leaves(nnz_gap))))

    @jax.jit
    def evaluate(params, batch_stats, x, y):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return losses.mean(), (jnp.argmax(logits, -1) == y).mean()

    steps = len(train_x) // batch_size
    losses, gaps = [], []
    for _ in range(passes):
        for i in range(steps):
            sl = slice(i * batch_size, (i + 1) * batch_size)
            params, batch_stats, opt_state, loss, gap = step(
                params, batch_stats, opt_state, jnp.asarray(train_x[sl]), jnp.asarray(train_y[sl]))
            losses.append(float(loss))
            gaps.append(int(gap))
    eval_loss, eval_acc = evaluate(params, batch_stats, jnp.asarray(test_x), jnp.asarray(test_y))
    sizes = _bn_sizes(model, {"params": params, "batch_stats": batch_stats},
                      jnp.zeros((batch_size,) + train_x.shape[1:], jnp.float32))
    unbiased = unbiased_running_var(batch_stats, sizes, passes * steps)
    eval_loss_pt, _ = evaluate(params, unbiased, jnp.asarray(test_x), jnp.asarray(test_y))
    return {"init_norm_rule": init_norm_rule, "train_losses": losses,
            "eval_loss": float(eval_loss), "eval_acc": float(eval_acc),
            "eval_loss_unbiased_bn": float(eval_loss_pt), "min_nnz_minus_k": min(gaps)}


def load_subset(data_dir: str, samples: int, n_eval: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first ``samples`` training images and the first ``n_eval`` test images of seeded
    permutations of the CIFAR-10 copy in ``data_dir`` (uint8, int32; the files are stored by
    class, so unpermuted subsets would hold one class)."""
    ds = load_dataset("cifar10", data_dir=data_dir, val_fraction=0.0)
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(ds.train.labels))[:samples]
    te = rng.permutation(len(ds.test.labels))[:n_eval]
    return (ds.train.images[tr], ds.train.labels[tr].astype(np.int32),
            ds.test.images[te], ds.test.labels[te].astype(np.int32))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.fidelity", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="CIFAR-10 folder or .tar.gz archive")
    p.add_argument("--init-norm-rule", choices=INIT_NORM_RULES,
                   default="reference")
    p.add_argument("--normalize", choices=("own", "reference"), default="own",
                   help="the subset's own mean/std, or the reference's fixed constants")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--eval", dest="n_eval", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    p.add_argument("--save-subset", metavar="FILE.npz",
                   help="also write the normalized subset (train_x, train_y, test_x, test_y), "
                        "e.g. to feed the same images to the reference code")
    add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("samples", "passes", "n_eval"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('n_', '')} must be >= 1, got {getattr(args, name)}")
    with user_errors(parser, args.debug):
        tx, ty, ex, ey = load_subset(args.data_dir, args.samples, args.n_eval, args.seed)
    mean, std = (own_stats(tx) if args.normalize == "own" else (REFERENCE_MEAN, REFERENCE_STD))
    tx, ex = normalize(tx, mean, std), normalize(ex, mean, std)
    if args.save_subset:
        np.savez(args.save_subset, train_x=tx, train_y=ty, test_x=ex, test_y=ey)
    res = run_fidelity(tx, ty, ex, ey,
                       init_norm_rule=args.init_norm_rule, passes=args.passes, seed=args.seed)
    res["normalize"] = args.normalize
    print(f"init_norm_rule {res['init_norm_rule']}, normalize {args.normalize}")
    print("train loss: " + " ".join(f"{v:.2f}" for v in res["train_losses"]))
    print(f"eval loss {res['eval_loss']:.4g} (PyTorch-style running var "
          f"{res['eval_loss_unbiased_bn']:.4g}), eval acc {100 * res['eval_acc']:.1f} %")
    print(f"min over steps and leaves of nnz(m) - K: {res['min_nnz_minus_k']}")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
