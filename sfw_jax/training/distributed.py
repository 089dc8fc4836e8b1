"""Data parallelism with ``jax.sharding``: a 1-D device mesh with axis ``'data'``, on one
process or on several (multi-host, JAX's distributed runtime).

Batches are sharded along their leading axis (``P('data')``: each of the ``n`` devices holds
``batch_size / n`` examples); parameters, optimizer state and the on-device dataset are
replicated (``P()``). Under ``jax.jit`` a mean over the (sharded) batch axis is a global mean,
so gradients, BatchNorm batch statistics and the step's metrics are those of the whole global
batch, exactly as on one device; XLA inserts the all-reduces (across processes too).

Multi-process (one process per host, each with its local devices; the mesh spans the devices of
every process): :func:`initialize_distributed` calls ``jax.distributed.initialize`` before any
other JAX call, with the runtime's timeouts set explicitly. Every process computes the same
global host value (the same seeded batch indices, the same dataset) and :func:`global_array`
assembles the global ``jax.Array`` from each process's own shards
(``jax.make_array_from_callback``: no transfer between processes, and no ``device_put`` onto
devices another process owns). :func:`broadcast_from_main` makes the initial state process 0's,
bit for bit, and :func:`check_same_on_all_processes` refuses a launch whose processes disagree
(config, data). On one process every helper is the plain ``jax.device_put`` path.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import zlib
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, Sharding

from sfw_jax._cli import one_line

__all__ = [
    "DATA_AXIS", "INITIALIZATION_TIMEOUT_S", "HEARTBEAT_TIMEOUT_S", "SHUTDOWN_TIMEOUT_S",
    "EXIT_COLLECTIVE_FAILURE", "initialize_distributed", "is_initialized", "is_multiprocess",
    "select_devices", "make_mesh", "data_sharding", "replicated", "check_batch_divisible",
    "global_array", "replicate", "shard_batch", "broadcast_from_main",
    "check_same_on_all_processes", "is_collective_failure", "exit_on_collective_failure",
]


DATA_AXIS = "data"

INITIALIZATION_TIMEOUT_S = 300
"""Seconds ``jax.distributed.initialize`` waits for every process to connect."""
HEARTBEAT_TIMEOUT_S = 60
"""Seconds without heartbeats after which the coordination service declares a process dead and
JAX terminates the others (passed with jax >= 0.7; older jax has a fixed 100 s)."""
SHUTDOWN_TIMEOUT_S = 60
"""Seconds a finishing process waits at exit for the others (passed with jax >= 0.8.1)."""

EXIT_COLLECTIVE_FAILURE = 1
"""Exit status of a process that left because a collective with the other processes failed."""


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           initialization_timeout: int = INITIALIZATION_TIMEOUT_S,
                           heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S,
                           shutdown_timeout: int = SHUTDOWN_TIMEOUT_S) -> dict[str, int]:
    """``jax.distributed.initialize`` (None arguments are auto-detected by JAX: SLURM, Open MPI,
    TPU pods) with explicit timeouts in seconds.

    ``heartbeat_timeout`` needs jax >= 0.7 and ``shutdown_timeout`` jax >= 0.8.1; an older jax
    keeps its own values. Returns the timeouts actually passed (``{parameter: seconds}``).
    """
    kwargs: dict[str, Any] = {k: v for k, v in dict(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id).items() if v is not None}
    accepted = inspect.signature(jax.distributed.initialize).parameters
    timeouts = {k: v for k, v in (("initialization_timeout", initialization_timeout),
                                  ("heartbeat_timeout_seconds", heartbeat_timeout),
                                  ("shutdown_timeout_seconds", shutdown_timeout))
                if k in accepted}
    jax.distributed.initialize(**kwargs, **timeouts)
    return timeouts


def is_initialized() -> bool:
    """Whether ``jax.distributed.initialize`` has run in this process
    (``jax.distributed.is_initialized``, jax >= 0.6; its runtime client before)."""
    check = getattr(jax.distributed, "is_initialized", None)
    if check is not None:
        return check()
    from jax._src import distributed as jax_distributed
    return jax_distributed.global_state.client is not None


def is_multiprocess() -> bool:
    """Whether this JAX program spans several processes (``jax.process_count() > 1``)."""
    return jax.process_count() > 1


def select_devices(num_devices: int | None = None) -> list[jax.Device]:
    """The first ``num_devices`` of ``jax.devices()`` (all when None; on several processes only
    all of them: a mesh must hold devices of every process)."""
    devices = jax.devices()
    if num_devices is None:
        return list(devices)
    if not isinstance(num_devices, int) or not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices must be an int in [1, {len(devices)}] (the devices JAX sees: "
            f"{len(devices)} x {devices[0].platform}), got {num_devices!r}")
    if is_multiprocess() and num_devices != len(devices):
        raise ValueError(
            f"num_devices must be None (all {len(devices)} devices of the "
            f"{jax.process_count()} processes) in a multi-process run, got {num_devices}")
    return list(devices[:num_devices])


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D ``Mesh`` over ``devices`` (default: all) with the single axis ``'data'``."""
    devs = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devs, dtype=object), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: leading axis split over ``'data'``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a replicated value (params, optimizer state, scalars)."""
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """ValueError naming ``name`` unless ``batch_size`` is a multiple of the mesh's device count."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"{name} must be divisible by the number of devices ({n}) for data parallelism, "
            f"got {batch_size}; use a multiple of {n} or set num_devices")


