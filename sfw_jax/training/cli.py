"""Command line for SFW / SGD training: ``sfw-train`` (``python -m sfw_jax.training.cli``; from a
checkout also ``python -m experiments.train``).

Options are the fields of :class:`sfw_jax.training.config.TrainConfig` (flag ``--k-frac`` =
field ``k_frac``). Values are resolved in this order: ``TrainConfig`` defaults < ``--preset
NAME`` < flags given on the command line. Errors (unknown flags, bad values, conflicts such as an
SFW-only flag with ``--optimizer sgd``, ``--resume`` without a checkpoint, a batch size not
divisible by the device count, missing or corrupt data) are one line with exit status 2, the
flag and config errors before any work starts (``--debug`` shows the traceback).

Examples::

    sfw-train --preset quickstart-digits --out-dir runs/digits
    sfw-train --preset paper-resnet18-cifar10 --data-dir data/cifar10-jpeg --out-dir runs/r18 \\
        [--resume]
    sfw-train --arch mlp --optimizer sgd --lr 0.05 --epochs 5
    sfw-train --constraint nm_sparse --nm 2:4 --tau 7 --epochs 5
    sfw-train --preset quickstart-digits --rescale fast_gradient --lr 0.1
    sfw-train --preset quickstart-digits --delay-lmo 0.33
    sfw-train --preset quickstart-digits --tau-start 20 --k-frac-start 0.1
    sfw-train --arch transformer_lm --dataset text \
        --data-dir ../shared/data/text/cpython-3.11.7-lib.tar.gz --optimizer adamw --epochs 2
    sfw-train --list-presets
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from sfw_jax._cli import ArgumentParser, add_debug_flag, user_errors
from sfw_jax.training import config as config_lib
from sfw_jax.training import presets
from sfw_jax.training.config import TrainConfig


def _model_kw(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` with VALUE as JSON (``0.5``, ``true``, ``[256, 256]``) or a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return key.strip(), value


CPU_KERNEL = {"auto": None, "on": True, "off": False}
"""``--cpu-kernel`` values and the ``TrainConfig.cpu_kernel`` each sets."""


def _cpu_kernel(text: str) -> bool | None:
    if text not in CPU_KERNEL:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(CPU_KERNEL)}, got {text!r}")
    return CPU_KERNEL[text]


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def build_parser() -> argparse.ArgumentParser:
    """Parser whose defaults are all suppressed, so the namespace holds only explicit flags."""
    p = ArgumentParser(
        prog="sfw-train", usage="sfw-train [--preset NAME] [options] (see --help)",
        description=__doc__.split("\n")[0], argument_default=argparse.SUPPRESS,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_debug_flag(p)
    p.add_argument("--preset", choices=presets.preset_names(),
                   help="start from a named preset; explicit flags override it")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON and exit (no training)")

    g = p.add_argument_group("model and data")
    g.add_argument("--arch", choices=config_lib.ARCHS)
    g.add_argument("--model-kw", dest="model_kwargs", type=_model_kw, action="append",
                   metavar="KEY=VALUE", help="model attribute, e.g. width=0.5 or use_bn=true "
                   "(repeatable; replaces the preset's model_kwargs)")
    g.add_argument("--dataset", type=str, help="'digits' (embedded), 'cifar10', 'mnist', ...")
    g.add_argument("--data-dir", type=str, help="local dataset folder or archive")
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--image-size", type=_optional_int)
    g.add_argument("--max-train-samples", type=_optional_int)
    g.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="random crop + flip (default: on for CIFAR-like datasets)")

    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", choices=config_lib.OPTIMIZERS)
    g.add_argument("--constraint", choices=tuple(config_lib.CONSTRAINTS))
    g.add_argument("--k", type=int, help="K = min(max(k, floor(k_frac n)), n) per tensor")
    g.add_argument("--k-frac", type=float)
    g.add_argument("--nm", type=str, metavar="N:M",
                   help="pattern of --constraint nm_sparse, e.g. 2:4 (N nonzeros in every M "
                        "consecutive input features of each kernel)")
    g.add_argument("--tau", type=float,
                   help="constraint size: diameter factor ('initialization'), radius or diameter")
    g.add_argument("--mode", choices=config_lib.MODES)
    g.add_argument("--rescale", choices=config_lib.RESCALES,
                   help="SFW step factor: ||m||/||x - v|| ('gradient'), ||m||/(D/2) "
                        "('fast_gradient'), 1/D ('diameter') or 1 ('none')")
    g.add_argument("--delay-lmo", type=_optional_float, metavar="FRACTION",
                   help="train the first FRACTION of the steps with K = n at the same L2 "
                        "diameters, then with the target K (delayed LMO)")
    g.add_argument("--tau-start", type=_optional_float,
                   help="constraint schedule: tau of the first phase, moved linearly to --tau")
    g.add_argument("--k-frac-start", type=_optional_float,
                   help="constraint schedule: k_frac of the first phase, moved to --k-frac")
    g.add_argument("--schedule-phases", type=int,
                   help="piecewise constant phases of the --tau-start / --k-frac-start schedule")
    g.add_argument("--schedule-end", type=float, metavar="FRACTION",
                   help="fraction of the steps at which that schedule reaches --tau / --k-frac")
    g.add_argument("--sfw-scope", choices=config_lib.SFW_SCOPES,
                   help="'all' tensors (reference) or 'kernels' only with SGD on the rest")
    g.add_argument("--init-norm-samples", type=int,
                   help="initialisations averaged for E||W_init|| (reference: 100)")
    g.add_argument("--init-norm-rule", choices=config_lib.INIT_NORM_RULES,
                   help="E||W_init|| by tensor shape as the reference ('reference') or per tensor")
    g.add_argument("--sfw-init", action=argparse.BooleanOptionalAction,
                   help="SFW-Init: learn per-tensor init scales before training")
    g.add_argument("--sfw-init-steps", type=int, help="SFW-Init Adam steps (reference 390)")
    g.add_argument("--sfw-init-lr", type=float, help="SFW-Init Adam learning rate")
    g.add_argument("--cpu-kernel", type=_cpu_kernel, metavar="{" + ",".join(CPU_KERNEL) + "}",
                   help="SFW's native CPU kernel for the float32 K-sparse leaves "
                        "(sfw_jax.fw.native): 'auto' = where it builds on a CPU backend (the "
                        "config default; presets that must reproduce bitwise pin 'off'), 'on' "
                        "(an error where it cannot be built) or 'off' (the XLA path)")
    g.add_argument("--lr", type=float,
                   help="base lr (SFW default 1.0, SGD 0.1, AdamW 1e-3, Adam-SFW 0.01)")
    g.add_argument("--rest-lr", type=float,
                   help="lr of the unconstrained leaves: SGD (sfw, default 0.1) or AdamW "
                        "(adam_sfw, default 1e-3)")
    g.add_argument("--lr-schedule", choices=config_lib.LR_SCHEDULES)
    g.add_argument("--trend-loss", choices=config_lib.TREND_LOSSES,
                   help="epoch loss read by 'dynamic_change' (reference: last_batch)")
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float,
                   help="SGD default 5e-4, SFW 0, AdamW 0.1 (decoupled), Adam-SFW 0")

    g = p.add_argument_group("loop")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--precision", choices=config_lib.PRECISIONS)
    g.add_argument("--out-dir", type=str)
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out-dir")
    g.add_argument("--keep-checkpoints", type=int)
    g.add_argument("--log-every", type=int)
    g.add_argument("--progress", action=argparse.BooleanOptionalAction)
    g.add_argument("--steps-per-call", type=_optional_int, metavar="N",
                   help="optimizer steps per jitted call (lax.scan; the same results as one "
                        "per call); 'none' = the backend's default")

    g = p.add_argument_group("devices")
    g.add_argument("--num-devices", type=_optional_int)
    g.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize first")
    g.add_argument("--coordinator-address", type=str)
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)
    return p


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """(config, names of explicitly given fields) from a parsed namespace; raises ValueError."""
    given = {k: v for k, v in vars(args).items()
             if k not in ("preset", "list_presets", "print_config", "debug")}
    if "model_kwargs" in given:
        keys = [k for k, _ in given["model_kwargs"]]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"--model-kw given twice for {dup}")
        given["model_kwargs"] = dict(given["model_kwargs"])
    cfg = presets.from_preset(getattr(args, "preset", None), **given)
    return cfg, set(given)


def check_conflicts(cfg: TrainConfig, explicit: set[str]) -> None:
    """Flags that make no sense together (ValueError naming them)."""
    if cfg.optimizer not in config_lib.SFW_OPTIMIZERS:
        bad = sorted(f for f in explicit if f in config_lib.SFW_ONLY_FIELDS)
        if bad:
            flags = ", ".join("--" + f.replace("_", "-") for f in bad)
            raise ValueError(f"{flags}: only meaningful with --optimizer sfw (or adam_sfw), but "
                             f"the optimizer is {cfg.optimizer!r}; drop the flag(s) or use "
                             f"--optimizer sfw")
    if cfg.resume and cfg.out_dir is None:
        raise ValueError("--resume needs --out-dir (the run to continue)")
    for f in ("coordinator_address", "num_processes", "process_id"):
        if f in explicit and not cfg.distributed:
            raise ValueError(f"--{f.replace('_', '-')} needs --distributed")


def parse_config(argv: Sequence[str] | None = None,
                 parser: argparse.ArgumentParser | None = None
                 ) -> tuple[TrainConfig | None, argparse.Namespace]:
    """Parse ``argv`` into a validated, resolved ``TrainConfig`` (a one-line error and exit
    status 2 on bad input); the config is None with ``--list-presets``."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "list_presets", False):
        return None, args
    with user_errors(parser, args.debug):
        cfg, explicit = config_from_args(args)
        check_conflicts(cfg, explicit)
        cfg = config_lib.validate(cfg)
    return cfg, args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if the loss became non-finite, 130 when
    interrupted); a user's error exits with status 2; on several processes, a failed collective
    (another process died) ends the process at once with one line and status 1."""
    parser = build_parser()
    cfg, args = parse_config(argv, parser)
    if getattr(args, "list_presets", False):
        for name in presets.preset_names():
            print(f"{name}: {json.dumps(presets.PRESETS[name], sort_keys=True)}")
        return 0
    if getattr(args, "print_config", False):
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0

    from sfw_jax.training import distributed, loop  # JAX import only when training

    try:
        with user_errors(parser, args.debug), \
                distributed.exit_on_collective_failure(not args.debug):
            mesh = loop.setup_devices(cfg)
            loop.check_run_preconditions(cfg, mesh)
            loop.train(cfg, mesh=mesh)
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f"; continue with --resume --out-dir {cfg.out_dir}" if cfg.out_dir else ""
        print(f"interrupted: the last finished epoch's checkpoint is kept{where}",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
