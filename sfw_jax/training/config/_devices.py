"""The device options of a run: data parallelism and multi-host initialisation."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from sfw_jax.training.config._option import check_options, option


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    """The devices of the data-parallel mesh (:mod:`sfw_jax.training.distributed`). How a run
    is executed, not what it computes: every field may change on resume."""

    GROUP: ClassVar[str] = "devices"

    num_devices: int | None = option(None, lo=1, help="data-parallel over the first N local "
                                     "devices; None: all", resume_may_differ=True)
    distributed: bool = option(False, help="multi-host: call jax.distributed.initialize first",
                               resume_may_differ=True)
    coordinator_address: str | None = option(None, help="for jax.distributed.initialize; "
                                             "None: auto-detect", resume_may_differ=True,
                                             per_process=True)
    num_processes: int | None = option(None, lo=1, help="for jax.distributed.initialize; "
                                       "None: auto-detect", resume_may_differ=True)
    process_id: int | None = option(None, lo=0, help="for jax.distributed.initialize; "
                                    "None: auto-detect", resume_may_differ=True,
                                    per_process=True)

    def validate(self) -> None:
        """ValueError naming the first invalid field."""
        check_options(self)
        passed = (self.coordinator_address, self.num_processes, self.process_id)
        if not self.distributed and any(v is not None for v in passed):
            raise ValueError(
                "coordinator_address/num_processes/process_id are only used with "
                f"distributed=True; got distributed=False with coordinator_address="
                f"{self.coordinator_address!r}, num_processes={self.num_processes!r}, "
                f"process_id={self.process_id!r}")
