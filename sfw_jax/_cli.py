"""What every command line of the project shares: one-line errors and ``--debug``.

A user's error (a bad flag or value, missing or corrupt data, a folder that is not a run) is
printed as one line, ``PROG: error: MESSAGE``, with exit status 2 and no traceback; ``--debug``
re-raises it with its traceback. Other exceptions (bugs) keep their tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator, NoReturn

from sfw_jax.training.datasets._errors import DatasetUnavailableError

USER_ERRORS = (ValueError, OSError, DatasetUnavailableError)
"""What a user's input raises: bad values (ValueError, and DataFormatError, a ValueError),
missing or unreadable files and folders (OSError: FileNotFoundError, NotARunError, ...), a
dataset that cannot be obtained."""


DISTRIBUTED_FIELDS = ("distributed", "coordinator_address", "num_processes", "process_id")
"""The ``TrainConfig`` fields (and ``sfw-train`` flags) of a multi-process launch."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (no usage block), exit status 2;
    ``allow_abbrev=False`` by default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the traceback of a user's error instead of the one-line message."""
    parser.add_argument("--debug", action="store_true", default=False,
                        help="on an error, show the Python traceback")


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser, debug: bool = False) -> Iterator[None]:
    """Turn :data:`USER_ERRORS` raised inside into ``parser.error`` (one line, exit 2), unless
    ``debug``."""
    try:
        yield
    except USER_ERRORS as err:
        if debug:
            raise
        parser.error(one_line(err))


def one_process_message(prog: str, what: str) -> str:
    """The error of a one-process command given a multi-process option ``what``."""
    return (f"{what}: {prog} runs on one process (all the devices of this host); run it once, "
            f"without the distributed options (see docs/training.md)")


class _OneProcessOnly(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        parser.error(one_process_message(parser.prog, option_string))


def refuse_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Make the ``sfw-train`` multi-process flags (``--distributed``, ``--coordinator-address``,
    ``--num-processes``, ``--process-id``) a one-line error naming the flag: for the commands
    that run on one process."""
    for field in DISTRIBUTED_FIELDS:
        parser.add_argument("--" + field.replace("_", "-"), action=_OneProcessOnly,
                            nargs=0 if field == "distributed" else None, help=argparse.SUPPRESS)
