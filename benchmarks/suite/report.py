"""The suite's report files: JSON-able records, atomic ASCII writes, and the Markdown rendering
of ``device_report.md``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars / arrays, tuples and non-str keys made JSON-able."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return repr(x)


def write_ascii(path: str, text: str) -> None:
    """Write ``text`` (non-ASCII characters escaped, so no locale can fail the write) to a temp
    file beside ``path``, then ``os.replace`` it: readers see the old or the new file.

    The reports do not go through ``sfw_jax.training.run_folder``: a package that fails to
    import on the device must fail its section, not the report.
    """
    with tempfile.NamedTemporaryFile("w", encoding="ascii", prefix=".tmp-", delete=False,
                                     dir=os.path.dirname(os.path.abspath(path))) as f:
        f.write(text.encode("ascii", "backslashreplace").decode("ascii"))
    os.replace(f.name, path)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{100 * x:.2f}"


def _md_env(r: dict) -> list[str]:
    mem = r.get("memory_stats") or []
    limit = next((m.get("bytes_limit") for m in mem if isinstance(m, dict)
                  and m.get("bytes_limit")), None)
    return [f"- {r.get('device_count')} x {r.get('device_kind')} ({r.get('backend')}), "
            f"memory limit {'-' if limit is None else f'{limit / 2 ** 30:.1f} GiB'}, "
            f"{r.get('cpu_count')} CPU cores",
            f"- python {r.get('python')}, jax {r.get('jax')}, jaxlib {r.get('jaxlib')}, flax "
            f"{r.get('flax')}, optax {r.get('optax')}, orbax {r.get('orbax')}, numpy "
            f"{r.get('numpy')}"] + ([f"- nvidia-smi: `{r['nvidia_smi']}`"]
                                    if r.get("nvidia_smi") else [])


def _md_tests(r: dict) -> list[str]:
    out = [f"- {r.get('passed')} passed, {r.get('failed')} failed, {r.get('errors')} errors, "
           f"{r.get('skipped')} skipped (timeout {r.get('timeout_s')} s, timed out: "
           f"{r.get('timed_out')}); `{r.get('command')}`"]
    return out + [f"- failing: `{t}`" for t in r.get("failing", [])[:30]]


def _md_topk(r: dict) -> list[str]:
    out = []
    methods = r.get("methods", [])
    for dtype, rows in (r.get("ms") or {}).items():
        out += [f"{dtype}, median ms (K = 5 %):", ""]
        out += md_table(["n", "K", "ties", "auto path", *methods],
                      [(n, v.get("k"), v.get("ties"), v.get("auto_path"),
                        *[v.get(m) for m in methods]) for n, v in rows.items()])
        out.append("")
    if r.get("skipped"):
        out.append(f"- skipped (budget): {len(r['skipped'])}: {', '.join(r['skipped'][:10])}")
    return out


def _ratio_table(first: str, rows: Mapping[str, dict],
                 extra: Sequence[tuple[str, str]] = ()) -> list[str]:
    cols = [("SFW ms", "sfw_ms"), ("SGD ms", "sgd_ms"), ("SFW / SGD", "ratio"), *extra]
    return md_table([first, *[c for c, _ in cols]],
                  [(k, *[v.get(f) for _, f in cols]) for k, v in (rows or {}).items()])


def _md_update(r: dict) -> list[str]:
    out = [f"{r.get('tree')} tree: {r.get('params')} params in {r.get('tensors')} tensors; "
           f"{r.get('optimizers')}; medians of {r.get('reps')} calls.", ""]
    out += _ratio_table("method", r.get("methods"),
                        [("batched ms", "sfw_batched_ms"), ("batched / SGD", "batched_ratio"),
                         ("tree ms", "sfw_tree_ms"), ("tree / SGD", "tree_ratio")])
    if r.get("selection"):
        out += ["", "Selections (t, cut) of every leaf at once (`bench_topk --tree`):", ""]
        out += md_table(["selection", "ms", "ops"],
                      [(n, v.get("ms"), v.get("ops")) for n, v in r["selection"].items()])
    ops = r.get("op_counts") or {}
    detail = ops.get("reason") or ops.get("error", "").split("\n")[0]
    out += ["", f"- op counts: {ops.get('status')}" + (f" ({detail})" if detail else "")]
    if ops.get("status") == "ok":
        out.append(f"  `{json.dumps(ops.get('counts'), sort_keys=True)[:2000]}`")
    if r.get("skipped"):
        out.append(f"- skipped (budget): {', '.join(r['skipped'])}")
    return out


def _md_train_step(r: dict) -> list[str]:
    out = [f"{r.get('model')} {r.get('model_kwargs') or ''}, batch {r.get('batch')}, method "
           f"{r.get('method')}, medians of {r.get('reps')} alternated steps.", ""]
    out += _ratio_table("precision", r.get("precisions"),
                        [("paired", "paired_ratio"), ("SFW img/s", "sfw_images_per_s"),
                         ("SGD img/s", "sgd_images_per_s")])
    if r.get("steps_per_call"):
        out += ["", "The loop's SFW step, fp32, by optimizer steps per jitted call:", ""]
        out += md_table(["steps per call", "ms per call", "ms per step"],
                      [(k, v.get("call_ms"), v.get("step_ms"))
                       for k, v in r["steps_per_call"].items()])
    return out


def _md_study(r: dict) -> list[str]:
    d = r.get("data") or {}
    out = [f"- data: {d.get('source')} `{d.get('path')}` ({d.get('train')} train / "
           f"{d.get('test')} test, decoded in {d.get('decode_s')} s)",
           f"- epochs: {r.get('epochs')} (cap {r.get('max_epochs')}); seconds per epoch "
           f"(first epoch minus its compilation): {r.get('seconds_per_epoch')}; runs: "
           f"{r.get('run_mode')}"]
    for m, p in (r.get("probe") or {}).items():
        out.append(f"- {m}: first epoch {p.get('first_epoch_s')} s, of which compilation "
                   f"{p.get('compile_in_first_epoch_s')} s; setup {p.get('setup_s')} s")
    acc = r.get("accuracy") or {}
    if acc:
        levels = sorted({float(p) for a in acc.values() for p in a})
        out += ["", f"Test accuracy (%) after one-shot global magnitude pruning, scope "
                    f"`{r.get('scope')}`:", ""]
        out += md_table(["sparsity %", *acc],
                      [(f"{p:g}", *[_pct(a.get(f"{p:g}")) for a in acc.values()])
                       for p in levels])
    if r.get("dense_test_acc"):
        out += ["", f"- dense test accuracy: "
                    + ", ".join(f"{m} {_pct(a)} %" for m, a in r["dense_test_acc"].items())]
    return out


_MD_SECTIONS = {"env": _md_env, "tests": _md_tests, "topk": _md_topk, "update": _md_update,
                "train_step": _md_train_step, "study": _md_study}


def render_markdown(report: dict) -> str:
    """``device_report.md``: the status of every section and its tables."""
    secs = report.get("sections", {})
    out = [f"# Device suite report ({report.get('plan')} plan)", "",
           f"`{report.get('command')}` at {report.get('started')}, git {report.get('git')}, "
           f"budget {report.get('budget_s')} s, wall {report.get('wall_s')} s, finished: "
           f"{report.get('finished')}.", ""]
    out += md_table(["section", "status", "seconds", "compile s", "error"],
                  [(n, r.get("status"), r.get("seconds"), r.get("compile_s"),
                    (r.get("error") or "").split("\n")[0][:200]) for n, r in secs.items()])
    for name, r in secs.items():
        out += ["", f"## {name}", ""]
        try:
            out += _MD_SECTIONS[name](r)
        except Exception as e:  # the Markdown must never stop the suite; the JSON has it all
            out.append(f"(cannot render: {type(e).__name__}: {e})")
    return "\n".join(out) + "\n"
