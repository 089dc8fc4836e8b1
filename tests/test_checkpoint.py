"""Orbax epoch checkpoints: round trip, retention, and atomicity (temporary dirs are ignored)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfw_jax.training.checkpoint import Checkpointer, has_checkpoint


def _state(seed: int):
    k = jax.random.PRNGKey(seed)
    return {"params": {"w": jax.random.normal(k, (3, 4)), "b": jnp.arange(4.0)},
            "step": jnp.asarray(seed, jnp.int32), "rng": jax.random.PRNGKey(seed + 100)}


def test_roundtrip_keeps_values_dtypes_and_meta(tmp_path):
    d = str(tmp_path / "ck")
    state = _state(1)
    meta = {"epochs_done": 1, "schedule": {"lr": 0.1, "losses": [2.5]}, "history": [{"a": 1}]}
    with Checkpointer(d, max_to_keep=2) as ck:
        ck.save(1, state, meta)
    with Checkpointer(d, max_to_keep=2) as ck:
        assert ck.latest_epoch() == 1
        restored, meta2 = ck.restore(_state(7))  # target of the same structure, other values
    assert meta2 == meta
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keeps_only_last_n(tmp_path):
    d = str(tmp_path / "ck")
    with Checkpointer(d, max_to_keep=2) as ck:
        for e in range(1, 5):
            ck.save(e, _state(e), {"epochs_done": e})
        ck.wait()
        assert ck.all_epochs() == [3, 4]
        restored, meta = ck.restore(_state(0), epochs_done=3)
    assert meta["epochs_done"] == 3
    assert int(restored["step"]) == 3
    assert sorted(os.listdir(d)) == ["3", "4"]


def test_unfinished_temporary_checkpoint_is_ignored_and_cleaned(tmp_path):
    """A save killed mid-way leaves only '<n>.orbax-checkpoint-tmp*': never read, then removed."""
    d = tmp_path / "ck"
    with Checkpointer(str(d), max_to_keep=3) as ck:
        ck.save(2, _state(2), {"epochs_done": 2})
    # Simulate a crash while writing checkpoint 3 (partial files in the temporary dir).
    tmp = d / "3.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "partial").write_bytes(b"\x00" * 10)
    with Checkpointer(str(d), max_to_keep=3) as ck:
        assert ck.latest_epoch() == 2
        restored, meta = ck.restore(_state(0))
    assert meta == {"epochs_done": 2}
    assert int(restored["step"]) == 2
    assert not tmp.exists()  # cleanup_tmp_directories=True


def test_save_leaves_no_temporary_dirs(tmp_path):
    d = tmp_path / "ck"
    with Checkpointer(str(d), max_to_keep=3) as ck:
        ck.save(1, _state(1), {"epochs_done": 1})
    assert sorted(os.listdir(d)) == ["1"]
    assert has_checkpoint(str(d))


def test_errors(tmp_path):
    assert not has_checkpoint(str(tmp_path / "missing"))
    with Checkpointer(str(tmp_path / "empty")) as ck:
        assert ck.latest_epoch() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ck.restore(_state(0))
    with pytest.raises(ValueError, match="max_to_keep must be an int >= 1, got 0"):
        Checkpointer(str(tmp_path / "x"), max_to_keep=0)