def global_array(x: Any, sharding: Sharding) -> jax.Array:
    """The global array with value ``x`` (host or device array) and ``sharding``.

    ``x`` is the whole value, the same on every process. One process: ``jax.device_put``.
    Several: each process puts only its addressable shards ``x[index]``
    (``jax.make_array_from_callback``), so nothing crosses processes.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` placed replicated on every device of ``mesh`` (:func:`global_array`)."""
    if not is_multiprocess():
        return jax.device_put(tree, replicated(mesh))
    return jax.tree.map(lambda x: global_array(x, replicated(mesh)), tree)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """``tree`` of arrays with a leading batch axis, sharded over ``'data'``
    (:func:`global_array`)."""
    if not is_multiprocess():
        return jax.device_put(tree, data_sharding(mesh))
    return jax.tree.map(lambda x: global_array(x, data_sharding(mesh)), tree)


def _bits(a: np.ndarray) -> np.ndarray:
    """``a`` viewed as unsigned ints of its item size (a sum with zeros keeps every bit, -0.0
    included)."""
    return a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.dtype.itemsize in (1, 2, 4) else a


def broadcast_from_main(tree: Any) -> Any:
    """On several processes: ``tree`` (same structure and shapes everywhere) as process 0 holds
    it, bit for bit, as host arrays (a collective: every process must call it). One process:
    ``tree`` unchanged.

    Used for the initial train state, so that replicas agree even if a host computed its
    initialisation slightly differently (another CPU, a non-deterministic GPU kernel).
    """
    if not is_multiprocess():
        return tree
    from jax.experimental import multihost_utils

    host = jax.tree.map(np.asarray, jax.device_get(tree))
    out = multihost_utils.broadcast_one_to_all(jax.tree.map(_bits, host))
    return jax.tree.map(lambda o, a: np.asarray(o).view(a.dtype).reshape(a.shape), out, host)


def check_same_on_all_processes(items: Mapping[str, Any]) -> None:
    """ValueError naming the first item that differs between processes (compared by CRC-32 of
    its bytes; a collective on several processes, nothing on one).

    ``items``: ``{description: bytes or numpy array}`` (e.g. ``"option seed": b"0"``, ``"the
    train images": an array``), the same descriptions in the same order everywhere.
    """
    if not is_multiprocess():
        return
    from jax.experimental import multihost_utils

    names = list(items)
    crcs = np.array([zlib.crc32(np.ascontiguousarray(items[n]).view(np.uint8))
                     if isinstance(items[n], np.ndarray) else zlib.crc32(items[n])
                     for n in names], np.uint32)
    every = np.asarray(multihost_utils.process_allgather(crcs)).reshape(-1, len(names))
    for j, name in enumerate(names):
        others = [p for p in range(every.shape[0]) if every[p, j] != every[0, j]]
        if others:
            raise ValueError(f"{name} differs between processes (process(es) {others} vs "
                             f"process 0): every process must run the same command on the same "
                             f"data")


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from or while handling) is a failed
    collective or runtime call (``JaxRuntimeError``: e.g. a peer's connection was reset) or a
    timed-out barrier (``TimeoutError``, e.g. Orbax's wait for every process's writes)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (jax.errors.JaxRuntimeError, TimeoutError)):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def exit_on_collective_failure(enabled: bool = True) -> Iterator[None]:
    """On several processes (and ``enabled``): a collective failure raised inside
    (:func:`is_collective_failure`: another process died, was stopped or failed) prints one
    line to stderr and ends this process at once with :data:`EXIT_COLLECTIVE_FAILURE`.

    Leaving at once (``os._exit``) skips JAX's exit barrier, which would wait for the lost
    process up to the heartbeat timeout and then abort with a stack trace; the process's exit
    closes its connections, so the collectives of the other processes fail at once too.
    Checkpoints of finished epochs are on disk (on several processes each is committed before
    the next epoch starts).
    """
    try:
        yield
    except Exception as err:
        if not (enabled and is_multiprocess() and is_collective_failure(err)):
            raise
        print(f"error: process {jax.process_index()} of {jax.process_count()}: a collective "
              f"with the other processes failed ({one_line(err)}); another process probably "
              f"died or was stopped (see its log). Finished epochs' checkpoints are kept: "
              f"restart every process with --resume", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_COLLECTIVE_FAILURE)
