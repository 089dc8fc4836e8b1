"""One-shot pruning of a trained run at many sparsities, no retraining.

``python -m experiments.prune_sweep RUN_DIR [--scope kernels|all|both] [--bn-recal]
[--sparsities 0 10 ... 99] [--nm 2:4 1:4] [--criteria magnitude row wanda]
[--calib-batches 8] [--out FILE.csv] [--json FILE.json]``

For each scope and sparsity level the run's final params are pruned with *global* magnitude
ranking (:func:`sfw_jax.masks_for_sweep`: the magnitudes are sorted once per scope, every
level's mask comes from that one sort; exact counts ``round(s * N)``), and the pruned network is
evaluated (jit-compiled, batched) on the validation and test splits (``val_acc`` / ``val_loss``
are null for a run without a validation split). Scopes (:data:`sfw_jax.LEAF_SCOPES`):

* ``kernels``: conv and dense kernels only (biases and BatchNorm parameters are kept);
* ``all``: every parameter tensor, as in the reference implementation (Lu et al., 2022).

Each row also records the achieved sparsity (pruned / entries in the scope: equals
``round(s * N) / N``) and the fraction of exact zeros in the scope after masking.

``--nm 2:4 1:4`` adds one-shot N:M magnitude pruning (:func:`sfw_jax.nm_mask`): in every
group of M consecutive input features (axis -2) of each kernel whose input size is divisible by
M, the N entries of largest |w| are kept. These rows have ``pattern`` 'N:M' (the unstructured
rows: 'unstructured'), scope 'kernels', ``target_sparsity`` 1 - N/M (the sparsity of the grouped
kernels) and ``sparsity`` the achieved one over all kernels (lower when a kernel, such as a first
conv with 3 input channels, has no groups).

``--criteria magnitude row wanda`` chooses how entries are ranked (option names in
:data:`CRITERIA`; default ``magnitude``):

* ``magnitude``: global magnitude ranking (above) and N:M magnitude;
* ``row``: per-output-row magnitude (:func:`sfw_jax.row_mask`: every output unit of every kernel
  keeps the same fraction of its inputs; unstructured levels only, scope 'kernels');
* ``wanda``: Wanda (Sun et al., 2023; :func:`sfw_jax.pruning.wanda_mask`): scores
  ``|W_ij| ||X_j||_2`` with the activation norms of every Dense layer's input over
  ``--calib-batches`` training batches, pruned per output row (unstructured levels) or N:M
  along the inputs (the ``--nm`` patterns); Dense kernels only, scope 'kernels'.

Each row names its ``criterion``. Language-model runs (byte windows) add
``val_bits_per_byte`` / ``test_bits_per_byte`` (mean next-byte cross-entropy / ln 2) to every
row; ``*_acc`` is then the next-byte accuracy.

``--bn-recal`` adds, per level, a variant whose BatchNorm running statistics are re-estimated on
``--recal-batches`` training batches for the pruned weights (params untouched). This is an
extra beyond the paper, labelled ``bn_recal=True`` in the output; the paper's numbers are the
``bn_recal=False`` rows.

Outputs: a CSV (one row per scope x bn_recal x sparsity) and a JSON with the same rows plus the
run's dense accuracy. The JSON is rewritten after every level and reused on a re-run (levels
already there are not re-evaluated), so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from experiments._bn_recal import calibration_inputs, recal_images, recalibrated_batch_stats
from experiments._loaded_run import LoadedRun, load_trained
from sfw_jax import LEAF_SCOPES, leaf_scope
from sfw_jax._cli import (ArgumentParser, add_debug_flag, refuse_distributed_flags,
                          user_errors)
from sfw_jax._progress import progress_bar
from sfw_jax.fw import format_nm, parse_nm
from sfw_jax.pruning import apply_mask, sparsity_summary
from sfw_jax.training import run_folder

SPARSITY_PERCENTS = (*range(0, 91, 10), *range(91, 100))
SPARSITIES = tuple(p / 100 for p in SPARSITY_PERCENTS)
"""The reference's levels: 0, 10, ..., 90, 91, ..., 99 % (kept 1.0, 0.9, ..., 0.1, 0.09, ... 0.01)."""

