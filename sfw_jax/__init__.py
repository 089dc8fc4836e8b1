"""sfw-jax: pruning-aware training with Stochastic Frank-Wolfe in JAX/Optax."""

from sfw_jax.constraint_schedule import delayed_lmo, scheduled_sfw, tightening_phases
from sfw_jax.constraints import (
    KINDS,
    MODES,
    Constraint,
    KSparsePolytope,
    KSupportNormBall,
    LpBall,
    NMSparsePolytope,
    Unconstrained,
    check_constraints_match,
    contains_all,
    expected_init_norms,
    is_constraint,
    make_constraints,
    make_feasible,
    sparsity_k,
)
from sfw_jax.lmo import k_sparse_lmo, k_support_lmo, lp_ball_lmo
from sfw_jax.nm import nm_sparse_lmo
from sfw_jax.pruning import nm_mask
from sfw_jax.sfw import SFWState, sfw

__version__ = "0.1.0"

__all__ = [
    "KINDS", "MODES", "Constraint", "KSparsePolytope", "KSupportNormBall", "LpBall",
    "NMSparsePolytope", "Unconstrained", "SFWState", "check_constraints_match", "contains_all",
    "expected_init_norms", "is_constraint", "k_sparse_lmo", "k_support_lmo", "lp_ball_lmo",
    "make_constraints", "make_feasible", "nm_mask", "nm_sparse_lmo", "sfw", "sparsity_k",
    "delayed_lmo", "scheduled_sfw", "tightening_phases",
]
