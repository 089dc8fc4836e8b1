"""Constraint kinds by name: what :func:`sfw_jax.make_constraints` builds for ``kind=NAME``.

A kind maps a leaf to a constraint set. Its *builder* gets the leaf's shape, the per-model
options (:class:`BuildOptions`) and the set's size, either its radius (``mode='radius'``) or
its L2 diameter (``'diameter'`` and ``'initialization'`` modes), and returns the set, or None
when the kind does not apply to that leaf (the leaf then gets ``make_constraints``'s
``fallback``). A new set is one class (a subclass of :class:`sfw_jax.Constraint` with
``lmo``, ``radius``, ``gauge`` and ``diameter``; the performance hooks are optional) and one
registration::

    register_constraint("box", lambda shape, opts, radius, diameter:
                        Box(radius if diameter is None else diameter / 2))

after which ``make_constraints(params, "box", ...)`` and ``sfw`` use it.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Callable, Optional, Protocol


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """The options of :func:`sfw_jax.make_constraints` that builders read.

    k, k_frac: K = min(max(k, floor(k_frac n)), n) of the sets with a sparsity K.
    p: the order of kind 'lp'. method: the top-k path of the K-sparse and k-support LMOs.
    n, m, axis: the N:M pattern and its grouping axis of kind 'nm_sparse'.
    """

    k: int = 10
    k_frac: float = 0.05
    p: float = 2.0
    method: str = "auto"
    n: int = 2
    m: int = 4
    axis: int = -2


class Builder(Protocol):
    """``(shape, opts, radius, diameter) -> constraint or None``; exactly one of ``radius`` and
    ``diameter`` is a number, the other None."""

    def __call__(self, shape: tuple[int, ...], opts: BuildOptions, radius: Optional[float],
                 diameter: Optional[float]) -> Any: ...


@dataclasses.dataclass(frozen=True)
class ConstraintKind:
    """One registered kind.

    name: the ``kind`` string. build: the :class:`Builder`.
    check: validates the options this kind reads, returning them normalised (None: nothing).
    uses_k: the set's sparsity K comes from ``k`` / ``k_frac`` (a delayed LMO widens it to
      K = n; a schedule may move ``k_frac``).
    bounded: False for the kind whose sets are all of R^n (no radius, no LMO).
    """

    name: str
    build: Builder
    check: Optional[Callable[[BuildOptions], BuildOptions]] = None
    uses_k: bool = False
    bounded: bool = True


_REGISTRY: dict[str, ConstraintKind] = {}

KINDS = MappingProxyType(_REGISTRY)
"""The registered kinds by name (a read-only live view: ``'k_sparse' in KINDS``,
``tuple(KINDS)``)."""


def register_constraint(name: str, build: Builder, *,
                        check: Optional[Callable[[BuildOptions], BuildOptions]] = None,
                        uses_k: bool = False, bounded: bool = True) -> ConstraintKind:
    """Register the kind ``name`` (see the module docstring); ValueError if the name is taken
    or not a non-empty string. Returns the entry."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"constraint kind {name!r} is already registered")
    if not callable(build):
        raise ValueError(f"build must be callable (shape, opts, radius, diameter) -> "
                         f"constraint, got {build!r}")
    entry = ConstraintKind(name, build, check, bool(uses_k), bool(bounded))
    _REGISTRY[name] = entry
    return entry


def constraint_kind(name: str) -> ConstraintKind:
    """The entry of kind ``name``; ValueError listing the registered kinds otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"kind must be one of {tuple(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def k_kinds() -> tuple[str, ...]:
    """The registered kinds whose K comes from ``k`` / ``k_frac``."""
    return tuple(name for name, e in _REGISTRY.items() if e.uses_k)