CSV_FIELDS = ("scope", "criterion", "pattern", "bn_recal", "target_sparsity", "sparsity",
              "n_pruned", "n_scope", "zero_fraction", "val_acc", "val_loss", "test_acc",
              "test_loss")
LM_FIELDS = ("val_bits_per_byte", "test_bits_per_byte")
"""The columns a language-model run's rows add to ``CSV_FIELDS``."""

UNSTRUCTURED = "unstructured"
"""``pattern`` of the rows of unstructured pruning (N:M rows hold 'N:M')."""

MAGNITUDE, ROW, WANDA = "magnitude", "row", "wanda"
CRITERIA = (MAGNITUDE, ROW, WANDA)
"""Ranking criteria of the sweep (module docstring); rows without a ``criterion`` (written
before it existed) are ``magnitude``."""


def check_sparsities(values: Sequence[Any], argname: str = "sparsities") -> list[float]:
    """Fractions in [0, 1] (sorted, unique); ValueError naming ``argname`` otherwise."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{argname} must be a sequence of fractions in [0, 1], got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{argname} must hold fractions in [0, 1], got {v!r} in {values!r}")
        out.append(float(v))
    if not out:
        raise ValueError(f"{argname} must not be empty")
    return sorted(set(out))


def percents_to_fractions(values: Sequence[float], argname: str = "--sparsities") -> list[float]:
    """Command-line percents (0..100, e.g. ``90 95 99.5``) as fractions."""
    for v in values:
        if not 0.0 <= v <= 100.0:
            raise ValueError(f"{argname} takes percents in [0, 100], got {v!r}")
    return check_sparsities([round(v / 100, 6) for v in values], argname)


def _check_names(names: Sequence[str], allowed: Sequence[str], argname: str,
                 allow_empty: bool = False) -> list[str]:
    """Names from ``allowed`` (unique, order kept; a bare string is one name); ValueError
    naming ``argname`` otherwise (also when empty, unless ``allow_empty``)."""
    if isinstance(names, str):
        names = [names]
    bad = [s for s in names if s not in allowed]
    if bad or not (names or allow_empty):
        what = "a list" if allow_empty else "a non-empty list"
        raise ValueError(f"{argname} must be {what} from {list(allowed)}, "
                         f"got {list(names)!r}")
    return list(dict.fromkeys(names))


def check_scopes(scopes: Sequence[str], argname: str = "scopes", *,
                 allow_empty: bool = False) -> list[str]:
    """Scope names from :data:`sfw_jax.LEAF_SCOPES` (unique, order kept; a bare string is one
    scope); ValueError otherwise (also when empty, unless ``allow_empty``)."""
    return _check_names(scopes, LEAF_SCOPES, argname, allow_empty)


def check_patterns(patterns: Sequence[Any], argname: str = "nm") -> list[str]:
    """N:M patterns (strings 'N:M' or ``(n, m)`` pairs) as canonical unique 'N:M' strings,
    order kept; ValueError naming ``argname`` and the value otherwise."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        text = format_nm(*p) if isinstance(p, (tuple, list)) and len(p) == 2 else p
        out.append(format_nm(*parse_nm(text, argname)))
    return list(dict.fromkeys(out))


def row_pattern(row: dict) -> str:
    """A row's ``pattern`` (rows written before N:M rows existed are unstructured)."""
    return row.get("pattern", UNSTRUCTURED)


def row_criterion(row: dict) -> str:
    """A row's ranking ``criterion`` (rows written before it existed are ``magnitude``)."""
    return row.get("criterion", MAGNITUDE)


