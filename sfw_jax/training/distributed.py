"""Data parallelism with ``jax.sharding``: a 1-D device mesh with axis ``'data'``.

Batches are sharded along their leading axis (``P('data')``: each of the ``n`` devices holds
``batch_size / n`` examples); parameters, optimizer state and the on-device dataset are
replicated (``P()``). Under ``jax.jit`` a mean over the (sharded) batch axis is a global mean,
so gradients and BatchNorm batch statistics are those of the whole global batch, exactly as on
one device; XLA inserts the all-reduces.

Multi-host: :func:`initialize_distributed` calls ``jax.distributed.initialize`` (before any other
JAX call); afterwards ``jax.devices()`` lists every process's devices and the same code runs on
all hosts, each host computing the same (seeded) batch indices.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS", "initialize_distributed", "select_devices", "make_mesh", "data_sharding",
    "replicated", "check_batch_divisible", "replicate", "shard_batch",
]


DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` (None arguments are auto-detected by JAX on clusters)."""
    kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address,
                                    num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)


def select_devices(num_devices: int | None = None) -> list[jax.Device]:
    """The first ``num_devices`` of ``jax.devices()`` (all when None)."""
    devices = jax.devices()
    if num_devices is None:
        return list(devices)
    if not isinstance(num_devices, int) or not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices must be an int in [1, {len(devices)}] (the devices JAX sees: "
            f"{len(devices)} x {devices[0].platform}), got {num_devices!r}")
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


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` placed replicated on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """``tree`` of arrays with a leading batch axis, sharded over ``'data'``."""
    return jax.device_put(tree, data_sharding(mesh))
