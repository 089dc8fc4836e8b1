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
