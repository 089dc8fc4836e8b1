"""Constraint schedules: SFW whose constraint sets change at given steps.

A schedule is a sequence of phases ``[(s_0, C_0), (s_1, C_1), ..., (s_{P-1}, C_{P-1})]`` with
``0 = s_0 < s_1 < ... < s_{P-1}``: at step t (the SFW step count) phase
i(t) = #{j >= 1 : s_j <= t} is active, and the step is SFW (:func:`sfw_jax.sfw`) over the
constraint pytree C_i. All phases share one ``SFWState`` (step count t and momentum m_t), so
every phase must constrain the same leaves (their sets may differ in kind, K and radius).

Feasibility at a change. The iterate x of C_{i-1} may lie outside C_i (a smaller K or radius),
so at every step the wrapper first maps each constrained leaf into the active set,

    x' = x                  if x in C_i   (``Constraint.contains``: gauge(x) <= r (1 + rtol))
         shift_inside(x)    otherwise     (the reference's scaling into C_i, see each set)

then takes the SFW step from x' and emits the update that includes that move:

    v      = LMO_{C_i}(m_t),   eta = clip(lr_t * factor(x', v, m_t), 0, 1)
    x_new  = (1 - eta) x' + eta v
    update = x_new - x = (x' - x) + eta (v - x').

x_new is a convex combination of two points of C_i, so after every step of phase i the iterate
lies in C_i whatever set it came from (K or radius shrinking or growing). Inside C_i, x' = x
and the update is ``sfw(learning_rate, C_i, ...)``'s (bitwise on the XLA path; with the native
CPU kernel XLA may fuse the code around it differently inside the switch, which can move the
last bits of eta (v - x)); the move happens on the first step
of a phase whose set does not contain the iterate (the containment tolerance keeps float
rounding of earlier steps from triggering it). On that step the applied iterate
x + update equals x_new up to the rounding of an additive update, |error_j| <~ 2 eps |x_j|
(eps of the dtype): within ``contains``'s tolerance unless x is far (~100x) larger than C_i's
radius, and moved into C_i again by the next step's check otherwise.

Implementation: constraint objects are static (K is a Python int), so every phase is traced as
its own branch and ``jax.lax.switch`` selects the branch by i(t). On XLA:GPU a conditional reads
its branch index on the host (a small device-to-host copy) once per step; every branch is
compiled, so compile time grows with the number of phases.

Builders (pure; they return phase lists for :func:`scheduled_sfw`):

* :func:`delayed_lmo`: the delayed LMO of Zimmer, Spiegel & Pokutta (compression-aware SFW):
  K = n (for a K-sparse polytope of the same L2 diameter, the L_inf ball) until a switch step,
  then the target sets.
* :func:`tightening_phases`: sets built by a function of a few numbers (e.g. tau and k_frac of
  :func:`sfw_jax.make_constraints`) moved linearly from start to end values over P piecewise
  constant phases.
* :func:`step_at`: the step at which a fraction of training is reached.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sfw_jax._tree import PyTree, path_str
from sfw_jax.fw._step import is_masked as _is_masked
from sfw_jax.fw._step import require_params
from sfw_jax.fw._sets import is_constraint
from sfw_jax.fw._sfw import route_unconstrained, sfw

Phases = Sequence[tuple[int, PyTree]]


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_phases(phases: Phases) -> list[tuple[int, PyTree]]:
    """``phases`` as a list of ``(start_step, constraints)`` after checking it.

    ValueError unless: it is a non-empty sequence of pairs; the start steps are ints, the first
    0 and the others strictly increasing; every phase's constraints are a pytree of constraint
    objects with the structure of the first phase's, constraining the same leaves (the shared
    ``SFWState`` holds momentum only for constrained leaves).
    """
    if isinstance(phases, (str, bytes)) or not isinstance(phases, Sequence) or not phases:
        raise ValueError(f"phases must be a non-empty sequence of (start_step, constraints) "
                         f"pairs, got {phases!r}")
    out = []
    for i, ph in enumerate(phases):
        if not isinstance(ph, Sequence) or isinstance(ph, (str, bytes)) or len(ph) != 2:
            raise ValueError(f"phases[{i}] must be a (start_step, constraints) pair, got {ph!r}")
        out.append((ph[0], ph[1]))
    starts = [s for s, _ in out]
    if not all(_is_int(s) for s in starts) or starts[0] != 0 or any(
            b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"phases must start at step 0 with strictly increasing int start "
                         f"steps, got start steps {starts!r}")
    ref_flat, ref_def = jax.tree_util.tree_flatten_with_path(out[0][1], is_leaf=is_constraint)
    for i, (_, cons) in enumerate(out):
        flat, tdef = jax.tree_util.tree_flatten_with_path(cons, is_leaf=is_constraint)
        bad = [leaf for _, leaf in flat if not is_constraint(leaf)]
        if bad:
            raise ValueError(f"phases[{i}] constraints must be a pytree of constraint objects, "
                             f"got a leaf {bad[0]!r}")
        if tdef != ref_def:
            raise ValueError(f"phases[{i}] constraints must have the structure of phases[0]'s; "
                             f"got {tdef}, expected {ref_def}")
        for (path, c), (_, c0) in zip(flat, ref_flat):
            if c.constrained != c0.constrained:
                raise ValueError(
                    f"phases[{i}] constraints must constrain the same leaves as phases[0] (the "
                    f"phases share one SFW state); leaf {path_str(path)!r} is {c!r} there and "
                    f"{c0!r} in phases[0]")
    return out


def phase_index(count: jax.Array, starts: Sequence[int]) -> jax.Array:
    """int32 i(t) = #{j >= 1 : starts[j] <= t}: the phase active at step ``count``."""
    idx = jnp.zeros((), jnp.int32)
    for s in starts[1:]:
        idx = idx + (count >= s).astype(jnp.int32)
    return idx


