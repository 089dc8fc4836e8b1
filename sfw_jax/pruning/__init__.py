"""Pruning: masks, applying them, counting them; BatchNorm re-calibration and weight statistics.

The API is what this package exports (the modules are private):

* masks: magnitude (global / layerwise, entries / filters), random and N:M masks,
  ``masks_for_sweep``, ``apply_mask``, ``keep_masked`` (also at the top level of ``sfw_jax``);
* ``row_mask``: per-output-row pruning by any score; Wanda's activation norms, scores and
  masks (:mod:`sfw_jax.pruning.wanda`, imports Flax);
* ``sparsity_summary``: per-leaf and total counts;
* ``recalibrate_batch_norm``: running statistics re-estimated for pruned weights (imports Flax
  on first use);
* weight statistics: ``count_above_thresholds`` (of ``DEFAULT_THRESHOLDS``),
  ``magnitude_histogram``, ``magnitude_cdf`` of |w|.
"""

from typing import Any

from sfw_jax.pruning._masks import (RANKING_SCOPES, STRUCTURES, KeepMaskedState, apply_mask,
                                    check_sparsity, keep_masked, magnitude_mask, masks_for_sweep,
                                    nm_mask, random_mask)
from sfw_jax.pruning.rows import row_mask
from sfw_jax.pruning._summary import LeafSparsity, SparsitySummary, sparsity_summary
from sfw_jax.pruning._weight_stats import (DEFAULT_THRESHOLDS, count_above_thresholds,
                                           magnitude_cdf, magnitude_histogram)

__all__ = [
    "RANKING_SCOPES", "STRUCTURES", "KeepMaskedState", "LeafSparsity", "SparsitySummary",
    "apply_mask", "check_sparsity", "keep_masked", "magnitude_mask", "masks_for_sweep",
    "nm_mask", "random_mask", "row_mask", "sparsity_summary", "recalibrate_batch_norm",
    "DEFAULT_THRESHOLDS", "count_above_thresholds", "magnitude_histogram", "magnitude_cdf",
]


def __getattr__(name: str) -> Any:
    # recalibrate_batch_norm imports Flax: only when it is first used
    if name == "recalibrate_batch_norm":
        from sfw_jax.pruning._batchnorm import recalibrate_batch_norm
        return recalibrate_batch_norm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"recalibrate_batch_norm"})
