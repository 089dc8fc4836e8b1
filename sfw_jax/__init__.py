"""sfw-jax: pruning-aware training with Stochastic Frank-Wolfe in JAX/Optax.

The pipeline, one subpackage per stage:

* :mod:`sfw_jax.fw`: the Frank-Wolfe core (constraint sets and their registry, oracles, top-k,
  the ``sfw`` transformation and its building blocks ``frank_wolfe`` and ``sfw_momentum``,
  constraint schedules, the native CPU kernel);
* :mod:`sfw_jax.pruning`: masks, applying them, sparsity counts, BatchNorm re-calibration,
  weight statistics;
* :mod:`sfw_jax.training`: config and presets, models, datasets, optimizers, the train loop and
  its run folder, the ``sfw-train`` command line.

This module exports the library API of the first two (the rest of the Frank-Wolfe toolbox is
in :mod:`sfw_jax.fw`); training is imported from its modules
(``from sfw_jax.training.config import TrainConfig``). Modules and names starting with ``_`` are
private.
"""

from sfw_jax._selectors import LEAF_SCOPES, Selector, every_leaf, is_kernel, leaf_scope
from sfw_jax.fw._blocks import FrankWolfeState, SFWMomentumState, frank_wolfe, sfw_momentum
from sfw_jax.fw._constraint_schedule import delayed_lmo, scheduled_sfw, tightening_phases
from sfw_jax.fw._constraints import (INIT_NORM_RULES, MODES, check_constraints_match,
                                     contains_all, expected_init_norms, make_constraints,
                                     make_feasible)
from sfw_jax.fw._lmo import k_sparse_lmo, k_support_lmo, lp_ball_lmo
from sfw_jax.fw._nm import nm_sparse_lmo
from sfw_jax.fw._registry import KINDS, BuildOptions, register_constraint
from sfw_jax.fw._sets import (Constraint, KSparsePolytope, KSupportNormBall, LpBall,
                              NMSparsePolytope, Unconstrained, is_constraint, sparsity_k)
from sfw_jax.fw._sfw import RESCALES, SFWState, sfw
from sfw_jax.pruning import (apply_mask, keep_masked, magnitude_mask, masks_for_sweep, nm_mask,
                             random_mask, row_mask, sparsity_summary)

# The one definition of the version: the package metadata reads it (pyproject.toml, dynamic).
__version__ = "0.1.0"

__all__ = [
    # Frank-Wolfe: sets, their kinds, construction, the transformation
    "Constraint", "KSparsePolytope", "KSupportNormBall", "LpBall", "NMSparsePolytope",
    "Unconstrained", "is_constraint", "sparsity_k", "KINDS", "BuildOptions",
    "register_constraint", "MODES", "INIT_NORM_RULES", "make_constraints",
    "expected_init_norms", "make_feasible", "contains_all", "check_constraints_match",
    "k_sparse_lmo", "k_support_lmo", "lp_ball_lmo", "nm_sparse_lmo", "RESCALES", "SFWState",
    "sfw", "frank_wolfe", "sfw_momentum", "FrankWolfeState", "SFWMomentumState",
    "scheduled_sfw", "delayed_lmo", "tightening_phases",
    # pruning
    "magnitude_mask", "random_mask", "nm_mask", "row_mask", "masks_for_sweep", "apply_mask",
    "keep_masked",
    "sparsity_summary",
    # leaf selectors
    "Selector", "LEAF_SCOPES", "is_kernel", "every_leaf", "leaf_scope",
]


