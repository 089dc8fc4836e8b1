"""The command-line options the device suite and the device job share: the plan, its budget,
the data archive."""

from __future__ import annotations

import argparse
import math
from typing import Mapping

from benchmarks.suite.plans import DEFAULT_DATA


def add_plan_arguments(p: argparse.ArgumentParser, plans: Mapping[str, object],
                       full_budget_s: float, data_help: str) -> None:
    """``--budget-s``, ``--rehearse``, ``--plan`` (one of ``plans``) and ``--data``."""
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"seconds of work (default: the plan's; {full_budget_s:g} for the full "
                        f"plan)")
    p.add_argument("--rehearse", action="store_true",
                   help="the same code path at tiny sizes (= --plan rehearse)")
    p.add_argument("--plan", choices=sorted(plans), default=None,
                   help="sizes: full (default), rehearse, ci")
    p.add_argument("--data", default=DEFAULT_DATA, help=data_help)


def chosen_plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The plan named by ``--plan`` / ``--rehearse`` (default 'full'), after checking them and
    ``--budget-s`` (``parser.error`` otherwise)."""
    if args.rehearse and args.plan not in (None, "rehearse"):
        parser.error(f"--rehearse conflicts with --plan {args.plan}")
    if args.budget_s is not None and not (math.isfinite(args.budget_s) and args.budget_s > 0):
        parser.error(f"--budget-s must be a number > 0, got {args.budget_s}")
    return args.plan or ("rehearse" if args.rehearse else "full")
