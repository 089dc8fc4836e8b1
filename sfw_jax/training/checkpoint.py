"""Epoch checkpoints with Orbax: the whole train state plus JSON metadata, last N kept.

Layout: ``<directory>/<epochs_done>/{state,meta}`` where ``state`` is the train-state pytree
(params, batch_stats, opt_state, step, rng; saved with ``StandardSave``) and ``meta`` a JSON dict
(epoch count, schedule state, metrics history, config) saved with ``JsonSave``. The numbering is
the number of *finished* epochs, so resuming from checkpoint ``n`` starts epoch ``n`` (0-based).

Atomicity: Orbax writes each checkpoint into ``<n>.orbax-checkpoint-tmp[-...]`` and renames it to
``<n>`` once every item is written (``AtomicRenameTemporaryPath``, the default on local/POSIX
file systems); a run killed mid-save leaves only a temporary directory, which
``latest_epoch``/``restore`` ignore and which is deleted when a manager next opens the directory
(``cleanup_tmp_directories=True``). ``tests/test_checkpoint.py`` checks both.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["STATE", "META", "Checkpointer", "has_checkpoint"]


STATE = "state"
META = "meta"


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for (state pytree, JSON meta) per epoch.

    Args:
      directory: checkpoint root (created if missing).
      max_to_keep: newest checkpoints kept; older ones are deleted after each save.
      async_save: write in a background thread after the (blocking) device-to-host copy; call
        :meth:`wait` (or :meth:`close`) before reading the files or exiting.
    """

    def __init__(self, directory: str, max_to_keep: int = 3, *, async_save: bool = True):
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=(STATE, META))

    def save(self, epochs_done: int, state: Any, meta: dict) -> None:
        """Save ``state`` and ``meta`` as checkpoint ``epochs_done`` (overwrites nothing)."""
        self._manager.save(epochs_done, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}))

    def latest_epoch(self) -> int | None:
        """Number of the newest finished checkpoint, or None."""
        return self._manager.latest_step()

    def all_epochs(self) -> list[int]:
        """Numbers of all finished checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def restore(self, target: Any, epochs_done: int | None = None) -> tuple[Any, dict]:
        """(state, meta) of checkpoint ``epochs_done`` (default: newest).

        ``target`` is a state pytree of the same structure (e.g. a freshly initialised state, or
        ``jax.ShapeDtypeStruct`` leaves with shardings); restored arrays take its shapes, dtypes
        and shardings. ``target=None`` restores the saved structure (nested dicts) onto this
        process's first device, whatever devices and processes saved it. Raises
        FileNotFoundError when there is no checkpoint.
        """
        step = self.latest_epoch() if epochs_done is None else epochs_done
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if target is None:
            target = self._local_target(step)
        out = self._manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}))
        return out[STATE], dict(out[META])

    def _local_target(self, step: int) -> Any:
        """The saved state's structure with ``jax.ShapeDtypeStruct`` leaves on this process's
        first device (the saved shardings may name devices of other processes)."""
        meta = ocp.StandardCheckpointHandler().metadata(
            pathlib.Path(self.directory, str(step), STATE))
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            getattr(meta, "tree", meta))

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def has_checkpoint(directory: str) -> bool:
    """Whether ``directory`` holds at least one finished checkpoint (no files are created)."""
    if not os.path.isdir(directory):
        return False
    for name in os.listdir(directory):
        if name.isdigit() and os.path.isdir(os.path.join(directory, name)):
            return True
    return False
