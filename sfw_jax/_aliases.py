"""The import paths of the modules that moved into the subpackages ``fw``, ``pruning`` and
``training``, kept working: ``import sfw_jax.config`` gives the module object of
``sfw_jax.training.config`` itself (one module under two names, so that patching either patches
both), and ``sfw_jax.config`` resolves on first attribute access.

``sfw_jax.sfw`` is not in the table: it names the :func:`sfw_jax.sfw` transformation.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

MOVED: dict[str, str] = {
    "sfw_jax.constraints": "sfw_jax.fw.constraints",
    "sfw_jax.constraint_schedule": "sfw_jax.fw.constraint_schedule",
    "sfw_jax.lmo": "sfw_jax.fw.lmo",
    "sfw_jax.nm": "sfw_jax.fw.nm",
    "sfw_jax.topk": "sfw_jax.fw.topk",
    "sfw_jax.native": "sfw_jax.fw.native",
    "sfw_jax.mask_summary": "sfw_jax.pruning.summary",
    "sfw_jax.batchnorm": "sfw_jax.pruning.batchnorm",
    "sfw_jax.weight_stats": "sfw_jax.pruning.weight_stats",
    "sfw_jax.config": "sfw_jax.training.config",
    "sfw_jax.models": "sfw_jax.training.models",
    "sfw_jax.datasets": "sfw_jax.training.datasets",
    "sfw_jax.data": "sfw_jax.training.datasets",
    "sfw_jax.augment": "sfw_jax.training.augment",
    "sfw_jax.schedules": "sfw_jax.training.schedules",
    "sfw_jax.checkpoint": "sfw_jax.training.checkpoint",
    "sfw_jax.distributed": "sfw_jax.training.distributed",
    "sfw_jax.optimizers": "sfw_jax.training.optimizers",
    "sfw_jax.sfw_init": "sfw_jax.training.sfw_init",
    "sfw_jax.train": "sfw_jax.training.loop",
}
"""Old module path -> new module path (submodules follow their package)."""


def target(fullname: str) -> str | None:
    """The new path of an old module path (or of a submodule of a moved package), else None."""
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old):]
    return None


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path first (before the path finder could load a second copy of a moved
    package's submodule) and loads it as the module at the new path."""

    def find_spec(self, fullname, path=None, target_module=None):
        if target(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(target(spec.name))

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at the new path is already executed."""


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