def _phase_update(tx: optax.GradientTransformationExtraArgs, constraints: PyTree):
    """``(updates, state, params) -> (updates, state)`` of one phase (see the module docstring)."""
    cdef = jax.tree.structure(constraints, is_leaf=is_constraint)
    cs = cdef.flatten_up_to(constraints)

    def run(updates, state, params, extra_args):
        xs = cdef.flatten_up_to(params)
        live = [i for i, (c, x) in enumerate(zip(cs, xs)) if c.constrained and not _is_masked(x)]
        inside = {i: cs[i].contains(xs[i]) for i in live}
        moved = list(xs)
        for i in live:
            moved[i] = jnp.where(inside[i], xs[i], cs[i].shift_inside(xs[i]))
        new_updates, new_state = tx.update(updates, state, cdef.unflatten(moved), **extra_args)
        us = cdef.flatten_up_to(new_updates)
        for i in live:
            # where inside, the update is SFW's exactly (no +0 that could flip a -0)
            us[i] = jnp.where(inside[i], us[i], ((moved[i] - xs[i]) + us[i]).astype(us[i].dtype))
        return cdef.unflatten(us), new_state

    return run


def scheduled_sfw(learning_rate: Union[float, jax.Array, optax.Schedule], phases: Phases, *,
                  momentum: Union[float, jax.Array] = 0.9,
                  rescale: Optional[str] = "gradient",
                  cpu_kernel: bool = False,
                  unconstrained: Optional[optax.GradientTransformation] = None
                  ) -> optax.GradientTransformationExtraArgs:
    """SFW over a constraint schedule (see the module docstring).

    Args:
      learning_rate, momentum, rescale, cpu_kernel, unconstrained: as :func:`sfw_jax.sfw` (the
        same for every phase; a schedule of the learning rate reads the shared step count;
        ``unconstrained`` trains the ``Unconstrained()`` leaves, the same in every phase).
      phases: ``[(start_step, constraints), ...]``, start steps 0 < ... strictly increasing,
        every constraints pytree like params with the same constrained leaves
        (:func:`check_phases`).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is ``sfw_jax.SFWState`` (with
      ``unconstrained``: an ``optax.PartitionState`` as :func:`sfw_jax.sfw`'s);
      ``update(updates, state, params)`` requires ``params``. Composes like :func:`sfw_jax.sfw`
      (``optax.chain``, ``optax.partition``; ``optax.inject_hyperparams(scheduled_sfw,
      static_args=('phases', 'rescale'))``).
    """
    phases = check_phases(phases)
    starts = [s for s, _ in phases]
    txs = [sfw(learning_rate, c, momentum=momentum, rescale=rescale, cpu_kernel=cpu_kernel)
           for _, c in phases]
    branches = [_phase_update(tx, c) for tx, (_, c) in zip(txs, phases)]
    first = phases[0][1]

    def init_fn(params):
        return txs[0].init(params)

    def update_fn(updates, state, params=None, **extra_args):
        require_params(params, "scheduled_sfw")
        if len(branches) == 1:
            return branches[0](updates, state, params, extra_args)
        fns = [lambda u, s, p, b=b: b(u, s, p, extra_args) for b in branches]
        return jax.lax.switch(phase_index(state.count, starts), fns, updates, state, params)

    return route_unconstrained(optax.GradientTransformationExtraArgs(init_fn, update_fn), first,
                               unconstrained)


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