def row_key(row: dict) -> tuple[str, str, str, bool, float]:
    """Identity of a sweep row: (scope, criterion, pattern, bn_recal, target sparsity)."""
    return (row["scope"], row_criterion(row), row_pattern(row), bool(row["bn_recal"]),
            round(float(row["target_sparsity"]), 6))


def check_criteria(criteria: Sequence[str], argname: str = "criteria") -> list[str]:
    """Criterion names from :data:`CRITERIA` (unique, order kept; a bare string is one);
    ValueError naming ``argname`` otherwise (also when empty)."""
    return _check_names(criteria, CRITERIA, argname)


def level_name(record: dict) -> str:
    """The level of a sweep row or retraining record: its target sparsity in percent ('50'),
    or its N:M pattern ('2:4')."""
    pattern = row_pattern(record)
    if pattern != UNSTRUCTURED:
        return pattern
    return f"{100 * record.get('target_sparsity', record.get('sparsity')):g}"


def split_metrics(split: str, ev: dict) -> dict:
    """An evaluation (:class:`sfw_jax.training.steps.Evaluator`) as row fields
    ``<split>_acc``, ``<split>_loss`` (and ``<split>_bits_per_byte`` for a language model)."""
    out = {f"{split}_acc": ev["accuracy"], f"{split}_loss": ev["loss"]}
    if "bits_per_byte" in ev:
        out[f"{split}_bits_per_byte"] = ev["bits_per_byte"]
    return out


def nm_target(pattern: str) -> float:
    """The sparsity of the grouped kernels under an 'N:M' pattern: 1 - N/M."""
    n, m = parse_nm(pattern)
    return round(1.0 - n / m, 6)


def _run_stamp(run: LoadedRun) -> dict:
    """What identifies the trained weights (a cache made for other weights is discarded)."""
    return {"test_acc": run.final.get("test_acc"), "wall_time": run.final.get("wall_time")}


