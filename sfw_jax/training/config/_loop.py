"""The loop options of a run: epochs, batches, seed, and its run folder and checkpoints."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from sfw_jax.training.config._option import bad, check_options, option


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How :func:`sfw_jax.training.loop.train` iterates, logs and checkpoints."""

    GROUP: ClassVar[str] = "loop and checkpoints"

    epochs: int = option(10, lo=1, help="training epochs", resume_may_differ=True)
    batch_size: int = option(128, lo=1, help="global training batch size")
    eval_batch_size: int = option(500, lo=1, help="evaluation batch size",
                                  resume_may_differ=True)
    seed: int = option(0, lo=0, help="seed of the init, the split, the shuffle and augmentation")
    out_dir: str | None = option(None, help="run folder (config.json, metrics.jsonl, "
                                 "checkpoints/); None: no files", resume_may_differ=True,
                                 per_process=True)
    resume: bool = option(False, help="continue from the latest checkpoint in out_dir",
                          resume_may_differ=True)
    keep_checkpoints: int = option(3, lo=0, help="epoch checkpoints kept (0: none)",
                                   resume_may_differ=True)
    log_every: int = option(20, lo=1, help="steps between host syncs (progress bar, "
                            "non-finite loss check)", resume_may_differ=True, per_process=True)
    progress: bool = option(True, help="progress bar on a terminal (a log gets one line per "
                            "epoch)", resume_may_differ=True, per_process=True)
    steps_per_call: int | None = option(
        None, lo=1, help="optimizer steps per jitted call (lax.scan over the batches, the same "
        "results as one step per call); None: the backend's default "
        "(sfw_jax.training.steps.STEPS_PER_CALL)", resume_may_differ=True)

    def validate(self) -> None:
        """ValueError naming the first invalid field."""
        check_options(self)
        if self.resume and self.out_dir is None:
            raise bad("resume", self.resume, "False when out_dir is None (nothing to resume "
                      "from)")
        if self.resume and self.keep_checkpoints == 0:
            raise bad("keep_checkpoints", 0, ">= 1 when resume=True")
