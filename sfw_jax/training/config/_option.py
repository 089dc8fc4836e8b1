"""Declaring an option: a dataclass field whose metadata says how its value is checked, how the
command line spells it and how a run treats it.

:func:`option` is ``dataclasses.field`` with that metadata; :func:`check_options` checks every
field of a concern against its type hint and metadata. The checks follow the type hint: ``int``
(not bool) and ``float`` (finite, an int is accepted) within ``lo`` / ``hi``, ``str``, ``bool``,
a ``Mapping`` with str keys, each also None when the hint is ``X | None``; a field with
``choices`` must be one of them (a live registry is read at check time). A failed check raises
ValueError ``"<name> must be <what is allowed>, got <value>"``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import math
import types
import typing
from typing import Any, Mapping

_MISSING: Any = dataclasses.MISSING


def option(default: Any = _MISSING, *, help: str, default_factory: Any = _MISSING,
           choices: Any = None, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, allowed: str | None = None,
           flag: str | None = None, metavar: str | None = None,
           values: Mapping[str, Any] | None = None, sfw_only: bool = False,
           resume_may_differ: bool = False, per_process: bool = False) -> Any:
    """A dataclass field declaring one option.

    Args:
      default, default_factory: as for ``dataclasses.field``.
      help: what the option does (the ``--help`` text of its flag).
      choices: the allowed values (a tuple, or a registry mapping read live).
      lo, hi, lo_open, hi_open: the range of a number (bounds included unless open).
      allowed: the "must be ..." text of a failed range check, instead of the generated one.
      flag, metavar: the command-line flag (default ``--`` + the name with '-' for '_') and
        its metavar.
      values: command-line words and the value each sets (e.g. ``{"auto": None, "on": True}``).
      sfw_only: only meaningful with an optimizer of
        :data:`sfw_jax.training.optimizers.SFW_OPTIMIZERS` (the command line refuses the flag
        with another optimizer).
      resume_may_differ: how the run is executed, not what it computes: may change when a run
        is resumed (:func:`sfw_jax.training.run_folder.config_differences`).
      per_process: where a host keeps its files or what it shows: may differ between the
        processes of one multi-process run (:func:`sfw_jax.training.loop.check_processes_agree`).
    """
    metadata = {"help": help, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open,
                "hi_open": hi_open, "allowed": allowed, "flag": flag, "metavar": metavar,
                "values": values, "sfw_only": sfw_only, "resume_may_differ": resume_may_differ,
                "per_process": per_process}
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Option:
    """One declared option: its ``name``, its value type ``kind`` (the type hint without None,
    e.g. ``int``, ``Mapping``), whether None is allowed (``optional``), its ``default`` (None for a
    default factory) and ``metadata`` (see :func:`option`)."""

    name: str
    kind: Any
    optional: bool
    default: Any
    metadata: Mapping[str, Any]

    @property
    def is_mapping(self) -> bool:
        """Whether the value is a mapping (e.g. ``model_kwargs``)."""
        return isinstance(self.kind, type) and issubclass(self.kind, collections.abc.Mapping)

    def __getattr__(self, key: str) -> Any:
        """The metadata entries as attributes (``opt.help``, ``opt.sfw_only``, ...)."""
        try:
            return self.metadata[key]
        except KeyError:
            raise AttributeError(key) from None


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(the hint without None, whether None was in it)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(hint)):
            return args[0], True
    return hint, False


@functools.cache
def declared_options(cls: type) -> tuple[Option, ...]:
    """The :class:`Option` of every field of the dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional = _unwrap_optional(hints[f.name])
        kind = typing.get_origin(kind) or kind
        default = None if f.default is _MISSING else f.default
        out.append(Option(f.name, kind, optional, default, f.metadata))
    return tuple(out)


def bad(name: str, value: Any, allowed: str) -> ValueError:
    """The error of option ``name`` with ``value`` (raise it)."""
    return ValueError(f"{name} must be {allowed}, got {value!r}")


def _range_text(opt: Option) -> str:
    lo, hi = opt.lo, opt.hi
    if opt.kind is int:
        return f"an int >= {lo}"
    if opt.hi_open:
        return f"in {'(' if opt.lo_open else '['}{lo:g}, {hi:g})"
    text = "a finite number"
    if lo is not None:
        text += f" {'>' if opt.lo_open else '>='} {lo}"
    if hi is not None:
        text += f" and <= {hi}"
    return text


def _in_range(opt: Option, v: Any) -> bool:
    kinds = int if opt.kind is int else (int, float)
    if not isinstance(v, kinds) or isinstance(v, bool) or not math.isfinite(v):
        return False
    if opt.lo is not None and not (v > opt.lo if opt.lo_open else v >= opt.lo):
        return False
    return opt.hi is None or (v < opt.hi if opt.hi_open else v <= opt.hi)


def check_value(opt: Option, v: Any) -> None:
    """ValueError unless ``v`` is a valid value of ``opt`` (see the module docstring)."""
    if v is None and opt.optional:
        return
    none = " or None" if opt.optional else ""
    if opt.choices is not None:
        if v not in opt.choices:
            raise bad(opt.name, v, f"one of {list(opt.choices)}")
    elif opt.kind is bool:
        if not isinstance(v, bool):
            raise bad(opt.name, v, "None, True or False" if opt.optional else "True or False")
    elif opt.kind in (int, float):
        if not _in_range(opt, v):
            raise bad(opt.name, v, (opt.allowed or _range_text(opt)) + none)
    elif opt.kind is str:
        if not isinstance(v, str):
            raise bad(opt.name, v, "a string" + none)
    elif opt.is_mapping:
        if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
            raise bad(opt.name, v, "a dict with str keys" + none)


def check_options(concern: Any) -> None:
    """:func:`check_value` of every field of the dataclass instance ``concern``."""
    for opt in declared_options(type(concern)):
        check_value(opt, getattr(concern, opt.name))
