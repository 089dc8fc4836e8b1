"""The Frank-Wolfe core: constraint sets, their oracles, and the SFW transformation.

Its API is exported once: what a user of SFW needs by :mod:`sfw_jax` (the sets and their
registry, ``make_constraints``, the LMOs, ``sfw``, ``frank_wolfe`` / ``sfw_momentum``, the
constraint schedules), the rest of the toolbox here; the modules implementing them are private:

* :mod:`~sfw_jax.fw.topk`: exact top-k selection without a full sort;
  :mod:`~sfw_jax.fw.segtopk`: the segmented engine (top-k in many tensors at once, the
  pruning masks' ranking);
* :mod:`~sfw_jax.fw.native`: the native CPU kernel of the SFW step's front half (its build and
  why it cannot run, :func:`~sfw_jax.fw.native.unavailable_reason`);
* ``parse_nm``, ``format_nm``, ``nm_eligible``: the ``"N:M"`` pattern and which leaves it
  applies to;
* ``BATCH_SELECT``, ``TREE_SELECT``, ``uses_cpu_kernel``: what ``sfw(batch_select=None,
  tree_select=None, cpu_kernel=None)`` resolves to; ``SFW_LABEL``, ``UNCONSTRAINED_LABEL``: the labels of ``sfw``'s partition.

Inside, by stage: ``_sets`` (the sets) and ``_registry`` (kinds by name), ``_constraints``
(``make_constraints``, E||W_init||), ``_lmo`` / ``_gauges`` / ``_projections`` / ``_nm``
(oracles, gauges and projections as pure functions), ``_step`` (the shared SFW step rule),
``_blocks`` and ``_sfw`` (the transformations), ``_constraint_schedule``.
"""

from sfw_jax.fw import native, segtopk, topk
from sfw_jax.fw._nm import format_nm, nm_eligible, parse_nm
from sfw_jax.fw._sfw import (BATCH_SELECT, SFW_LABEL, TREE_SELECT, UNCONSTRAINED_LABEL,
                             uses_cpu_kernel)

__all__ = [
    "topk", "segtopk", "native", "parse_nm", "format_nm", "nm_eligible", "BATCH_SELECT",
    "TREE_SELECT",
    "uses_cpu_kernel", "SFW_LABEL", "UNCONSTRAINED_LABEL",
]
