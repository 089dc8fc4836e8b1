"""Command line for SFW / SGD training: ``sfw-train`` (``python -m sfw_jax.training.cli``; from a
checkout also ``python -m experiments.train``).

Options are the fields of :class:`sfw_jax.training.config.TrainConfig` (flag ``--k-frac`` =
field ``k_frac``); the flags are generated from the fields' declarations (type, choices, help,
grouped by concern). Values are resolved in this order: ``TrainConfig`` defaults < ``--preset
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
from typing import Any, Callable, Mapping, Sequence

from sfw_jax._cli import ArgumentParser, add_debug_flag, user_errors
from sfw_jax.training import config as config_lib
from sfw_jax.training import presets
from sfw_jax.training.config import CONCERNS, OPTIONS, Option, TrainConfig
from sfw_jax.training.optimizers import SFW_OPTIMIZERS

__all__ = ["build_parser", "parse_config", "main"]


_CONTROL_FLAGS = ("preset", "list_presets", "print_config", "debug")


def _key_value(text: str) -> tuple[str, Any]:
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


def _or_none(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert``, and the word 'none' -> None (an option that may be None)."""
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)
    parse.__name__ = convert.__name__  # argparse names it: "invalid int value: 'x'"
    return parse


def _word(values: Mapping[str, Any]) -> Callable[[str], Any]:
    """One of the words of ``values`` -> its value."""
    def parse(text: str) -> Any:
        if text not in values:
            raise argparse.ArgumentTypeError(
                f"must be one of {', '.join(values)}, got {text!r}")
        return values[text]
    return parse


def _flag(opt: Option) -> str:
    """The command-line flag of an option: ``--k-frac`` for ``k_frac`` unless declared."""
    return opt.flag or "--" + opt.name.replace("_", "-")


def _default_text(opt: Option) -> str:
    if opt.values:
        return next((w for w, v in opt.values.items() if v == opt.default), "")
    return "" if opt.default is None else str(opt.default)


def _argument(opt: Option) -> dict[str, Any]:
    """``add_argument`` keywords of an option, from its type and metadata: a bool is
    ``--x/--no-x``, a mapping a repeatable ``KEY=VALUE``, ``values`` a word per value, choices
    a choice; an int or float that may be None also takes the word 'none'."""
    default = _default_text(opt)
    kw: dict[str, Any] = {"dest": opt.name, "help": (opt.help + (
        f" (default: {default})" if default else "")).replace("%", "%%")}
    if opt.values:
        kw.update(type=_word(opt.values), metavar="{" + ",".join(opt.values) + "}")
    elif opt.kind is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif opt.is_mapping:
        kw.update(action="append", type=_key_value)
    elif opt.choices is not None:
        kw["choices"] = tuple(opt.choices)
    else:
        kw["type"] = _or_none(opt.kind) if opt.optional and opt.kind is not str else opt.kind
    if opt.metavar:
        kw["metavar"] = opt.metavar
    return kw


def build_parser() -> argparse.ArgumentParser:
    """Parser whose defaults are all suppressed, so the namespace holds only explicit flags:
    the control flags, then one flag per option of :data:`sfw_jax.training.config.OPTIONS`,
    grouped by concern."""
    p = ArgumentParser(
        prog="sfw-train", usage="sfw-train [--preset NAME] [options] (see --help)",
        description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    add_debug_flag(p)
    p.add_argument("--preset", choices=presets.preset_names(),
                   help="start from a named preset; explicit flags override it")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON and exit (no training)")
    for cls in CONCERNS.values():
        group = p.add_argument_group(cls.GROUP)
        for opt in config_lib.declared_options(cls):
            group.add_argument(_flag(opt), **_argument(opt))
    return p


def _config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """(config, names of explicitly given options) from a parsed namespace; raises ValueError."""
    given = {k: v for k, v in vars(args).items() if k not in _CONTROL_FLAGS}
    for name, pairs in given.items():
        if OPTIONS[name].is_mapping:
            keys = [k for k, _ in pairs]
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise ValueError(f"{_flag(OPTIONS[name])} given twice for {dup}")
            given[name] = dict(pairs)
    cfg = presets.from_preset(getattr(args, "preset", None), **given)
    return cfg, set(given)


def _check_conflicts(cfg: TrainConfig, explicit: set[str]) -> None:
    """Explicit flags the config ignores (ValueError naming them): an SFW-only option with
    another optimizer. The values themselves are checked by
    :func:`sfw_jax.training.config.validate`."""
    if cfg.optimizer not in SFW_OPTIMIZERS:
        bad = sorted(f for f in explicit if f in config_lib.SFW_ONLY_FIELDS)
        if bad:
            flags = ", ".join(_flag(OPTIONS[f]) for f in bad)
            raise ValueError(f"{flags}: only meaningful with --optimizer sfw (or adam_sfw), but "
                             f"the optimizer is {cfg.optimizer!r}; drop the flag(s) or use "
                             f"--optimizer sfw")


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
        cfg, explicit = _config_from_args(args)
        _check_conflicts(cfg, explicit)
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
            loop.train(cfg)  # its preconditions are checked before any work
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
