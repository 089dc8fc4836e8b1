"""Pruning: masks, applying them, counting them; BatchNorm re-calibration and weight statistics.

The API is what this package exports (the modules are private):

* masks: magnitude (global / layerwise, entries / filters), random and N:M masks,
  ``masks_for_sweep``, ``apply_mask``, ``keep_masked`` (also at the top level of ``sfw_jax``);
* ``row_mask``: per-output-row pruning by any score; Wanda's ``input_norms``,
  ``wanda_scores``, ``wanda_mask``, ``wanda_nm_mask`` (import Flax on first use);
* ``sparsity_summary``: per-leaf and total counts;
* ``recalibrate_batch_norm``: running statistics re-estimated for pruned weights (imports Flax
  on first use);
* weight statistics: ``count_above_thresholds`` (of ``DEFAULT_THRESHOLDS``),
  ``magnitude_histogram``, ``magnitude_cdf`` of |w|.
"""

import importlib
from typing import Any

from sfw_jax.pruning._masks import (RANKING_SCOPES, STRUCTURES, KeepMaskedState, apply_mask,
                                    check_sparsity, keep_masked, magnitude_mask, masks_for_sweep,
                                    nm_mask, random_mask)
from sfw_jax.pruning._rows import row_mask
from sfw_jax.pruning._summary import LeafSparsity, SparsitySummary, sparsity_summary
from sfw_jax.pruning._weight_stats import (DEFAULT_THRESHOLDS, count_above_thresholds,
                                           magnitude_cdf, magnitude_histogram)

__all__ = [
    "RANKING_SCOPES", "STRUCTURES", "KeepMaskedState", "LeafSparsity", "SparsitySummary",
    "apply_mask", "check_sparsity", "keep_masked", "magnitude_mask", "masks_for_sweep",
    "nm_mask", "random_mask", "row_mask", "sparsity_summary", "recalibrate_batch_norm",
    "DEFAULT_THRESHOLDS", "count_above_thresholds", "magnitude_histogram", "magnitude_cdf",
    "input_norms", "wanda_scores", "wanda_mask", "wanda_nm_mask",
]

# These import Flax, so their modules load on first use (read each time: a test may patch them).
_FLAX_NAMES = {"recalibrate_batch_norm": "_batchnorm", "input_norms": "_wanda",
               "wanda_scores": "_wanda", "wanda_mask": "_wanda", "wanda_nm_mask": "_wanda"}


def __getattr__(name: str) -> Any:
    if name in _FLAX_NAMES:
        module = importlib.import_module(f"{__name__}.{_FLAX_NAMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FLAX_NAMES))
