"""The Frank-Wolfe core: constraint sets, their oracles, and the SFW transformation.

* :mod:`~sfw_jax.fw.sets`: the sets (K-sparse polytope, L_p balls, k-support ball, N:M polytope,
  R^n) and the kind name each is registered under;
* :mod:`~sfw_jax.fw.registry`: the kinds by name (``register_constraint``, ``KINDS``);
* :mod:`~sfw_jax.fw.constraints`: ``make_constraints`` for a whole params pytree and its
  E||W_init|| (``expected_init_norms``);
* :mod:`~sfw_jax.fw.lmo`, :mod:`~sfw_jax.fw.gauges`, :mod:`~sfw_jax.fw.projections`,
  :mod:`~sfw_jax.fw.nm`: linear minimization oracles, gauges and projections as pure functions;
* :mod:`~sfw_jax.fw.topk`: exact top-k selection without a full sort;
  :mod:`~sfw_jax.fw.segtopk`: the segmented engine (top-k in many tensors at once, the
  pruning masks' ranking);
* :mod:`~sfw_jax.fw.blocks`: ``frank_wolfe`` and ``sfw_momentum``, SFW as Optax building
  blocks (``optax.chain(optax.scale_by_adam(), frank_wolfe(...))``: Adam-preconditioned SFW);
* :mod:`~sfw_jax.fw.sfw`: ``sfw``, the Optax transformation (their chain, with a fused native
  CPU kernel);
  :mod:`~sfw_jax.fw.constraint_schedule`: ``scheduled_sfw`` and its phase builders;
* :mod:`~sfw_jax.fw.native`: the native CPU kernel of the SFW step's front half.

The public names are re-exported by :mod:`sfw_jax`.
"""
