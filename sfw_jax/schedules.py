"""Per-epoch learning-rate schedules, as pure functions of (epoch, schedule state).

The learning rate is set once per epoch (as in the reference) into the optimizer's
``optax.inject_hyperparams`` state. Epochs are 0-indexed; ``E`` is the total number of epochs
and ``lr0`` the base learning rate. For epoch ``e``:

* ``constant``:  ``lr_e = lr0``.
* ``step``:      ``lr_e = lr0 * 0.1 ** #{m in (E // 3, 2 * E // 3) : e >= m, m > 0}``.
* ``cosine``:    ``lr_e = lr0 * (1 + cos(pi * e / E)) / 2``.
* ``dynamic_change`` (the reference's loss-trend rule; stateful, ``lr_0 = lr0``). With
  ``L`` the per-epoch training losses of epochs ``0 .. e-1``:

  - if ``e`` is ``E // 3`` or ``2 * E // 3`` (and ``> 0``): ``lr_e = lr_{e-1} / 10``;
  - elif ``e > 20``, ``e % 5 == 0`` and ``len(L) >= 10``:
    ``lr_e = 0.7 * lr_{e-1}`` if ``mean(L[-5:]) > mean(L[-10:])`` (loss trending up),
    ``lr_e = 1.06 * lr_{e-1}`` if ``mean(L[-5:]) < mean(L[-10:])``, unchanged if equal;
  - else ``lr_e = lr_{e-1}``.

  The reference records the *last batch's* loss as an epoch's loss; here ``L`` holds the *mean*
  training loss of each epoch, which is less noisy (a deliberate difference).

``ScheduleState`` (current lr + loss history) is what a checkpoint must save to resume exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

SCHEDULES = ("constant", "step", "cosine", "dynamic_change")

DECAY_FACTOR = 0.1
TREND_START_EPOCH = 20
TREND_EVERY = 5
TREND_DOWN = 0.7
TREND_UP = 1.06


@dataclasses.dataclass(frozen=True)
class ScheduleState:
    """Learning rate of the current epoch and the mean training loss of each finished epoch."""

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
    return base_lr * DECAY_FACTOR ** sum(epoch >= m for m in milestones(total_epochs))


def cosine_lr(base_lr: float, epoch: int, total_epochs: int) -> float:
    """'cosine' schedule: ``lr0 * (1 + cos(pi * epoch / E)) / 2``."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / total_epochs))


def dynamic_change_lr(prev_lr: float, epoch: int, total_epochs: int,
                      losses: Sequence[float]) -> float:
    """'dynamic_change' lr of ``epoch`` from the previous epoch's lr and the loss history."""
    if epoch in milestones(total_epochs):
        return prev_lr * DECAY_FACTOR
    if epoch > TREND_START_EPOCH and epoch % TREND_EVERY == 0 and len(losses) >= 10:
        recent = sum(losses[-5:]) / 5.0
        longer = sum(losses[-10:]) / 10.0
        if recent > longer:
            return prev_lr * TREND_DOWN
        if recent < longer:
            return prev_lr * TREND_UP
    return prev_lr


def init_schedule(name: str, base_lr: float, total_epochs: int) -> ScheduleState:
    """State for epoch 0: ``lr = lr_0`` of the schedule (``base_lr`` for all four)."""
    _check(name, base_lr, total_epochs)
    return ScheduleState(lr=float(base_lr))


def next_epoch(name: str, state: ScheduleState, *, base_lr: float, epoch: int,
               total_epochs: int, epoch_loss: float) -> ScheduleState:
    """State for epoch ``epoch + 1`` after epoch ``epoch`` ended with mean loss ``epoch_loss``."""
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
    """Learning rates of epochs ``0 .. len(epoch_losses)`` given each epoch's mean loss."""
    state = init_schedule(name, base_lr, total_epochs)
    lrs = [state.lr]
    for e, loss in enumerate(epoch_losses):
        state = next_epoch(name, state, base_lr=base_lr, epoch=e, total_epochs=total_epochs,
                           epoch_loss=loss)
        lrs.append(state.lr)
    return lrs