def sweep(run: LoadedRun, sparsities: Sequence[float] = SPARSITIES, *,
          scopes: Sequence[str] = ("kernels", "all"), bn_recal: bool = False,
          recal_batches: int = 20, recal_batch_size: int | None = None,
          recal_scopes: Sequence[str] | None = None, nm: Sequence[Any] = (),
          criteria: Sequence[str] = (MAGNITUDE,), calib_batches: int = 8,
          calib_batch_size: int | None = None, cache_path: str | None = None,
          progress: bool = True) -> list[dict]:
    """Rows (dicts with ``CSV_FIELDS``) for every criterion x scope x sparsity (x bn_recal
    variant), then one per criterion x N:M pattern (x bn_recal variant, when 'kernels' is
    re-calibrated).

    Args:
      run: a loaded finished run (:func:`experiments._loaded_run.load_trained`).
      sparsities: fractions in [0, 1].
      scopes: subset of :data:`sfw_jax.LEAF_SCOPES` (of the ``magnitude`` rows; the other
        criteria prune the kernels, scope 'kernels').
      bn_recal: also evaluate with BatchNorm statistics re-estimated for the pruned weights
        (skipped, with a note on stderr, when the model has no BatchNorm).
      recal_batches, recal_batch_size: training batches used for that (default batch size: the
        run's ``batch_size``).
      recal_scopes: the scopes (a subset of ``scopes``, possibly empty) that get the
        re-calibrated variant (None: all of ``scopes``).
      nm: N:M patterns ('2:4' or ``(2, 4)``) of one-shot N:M pruning of the kernels
        (:func:`sfw_jax.nm_mask` along axis -2; see the module docstring).
      criteria: ranking criteria from :data:`CRITERIA` (module docstring; ``row`` makes no N:M
        rows: N:M magnitude already ranks within each output's groups).
      calib_batches, calib_batch_size: training batches of Wanda's activation norms (default
        batch size: the run's ``batch_size``).
      cache_path: JSON file to resume from and to rewrite after each level (rows it holds for
        other levels, scopes, criteria or variants are kept in it).
      progress: a progress bar (on a terminal).
    """
    levels = check_sparsities(sparsities)
    scopes = check_scopes(scopes)
    patterns = check_patterns(nm)
    criteria = check_criteria(criteria)
    nm_recal = recal_scopes is None or "kernels" in recal_scopes
    recal_scopes = (scopes if recal_scopes is None
                    else check_scopes(recal_scopes, "recal_scopes", allow_empty=True))
    if not set(recal_scopes) <= set(scopes):
        raise ValueError(f"recal_scopes must be a subset of scopes {scopes!r}, got "
                         f"{recal_scopes!r}")
    for name, v in (("recal_batches", recal_batches), ("calib_batches", calib_batches)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    has_bn = run.has_batch_norm
    if bn_recal and not has_bn:
        print(f"note: {run.out_dir}: the model has no BatchNorm; --bn-recal skipped",
              file=sys.stderr)
    variants = [False, True] if (bn_recal and has_bn) else [False]

    done: dict[tuple, dict] = {}
    if cache_path and os.path.isfile(cache_path):
        cached = run_folder.read_json(cache_path)
        if cached.get("run") == _run_stamp(run):
            done = {row_key(r): r for r in cached.get("rows", [])}
    # keys (scope, criterion, pattern, bn_recal, target sparsity), in output order
    wanted = []
    for c in criteria:
        for sc in (scopes if c == MAGNITUDE else ["kernels"]):
            wanted += [(sc, c, UNSTRUCTURED, v, round(s, 6)) for v in variants for s in levels
                       if not v or sc in recal_scopes]
    wanted += [("kernels", c, p, v, nm_target(p)) for c in criteria if c != ROW
               for p in patterns for v in variants if not v or nm_recal]
    todo = [k for k in wanted if k not in done]

    batches = None
    if any(k[3] for k in todo):
        batches = recal_images(run.train_split, recal_batches,
                               recal_batch_size or run.config.batch_size, run.config.seed)
    val = run.evaluator.put(run.dataset.val) if len(run.dataset.val) else None
    test = run.evaluator.put(run.dataset.test)
    no_split = {"loss": None, "accuracy": None}

    def save() -> None:
        if cache_path:
            asked = set(wanted)
            rows = ([done[k] for k in wanted if k in done]
                    + [r for k, r in done.items() if k not in asked])
            run_folder.write_json(cache_path, {"run_dir": run.out_dir, "run": _run_stamp(run),
                                               "dense_test_acc": run.final.get("test_acc"),
                                               "rows": rows})

    bar = progress_bar(len(todo), f"sweep {os.path.basename(run.out_dir.rstrip('/'))}",
                       enabled=progress, leave=False)

    def evaluate(scope: str, criterion: str, pattern: str, s: float, mask: Any) -> None:
        """The rows of ``todo`` for one mask (each wanted variant)."""
        pruned = apply_mask(run.params, mask)
        counts = sparsity_summary(pruned, mask, include=leaf_scope(scope))
        for v in variants:
            key = (scope, criterion, pattern, v, round(s, 6))
            if key not in todo:
                continue
            t0 = time.time()
            bs = recalibrated_batch_stats(run, pruned, batches) if v else run.batch_stats
            ev_val = run.evaluator(pruned, bs, val) if val is not None else no_split
            ev_test = run.evaluator(pruned, bs, test)
            done[key] = {
                "scope": scope, "criterion": criterion, "pattern": pattern, "bn_recal": v,
                "target_sparsity": s, "sparsity": counts.sparsity, "n_pruned": counts.pruned,
                "n_scope": counts.size, "zero_fraction": counts.zeros / counts.size,
                **split_metrics("val", ev_val), **split_metrics("test", ev_test),
                "eval_time": time.time() - t0}
            bar.update(1)
        save()

    masks = _Masks(run, calib_batches, calib_batch_size or run.config.batch_size,
                   needs_norms=any(k[1] == WANDA for k in todo))
    try:
        for c in criteria:
            for scope in dict.fromkeys(k[0] for k in wanted if k[1] == c):
                need = sorted({k[4] for k in todo if k[:3] == (scope, c, UNSTRUCTURED)})
                if need:
                    for s, mask in zip(need, masks.unstructured(c, scope, need)):
                        evaluate(scope, c, UNSTRUCTURED, s, mask)
            for p in patterns:
                if any(k[1:3] == (c, p) for k in todo):
                    evaluate("kernels", c, p, nm_target(p), masks.nm(c, p))
    finally:
        bar.close()
        save()
    return [done[k] for k in wanted]


class _Masks:
    """The masks of the sweep's criteria for one run (Wanda's activation norms computed once,
    on first use)."""

    def __init__(self, run: LoadedRun, calib_batches: int, calib_batch_size: int,
                 needs_norms: bool):
        self.run = run
        self.norms = None
        if needs_norms:
            from sfw_jax.pruning import input_norms
            inputs = calibration_inputs(run, calib_batches, calib_batch_size, run.config.seed)
            variables = {"params": run.params, **({"batch_stats": run.batch_stats}
                                                  if run.batch_stats else {})}
            self.norms = input_norms(run.model, variables, inputs)

    def unstructured(self, criterion: str, scope: str, levels: Sequence[float]) -> list:
        """Masks at ``levels`` (global magnitude over ``scope``, or per output row)."""
        from sfw_jax.pruning import masks_for_sweep, row_mask
        from sfw_jax.pruning import wanda_mask
        params = self.run.params
        if criterion == MAGNITUDE:
            return masks_for_sweep(params, levels, scope="global", include=leaf_scope(scope))
        if criterion == ROW:
            return [row_mask(params, s, include=leaf_scope(scope)) for s in levels]
        return [wanda_mask(params, self.norms, s) for s in levels]

    def nm(self, criterion: str, pattern: str) -> Any:
        """The N:M mask of ``pattern`` (magnitude or Wanda scores)."""
        from sfw_jax.pruning import nm_mask
        from sfw_jax.pruning import wanda_nm_mask
        if criterion == WANDA:
            return wanda_nm_mask(self.run.params, self.norms, *parse_nm(pattern))
        return nm_mask(self.run.params, *parse_nm(pattern))


def write_csv(rows: Sequence[dict], path: str) -> None:
    """Rows as CSV with the columns ``CSV_FIELDS`` (and ``LM_FIELDS`` where the rows have them;
    a row written before ``criterion`` existed gets 'magnitude'; atomic write)."""
    buf = io.StringIO()
    extra = [f for f in LM_FIELDS if any(f in r for r in rows)]
    w = csv.DictWriter(buf, fieldnames=[*CSV_FIELDS, *extra], extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({"criterion": row_criterion(r), **r})
    run_folder.write_text(path, buf.getvalue())


def _pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals, 'n/a' where there is none."""
    return "n/a" if x is None or x != x else f"{100 * x:.2f}%"


def _bpb(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.4f}"


def format_rows(rows: Sequence[dict]) -> str:
    """Plain-text table of the rows (accuracies in %; bits per byte for a language model;
    'n/a' for a split the run does not have)."""
    lm = any("test_bits_per_byte" in r for r in rows)
    metric = f"{'val bpb':>8s} {'test bpb':>8s}" if lm else f"{'val acc':>8s} {'test acc':>8s}"
    lines = [f"{'scope':8s} {'criterion':9s} {'pattern':12s} {'bn_recal':8s} {'target':>7s} "
             f"{'actual':>8s} {metric}"]
    for r in rows:
        vals = ((_bpb(r.get("val_bits_per_byte")), _bpb(r.get("test_bits_per_byte"))) if lm
                else (_pct(r["val_acc"]), _pct(r["test_acc"])))
        lines.append(f"{r['scope']:8s} {row_criterion(r):9s} {row_pattern(r):12s} "
                     f"{str(r['bn_recal']):8s} {100 * r['target_sparsity']:6.1f}% "
                     f"{100 * r['sparsity']:7.3f}% {vals[0]:>8s} {vals[1]:>8s}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.prune_sweep",
                       description=__doc__.split("\n")[0])
    add_run_arguments(p)
    p.add_argument("--scope", choices=(*LEAF_SCOPES, "both"), default="both",
                   help="which tensors are pruned: conv/dense kernels, every tensor (the "
                        "reference), or both")
    p.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITY_PERCENTS),
                   metavar="PERCENT", help="sparsity levels in percent")
    p.add_argument("--bn-recal", action="store_true",
                   help="also evaluate with BatchNorm statistics re-estimated after pruning "
                        "(an extra beyond the paper)")
    p.add_argument("--recal-batches", type=int, default=20,
                   help="training batches for --bn-recal")
    p.add_argument("--recal-batch-size", type=int, default=None,
                   help="batch size for --bn-recal (default: the run's batch_size)")
    p.add_argument("--criteria", nargs="+", choices=CRITERIA, default=[MAGNITUDE],
                   help="ranking criteria: global magnitude, per-output-row magnitude, Wanda")
    p.add_argument("--calib-batches", type=int, default=8,
                   help="training batches of Wanda's activation norms")
    p.add_argument("--out", default=None,
                   help=f"CSV file (default RUN_DIR/{run_folder.SWEEP_CSV})")
    p.add_argument("--json", default=None,
                   help="JSON file, also the resume cache (default: --out with .json)")
    return p


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of the commands that work on one finished run: ``RUN_DIR``, ``--nm``,
    ``--no-progress``, ``--debug``; these commands run on one process (the distributed flags of
    ``sfw-train`` are a one-line error)."""
    p.add_argument("run_dir", help="a finished training run (holds final.json, checkpoints/)")
    p.add_argument("--nm", nargs="+", default=[], metavar="N:M",
                   help="N:M patterns (e.g. 2:4 1:4) of the kernels' input-feature groups")
    p.add_argument("--no-progress", action="store_true")
    add_debug_flag(p)
    refuse_distributed_flags(p)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser, args.debug):
        levels = percents_to_fractions(args.sparsities)
        patterns = check_patterns(args.nm, "--nm")
        if args.recal_batches < 1:
            raise ValueError(f"--recal-batches must be >= 1, got {args.recal_batches}")
        if args.recal_batch_size is not None and args.recal_batch_size < 1:
            raise ValueError(f"--recal-batch-size must be >= 1, got {args.recal_batch_size}")
        if args.calib_batches < 1:
            raise ValueError(f"--calib-batches must be >= 1, got {args.calib_batches}")
        run_folder.check_finished(args.run_dir)
        scopes = list(LEAF_SCOPES) if args.scope == "both" else [args.scope]
        out = args.out or run_folder.path(args.run_dir, run_folder.SWEEP_CSV)
        json_path = args.json or os.path.splitext(out)[0] + ".json"
        t0 = time.time()
        run = load_trained(args.run_dir)
        rows = sweep(run, levels, scopes=scopes, bn_recal=args.bn_recal,
                     recal_batches=args.recal_batches, recal_batch_size=args.recal_batch_size,
                     nm=patterns, criteria=args.criteria, calib_batches=args.calib_batches,
                     cache_path=json_path, progress=not args.no_progress)
    write_csv(rows, out)
    print(format_rows(rows))
    dense = (f"dense test bits per byte {run.final['test_bits_per_byte']:.4f}"
             if "test_bits_per_byte" in run.final
             else f"dense test acc {100 * run.final['test_acc']:.2f}%")
    print(f"{dense}; wrote {out} and {json_path} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
