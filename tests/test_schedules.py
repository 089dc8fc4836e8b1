"""Learning-rate schedules: exact per-epoch values and the 'dynamic_change' loss-trend rule."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from sfw_jax.training import schedules


def test_constant_is_constant():
    assert schedules.lr_sequence("constant", 0.3, 5, [1.0] * 5) == [0.3] * 6


def test_step_divides_by_ten_at_thirds():
    # E = 9: milestones at epochs 3 and 6.
    lrs = schedules.lr_sequence("step", 1.0, 9, [1.0] * 8)
    assert schedules.milestones(9) == (3, 6)
    assert lrs == [1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1 ** 2, 0.1 ** 2, 0.1 ** 2]


def test_step_reference_epochs():
    # The paper's 180 epochs: /10 at 60 and 120.
    assert schedules.milestones(180) == (60, 120)
    assert schedules.step_lr(0.1, 59, 180) == 0.1
    assert schedules.step_lr(0.1, 60, 180) == 0.1 * 0.1
    assert schedules.step_lr(0.1, 120, 180) == 0.1 * 0.1 ** 2


def test_cosine_values():
    lrs = schedules.lr_sequence("cosine", 2.0, 4, [1.0] * 3)
    assert lrs[0] == 2.0
    assert lrs[1] == pytest.approx(2.0 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-15)
    assert lrs[2] == pytest.approx(1.0, rel=1e-15)
    assert lrs[3] == pytest.approx(2.0 * (1 + math.cos(3 * math.pi / 4)) / 2, rel=1e-15)


def _trend_losses():
    """Epochs 0..39: decreasing 1/(e+1), except a loss spike in epochs 20..24."""
    losses = [1.0 / (e + 1) for e in range(40)]
    for e in range(20, 25):
        losses[e] = 5.0
    return losses


def test_dynamic_change_rule_on_synthetic_losses():
    E, lr0 = 90, 1.0  # milestones 30 and 60
    lrs = schedules.lr_sequence("dynamic_change", lr0, E, _trend_losses())
    # Epoch 20 is a multiple of 5 but not > 20: no change. Epoch 25: the mean of epochs 19..23
    # (4.01) exceeds that of 14..23 (2.03) -> x0.7. Epoch 30: milestone /10, then the trend
    # rule too: epochs 24..28 (1.03) below 19..28 (2.52) -> x1.06. Epochs 35 and 40: losses
    # still falling -> x1.06 each.
    expected = ([lr0] * 25 + [lr0 * 0.7] * 5 + [lr0 * 0.7 * 0.1 * 1.06] * 5
                + [lr0 * 0.7 * 0.1 * 1.06 * 1.06] * 5 + [lr0 * 0.7 * 0.1 * 1.06 * 1.06 * 1.06])
    assert lrs == expected


def test_dynamic_change_equal_means_keep_lr_and_milestones_apply():
    lrs = schedules.lr_sequence("dynamic_change", 0.5, 90, [2.0] * 65)
    assert lrs[:30] == [0.5] * 30           # flat loss: trend rule never fires
    assert lrs[30:60] == [0.5 * 0.1] * 30
    assert lrs[60:66] == [0.5 * 0.1 * 0.1] * 6


def test_dynamic_change_single_step_function():
    # Direct use: increasing losses at epoch 25 -> x0.7; decreasing -> x1.06; at a milestone
    # that is also a trend epoch both apply.
    up = [float(i) for i in range(25)]
    down = [float(-i) for i in range(25)]
    assert schedules.dynamic_change_lr(0.2, 25, 180, up) == 0.2 * 0.7
    assert schedules.dynamic_change_lr(0.2, 25, 180, down) == 0.2 * 1.06
    assert schedules.dynamic_change_lr(0.2, 26, 180, up) == 0.2
    assert schedules.dynamic_change_lr(0.2, 60, 180, up) == 0.2 * 0.1 * 0.7


def _reference_dynamic_change(lr0, epochs, losses):
    """Transliteration of the reference training loop's 'dynamic_change' branch (Lu et al.'s
    train_prune.py): lr set at the top of each epoch from ``loss_list`` (one entry per
    finished epoch), absolute indices, the milestone and the trend rule both checked."""
    lr, lrs, loss_list = lr0, [], []
    for epoch in range(len(losses) + 1):
        if epoch == int(epochs / 3):
            lr = lr / 10
        elif epoch == int(epochs * 2 / 3):
            lr = lr / 10
        if epoch > 20 and epoch % 5 == 0:
            a = sum(loss_list[(epoch - 6):(epoch - 1)]) / 5
            b = sum(loss_list[(epoch - 11):(epoch - 1)]) / 10
            if a > b:
                lr = lr * 0.7
            if a < b:
                lr = lr * 1.06
        lrs.append(lr)
        if epoch < len(losses):
            loss_list.append(losses[epoch])
    return lrs


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([180, 90, 60, 45]), st.floats(1e-3, 10.0),
       st.lists(st.floats(0.0, 5.0), min_size=1, max_size=180))
def test_dynamic_change_matches_the_reference_loop(epochs, lr0, losses):
    losses = losses[:epochs - 1]
    assert schedules.lr_sequence("dynamic_change", lr0, epochs, losses) == pytest.approx(
        _reference_dynamic_change(lr0, epochs, losses), rel=1e-12)


def test_state_roundtrip_and_errors():
    s = schedules.ScheduleState(lr=0.25, losses=(1.5, 1.25))
    assert schedules.ScheduleState.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="lr_schedule must be one of .*'linear'"):
        schedules.init_schedule("linear", 1.0, 10)
    with pytest.raises(ValueError, match="total_epochs"):
        schedules.init_schedule("step", 1.0, 0)
    with pytest.raises(ValueError, match="base_lr"):
        schedules.init_schedule("step", -1.0, 10)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.floats(1e-3, 10.0))
def test_step_takes_only_three_values_and_never_increases(epochs, lr0):
    lrs = schedules.lr_sequence("step", lr0, epochs, [1.0] * (epochs - 1))
    assert set(lrs) <= {lr0, lr0 * 0.1, lr0 * 0.1 ** 2}
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert len(lrs) == epochs
