"""The whole pruning study of one architecture and dataset (section 5 of Lu et al., 2022).

``python -m experiments.study --preset NAME [--out results/NAME] [--methods M ...]
[--scopes kernels all] [--nm 2:4 1:4] [--set KEY=VALUE ...] [--no-progress]``
(``--list-presets`` lists the grids of ``experiments.study_presets``; ``--set epochs=6``
overrides a ``TrainConfig`` field of every method).

For each method of the preset (SFW K-sparse, SFW L2, SGD, optionally SFW + init):

1. train it dense (``sfw_jax.training.loop.train``) into ``<out>/runs/<method>/``; a run whose
   ``final.json`` exists is not redone, one with checkpoints but no ``final.json`` is resumed;
2. prune it one-shot at every sparsity (``experiments.prune_sweep``; scopes 'kernels' and the
   reference's 'all'; optionally the main scope also with BatchNorm re-calibration) and to
   every N:M pattern of the preset's ``nm_patterns`` (or ``--nm``)
   -> ``runs/<method>/sweep.json``;
3. for the preset's ``retrain_methods`` (SGD at least): prune + retrain under the mask
   (``experiments.retrain``), and for its ``nm_retrain_methods`` the same under N:M masks
   -> ``runs/<method>/retrain.json``;
4. weight-magnitude statistics (counts above 10, 1, ..., 1e-10; histogram; CDF).

Then it writes ``<out>/table.md`` (test accuracy per method per sparsity, one-shot and
retrained; dense accuracies; retraining cost; the issue's targets; the N:M table and targets;
wall times), ``weights_above.md``, ``accuracy_vs_sparsity.png``, ``nm_accuracy.png`` (with N:M
patterns), ``weights_<method>.png``,
``weights_cdf.png``, ``configs.json`` (the exact resolved configs) and ``summary.json``
(everything). Every step's result is on disk before the next starts and is reused on a re-run,
so an interrupted study resumes where it stopped and a finished one only re-draws its reports.

This module is the command line; the runner is :mod:`experiments.study_runner`, the reports
:mod:`experiments.study_report`, the grids :mod:`experiments.study_presets`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Mapping, Sequence

from experiments import lm_report
from experiments import prune_sweep as sweep_lib
from experiments.study_presets import (STUDY_PRESETS, StudyPreset, get_study_preset,
                                       study_preset_names)
from experiments.study_report import table_markdown
from experiments.study_runner import check_methods, run_study
from sfw_jax import LEAF_SCOPES
from sfw_jax._cli import (DISTRIBUTED_FIELDS, ArgumentParser, add_debug_flag,
                          one_process_message, refuse_distributed_flags, user_errors)
from sfw_jax.training import config as config_lib

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.study", description=__doc__.split("\n")[0])
    p.add_argument("--preset", help=f"study grid: one of {study_preset_names()}")
    p.add_argument("--list-presets", action="store_true", help="list the study presets and exit")
    p.add_argument("--out", default=None, help="study folder (default results/<preset>)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to run (default: the preset's; e.g. add sfw_init)")
    p.add_argument("--scopes", nargs="+", choices=LEAF_SCOPES, default=None,
                   help="pruning scopes of the sweep (default: the preset's)")
    p.add_argument("--nm", nargs="+", default=None, metavar="N:M",
                   help="one-shot N:M pruning patterns, e.g. 2:4 1:4 (default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field for every method (JSON value), e.g. "
                        "--set epochs=6; wins over the preset's per-method values too (--set "
                        "tau=7 changes every SFW method's tau); repeatable")
    p.add_argument("--no-progress", action="store_true")
    add_debug_flag(p)
    refuse_distributed_flags(p)
    return p


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``['epochs=6', 'tau=10.0']`` -> ``{'epochs': 6, 'tau': 10.0}`` (values parsed as JSON,
    else kept as strings); ValueError naming a malformed item or an unknown field."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in config_lib.field_names():
            raise ValueError(f"--set {item!r}: {key!r} is not a TrainConfig field; allowed: "
                             f"{config_lib.field_names()}")
        if key in DISTRIBUTED_FIELDS:
            raise ValueError(one_process_message("python -m experiments.study", f"--set {key}"))
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def apply_overrides(preset: StudyPreset, overrides: Mapping[str, Any]) -> StudyPreset:
    """``preset`` with ``overrides`` (``TrainConfig`` fields) applied to the base config and on
    top of every method's own overrides, so that they win for every method."""
    if not overrides:
        return preset

    def over(methods):
        return {m: {**dict(o), **overrides} for m, o in methods.items()}

    return dataclasses.replace(preset, base={**preset.base, **overrides},
                               methods=over(preset.methods),
                               optional_methods=over(preset.optional_methods))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        for name, pr in sorted(STUDY_PRESETS.items()):
            print(f"{name}: {pr.description}; methods {list(pr.methods)} "
                  f"(optional {list(pr.optional_methods)})")
        return 0
    if args.preset is None:
        parser.error(f"--preset is required: one of {study_preset_names()}")
    with user_errors(parser, args.debug):
        preset = get_study_preset(args.preset)
        preset = apply_overrides(preset, parse_overrides(args.overrides))
        methods = check_methods(preset, args.methods)
        for m in methods:
            config_lib.validate(preset.method_config(m, "x"))
        patterns = None if args.nm is None else sweep_lib.check_patterns(args.nm, "--nm")
        out = args.out or os.path.join("results", preset.name)
        summary = run_study(preset, out, methods=methods, scopes=args.scopes, nm=patterns,
                            progress=not args.no_progress)
    if preset.metric == "test_bits_per_byte":
        print(lm_report.table_markdown(summary, ""))
    else:
        print(table_markdown(summary, ""))
    print(f"wrote {out}/table.md, summary.json and figures "
          f"({summary['wall_time_this_invocation']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
