"""Per-leaf and global counts of a pruning mask, printable as an aligned table."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sfw_jax._selectors import Selector, every_leaf, select_leaves
from sfw_jax._tree import PyTree, check_same_structure, path_str


class _Ratios:
    """``pruned = size - kept`` and ``sparsity = pruned / size`` from the counts ``size`` and
    ``kept`` of a leaf or of a whole summary."""

    size: int
    kept: int

    @property
    def pruned(self) -> int:
        return self.size - self.kept

    @property
    def sparsity(self) -> float:
        """``pruned / size`` (0.0 when nothing is counted)."""
        return self.pruned / self.size if self.size else 0.0


def _summed(field: str) -> property:
    """A read-only property: the sum of the rows' ``field``."""
    return property(lambda self: sum(getattr(r, field) for r in self.leaves),
                    doc=f"Sum of the rows' ``{field}``.")


@dataclasses.dataclass(frozen=True)
class LeafSparsity(_Ratios):
    """Counts for one leaf: ``size = kept + pruned``; ``zeros`` = exact zeros in the params,
    ``pruned_zeros`` = the pruned entries among them (``pruned`` when the params respect the
    mask)."""

    path: str
    shape: tuple[int, ...]
    size: int
    kept: int
    zeros: int
    pruned_zeros: int


@dataclasses.dataclass(frozen=True)
class SparsitySummary(_Ratios):
    """Rows for the summarised leaves and totals over them (``size``, ``kept``, ``zeros``,
    ``pruned_zeros`` summed over the rows; ``pruned`` and the global ``sparsity`` from those);
    ``str()`` gives a text table."""

    leaves: tuple[LeafSparsity, ...]

    size = _summed("size")
    kept = _summed("kept")
    zeros = _summed("zeros")
    pruned_zeros = _summed("pruned_zeros")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{'leaves': [row dicts], 'total': {...}}``."""
        rows = [dict(path=r.path, shape=list(r.shape), size=r.size, kept=r.kept,
                     pruned=r.pruned, zeros=r.zeros, pruned_zeros=r.pruned_zeros,
                     sparsity=r.sparsity) for r in self.leaves]
        total = dict(size=self.size, kept=self.kept, pruned=self.pruned, zeros=self.zeros,
                     pruned_zeros=self.pruned_zeros, sparsity=self.sparsity)
        return {"leaves": rows, "total": total}

    def table(self) -> str:
        """Aligned text table, one row per leaf and a total row."""
        head = ("path", "shape", "size", "kept", "pruned", "sparsity", "zeros")
        body = [(r.path, str(r.shape), str(r.size), str(r.kept), str(r.pruned),
                 f"{r.sparsity:.4f}", str(r.zeros)) for r in self.leaves]
        total = ("total", "", str(self.size), str(self.kept), str(self.pruned),
                 f"{self.sparsity:.4f}", str(self.zeros))
        rows = [head] + body + [total]
        widths = [max(len(row[c]) for row in rows) for c in range(len(head))]

        def fmt(row):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [cell.rjust(w) for cell, w in zip(row[2:], widths[2:])]
            return "  ".join(cells).rstrip()

        rule = "-" * len(fmt(head))
        return "\n".join([fmt(head), rule] + [fmt(r) for r in body] + [rule, fmt(total)])

    def __str__(self) -> str:
        return self.table()


def sparsity_summary(params: PyTree, mask: PyTree | None = None, *,
                     include: Selector = None) -> SparsitySummary:
    """Counts of kept / pruned entries per leaf and in total.

    Args:
      params: pytree of arrays.
      mask: bool pytree like ``params`` (True = kept); None counts nonzero entries as kept.
      include: which leaves get a row (and enter the totals); default: every leaf.
    """
    if mask is None:
        mask = jax.tree.map(lambda p: jnp.asarray(p) != 0, params)
    check_same_structure(mask, params, "mask")
    chosen = select_leaves(params, include, every_leaf, "include")

    def count(p, m):
        m, zero = jnp.asarray(m, bool), jnp.asarray(p) == 0
        return jnp.sum(m), jnp.sum(zero), jnp.sum(zero & ~m)

    counts = jax.device_get(jax.tree.map(count, params, mask))
    rows = []
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    treedef = jax.tree.structure(params)
    for (path, leaf), (kept, zeros, pruned_zeros), c in zip(
            flat, treedef.flatten_up_to(counts), treedef.flatten_up_to(chosen)):
        if c:
            shape = tuple(int(d) for d in np.shape(leaf))
            rows.append(LeafSparsity(path_str(path), shape, int(np.prod(shape)), int(kept),
                                     int(zeros), int(pruned_zeros)))
    return SparsitySummary(tuple(rows))
