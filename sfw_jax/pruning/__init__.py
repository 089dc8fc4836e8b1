"""Pruning: masks, applying them, counting them; BatchNorm re-calibration and weight statistics.

* :mod:`sfw_jax.pruning.masks`: magnitude (global / layerwise, entries / filters), random and
  N:M masks, ``masks_for_sweep``, ``apply_mask``, ``keep_masked`` (re-exported here and at the
  top level of ``sfw_jax``);
* :mod:`sfw_jax.pruning.rows`: ``row_mask``, per-output-row pruning by any score (re-exported);
* :mod:`sfw_jax.pruning.wanda`: Wanda's activation norms, scores and masks (imports Flax);
* :mod:`sfw_jax.pruning.summary`: ``sparsity_summary``, per-leaf and total counts;
* :mod:`sfw_jax.pruning.batchnorm`: ``recalibrate_batch_norm``, running statistics re-estimated
  for pruned weights (imports Flax);
* :mod:`sfw_jax.pruning.weight_stats`: counts above thresholds, histograms and CDFs of |w|.
"""

from sfw_jax.pruning.masks import (RANKING_SCOPES, STRUCTURES, KeepMaskedState, apply_mask,
                                   check_sparsity, keep_masked, magnitude_mask, masks_for_sweep,
                                   nm_mask, random_mask)
from sfw_jax.pruning.rows import row_mask
from sfw_jax.pruning.summary import LeafSparsity, SparsitySummary, sparsity_summary

__all__ = [
    "RANKING_SCOPES", "STRUCTURES", "KeepMaskedState", "LeafSparsity", "SparsitySummary",
    "apply_mask", "check_sparsity", "keep_masked", "magnitude_mask", "masks_for_sweep",
    "nm_mask", "random_mask", "row_mask", "sparsity_summary",
]
