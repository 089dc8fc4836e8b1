"""Per-epoch learning-rate schedules, as pure functions of (epoch, schedule state).

The learning rate is set once per epoch (as in the reference) into the optimizer's
``optax.inject_hyperparams`` state. Epochs are 0-indexed; ``E`` is the total number of epochs
and ``lr0`` the base learning rate. For epoch ``e``:

* ``constant``:  ``lr_e = lr0``.
* ``step``:      ``lr_e = lr0 * 0.1 ** #{m in (E // 3, 2 * E // 3) : e >= m, m > 0}``.
* ``cosine``:    ``lr_e = lr0 * (1 + cos(pi * e / E)) / 2``.
* ``dynamic_change`` (the reference's loss-trend rule, exactly; stateful, ``lr_0 = lr0``). With
  ``L`` the per-epoch training losses of epochs ``0 .. e-1`` (``len(L) = e``), ``lr_e`` is
  ``lr_{e-1}`` changed by two rules applied in turn:

  - if ``e`` is ``E // 3`` or ``2 * E // 3`` (and ``> 0``): divide by 10;
  - then, if ``e > 20`` and ``e % 5 == 0``: with ``a = mean(L[e-6 : e-1])`` (5 epochs) and
    ``b = mean(L[e-11 : e-1])`` (10 epochs), both ending one epoch before the last, multiply
    by 0.7 if ``a > b`` (loss trending up) and by 1.06 if ``a < b``.

  So at E = 180 the epochs 60 and 120 get both rules. What an epoch's loss is comes from the
  training loop (``TrainConfig.trend_loss``): the reference feeds the loss of the epoch's last
  batch (``'last_batch'``); ``'epoch_mean'`` feeds the mean over the epoch's batches, which is
  less noisy.

``ScheduleState`` (current lr + loss history) is what a checkpoint must save to resume exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

__all__ = [
    "SCHEDULES", "TREND_LOSSES", "ScheduleState", "milestones", "step_lr", "cosine_lr",
    "dynamic_change_lr", "init_schedule", "next_epoch", "lr_sequence",
]


SCHEDULES = ("constant", "step", "cosine", "dynamic_change")
TREND_LOSSES = ("epoch_mean", "last_batch")
"""Which loss of an epoch 'dynamic_change' reads: the batch mean, or the last batch's (reference)."""

_DECAY_FACTOR = 0.1
_TREND_START_EPOCH = 20
_TREND_EVERY = 5
_TREND_DOWN = 0.7
_TREND_UP = 1.06


@dataclasses.dataclass(frozen=True)
class ScheduleState:
    """Learning rate of the current epoch and the training loss of each finished epoch."""

    lr: float
    losses: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {"lr": self.lr, "losses": list(self.losses)}

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleState":
        return cls(lr=float(d["lr"]), losses=tuple(float(x) for x in d["losses"]))


def _check(name: str, base_lr: float, total_epochs: int) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(SCHEDULES)}, got {name!r}")
    if not isinstance(total_epochs, int) or total_epochs < 1:
        raise ValueError(f"total_epochs must be an int >= 1, got {total_epochs!r}")
    if not (isinstance(base_lr, (int, float)) and math.isfinite(base_lr) and base_lr > 0):
        raise ValueError(f"base_lr must be a finite number > 0, got {base_lr!r}")


def milestones(total_epochs: int) -> tuple[int, ...]:
    """Epochs at which 'step' and 'dynamic_change' divide the lr by 10: ``E//3, 2E//3`` (> 0)."""
    return tuple(m for m in (total_epochs // 3, 2 * total_epochs // 3) if m > 0)


def step_lr(base_lr: float, epoch: int, total_epochs: int) -> float:
    """'step' schedule: ``lr0 * 0.1 ** (number of milestones <= epoch)``."""
    return base_lr * _DECAY_FACTOR ** sum(epoch >= m for m in milestones(total_epochs))


def cosine_lr(base_lr: float, epoch: int, total_epochs: int) -> float:
    """'cosine' schedule: ``lr0 * (1 + cos(pi * epoch / E)) / 2``."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / total_epochs))


def dynamic_change_lr(prev_lr: float, epoch: int, total_epochs: int,
                      losses: Sequence[float]) -> float:
    """'dynamic_change' lr of ``epoch`` from the previous epoch's lr and the losses of epochs
    ``0 .. epoch-1`` (see the module docstring)."""
    lr = prev_lr
    if epoch in milestones(total_epochs):
        lr *= _DECAY_FACTOR
    if epoch > _TREND_START_EPOCH and epoch % _TREND_EVERY == 0 and len(losses) >= 11:
        recent = sum(losses[-6:-1]) / 5.0        # L[e-6 : e-1] when len(L) = e
        longer = sum(losses[-11:-1]) / 10.0      # L[e-11 : e-1]
        if recent > longer:
            lr *= _TREND_DOWN
        elif recent < longer:
            lr *= _TREND_UP
    return lr


def init_schedule(name: str, base_lr: float, total_epochs: int) -> ScheduleState:
    """State for epoch 0: ``lr = lr_0`` of the schedule (``base_lr`` for all four)."""
    _check(name, base_lr, total_epochs)
    return ScheduleState(lr=float(base_lr))


def next_epoch(name: str, state: ScheduleState, *, base_lr: float, epoch: int,
               total_epochs: int, epoch_loss: float) -> ScheduleState:
    """State for epoch ``epoch + 1`` after epoch ``epoch`` ended with loss ``epoch_loss``."""
    _check(name, base_lr, total_epochs)
    losses = state.losses + (float(epoch_loss),)
    e = epoch + 1
    if name == "constant":
        lr = float(base_lr)
    elif name == "step":
        lr = step_lr(base_lr, e, total_epochs)
    elif name == "cosine":
        lr = cosine_lr(base_lr, e, total_epochs)
    else:
        lr = dynamic_change_lr(state.lr, e, total_epochs, state.losses + (float(epoch_loss),))
    return ScheduleState(lr=float(lr), losses=losses)


def lr_sequence(name: str, base_lr: float, total_epochs: int,
                epoch_losses: Sequence[float]) -> list[float]:
    """Learning rates of epochs ``0 .. len(epoch_losses)`` given each epoch's loss."""
    state = init_schedule(name, base_lr, total_epochs)
    lrs = [state.lr]
    for e, loss in enumerate(epoch_losses):
        state = next_epoch(name, state, base_lr=base_lr, epoch=e, total_epochs=total_epochs,
                           epoch_loss=loss)
        lrs.append(state.lr)
    return lrs
