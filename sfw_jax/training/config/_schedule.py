"""The schedule options of a run: the learning-rate schedule and the constraint schedule.

A constraint schedule (:func:`sfw_jax.scheduled_sfw`; at most one kind per run) changes
the sets during training, over T = (steps per epoch) x ``epochs`` steps: ``delay_lmo = f``
trains with K = n at the same L2 diameters (the L_inf ball for K-sparse) for the first
round(f T) steps, then with the target sets; ``tau_start`` and/or ``k_frac_start`` start from
those values and move linearly to ``tau`` / ``k_frac`` in ``schedule_phases`` piecewise
constant phases, the last starting at step round(``schedule_end`` T). Every phase is built by
``make_constraints`` with the same E||W_init||.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from sfw_jax.training.config._option import check_options, option
from sfw_jax.training.schedules import SCHEDULES, TREND_LOSSES

CONSTRAINT_SCHEDULE_FIELDS = ("delay_lmo", "tau_start", "k_frac_start")
"""Fields that switch a constraint schedule on when not None."""


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Per-epoch learning rates (:mod:`sfw_jax.training.schedules`) and the constraint
    schedule (the module docstring). ``lr_schedule`` None takes the optimizer's default
    (:data:`sfw_jax.training.optimizers.OPTIMIZER_DEFAULTS`)."""

    GROUP: ClassVar[str] = "schedules"

    lr_schedule: str | None = option(None, choices=SCHEDULES,
                                     help="per-epoch learning rate schedule (SFW default "
                                          "dynamic_change, SGD step)")
    trend_loss: str = option("epoch_mean", choices=TREND_LOSSES,
                             help="epoch loss read by 'dynamic_change' (reference: last_batch)")
    delay_lmo: float | None = option(
        None, lo=0.0, hi=1.0, lo_open=True, hi_open=True, allowed="a fraction in (0, 1)",
        metavar="FRACTION", sfw_only=True,
        help="train the first FRACTION of the steps with K = n at the same L2 diameters, then "
             "with the target K (delayed LMO; a constraint with a K)")
    tau_start: float | None = option(None, lo=0.0, lo_open=True, sfw_only=True,
                                     help="constraint schedule: tau of the first phase, moved "
                                          "linearly to tau")
    k_frac_start: float | None = option(None, lo=0.0, hi=1.0, lo_open=True, sfw_only=True,
                                        help="constraint schedule: k_frac of the first phase, "
                                             "moved linearly to k_frac")
    schedule_phases: int = option(4, lo=2, sfw_only=True,
                                  help="piecewise constant phases of the tau_start / "
                                       "k_frac_start schedule")
    schedule_end: float = option(0.5, lo=0.0, hi=1.0, lo_open=True, metavar="FRACTION",
                                 sfw_only=True,
                                 help="fraction of the steps at which that schedule reaches "
                                      "tau / k_frac")

    @property
    def has_constraint_schedule(self) -> bool:
        """Whether a field of :data:`CONSTRAINT_SCHEDULE_FIELDS` is set (the SFW sets change
        during training)."""
        return any(getattr(self, f) is not None for f in CONSTRAINT_SCHEDULE_FIELDS)

    def validate(self) -> None:
        """ValueError naming the first invalid field or conflict."""
        check_options(self)
        if self.delay_lmo is not None and (self.tau_start, self.k_frac_start) != (None, None):
            raise ValueError(f"delay_lmo={self.delay_lmo!r} conflicts with tau_start="
                             f"{self.tau_start!r} / k_frac_start={self.k_frac_start!r}: use one "
                             f"constraint schedule (delayed LMO or tightening)")