def step_at(fraction: float, total_steps: int) -> int:
    """floor(fraction * total_steps + 1/2): the step by which ``fraction`` of training is done."""
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or not (
            0 <= fraction <= 1):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if not _is_int(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    return int(math.floor(fraction * total_steps + 0.5))


def full_support(constraints: PyTree, params: PyTree) -> PyTree:
    """The K = n sets of the same L2 diameter (Zimmer et al.'s ``adjust_diameter``): each leaf's
    ``Constraint.full_support(n)`` for its n entries.

    ``KSparsePolytope(K, r)`` -> ``KSparsePolytope(n, r sqrt(K / n))`` (K = min(K, n)), i.e. the
    L_inf ball of radius D / (2 sqrt(n)) with D = 2 r sqrt(K) the polytope's L2 diameter;
    ``KSupportNormBall(k, r)`` -> ``KSupportNormBall(n, r)`` (the L2 ball of radius r, diameter
    2 r); sets without a K unchanged. ``params``: arrays or ``jax.ShapeDtypeStruct`` leaves
    (only their shapes are read).
    """
    return jax.tree.map(lambda c, x: c.full_support(int(np.prod(np.shape(x)))), constraints,
                        params, is_leaf=is_constraint)


def delayed_lmo(constraints: PyTree, params: PyTree, switch_step: int) -> list[tuple[int, PyTree]]:
    """``[(0, full_support(constraints, params)), (switch_step, constraints)]``: train with
    K = n at the target sets' L2 diameters until ``switch_step`` (an int >= 1), then with the
    target sets (Zimmer, Spiegel & Pokutta's delayed LMO)."""
    if not _is_int(switch_step) or switch_step < 1:
        raise ValueError(f"switch_step must be an int >= 1, got {switch_step!r}")
    return [(0, full_support(constraints, params)), (int(switch_step), constraints)]


def tightening_phases(make: Callable[..., PyTree], start: Mapping[str, float],
                      end: Mapping[str, float], n_phases: int,
                      end_step: int) -> list[tuple[int, PyTree]]:
    """P = ``n_phases`` piecewise constant phases moving the arguments of ``make`` from
    ``start`` to ``end`` linearly in the step.

    Phase i = 0, ..., P-1 starts at s_i = floor(i * end_step / (P - 1) + 1/2) with the
    constraints ``make(**v_i)``, v_i[a] = start[a] + (end[a] - start[a]) * i / (P - 1)
    (v_{P-1} = end exactly), so the end values hold from ``end_step`` on. E.g.
    ``make = lambda value, k_frac: make_constraints(params, 'k_sparse', value=value,
    k_frac=k_frac, init_norms=norms)`` with start ``{'value': 15, 'k_frac': 0.05}`` and end
    ``{'value': 7, 'k_frac': 0.01}``.

    Args:
      make: keyword arguments (the keys of ``start``) -> constraint pytree.
      start, end: the same non-empty set of keys, numbers.
      n_phases: P, an int >= 2.
      end_step: s_{P-1}, an int >= P - 1 (so that the start steps are distinct).
    """
    if not _is_int(n_phases) or n_phases < 2:
        raise ValueError(f"n_phases must be an int >= 2, got {n_phases!r}")
    if not _is_int(end_step) or end_step < n_phases - 1:
        raise ValueError(f"end_step must be an int >= n_phases - 1 = {n_phases - 1} (one step "
                         f"per phase at least), got {end_step!r}")
    if not start or set(start) != set(end):
        raise ValueError(f"start and end must have the same non-empty keys, got "
                         f"{sorted(start)} and {sorted(end)}")
    last = n_phases - 1
    out = []
    for i in range(n_phases):
        values = {a: end[a] if i == last else start[a] + (end[a] - start[a]) * i / last
                  for a in start}
        out.append((int(math.floor(i * end_step / last + 0.5)), make(**values)))
    return out
