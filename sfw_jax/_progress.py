"""Progress bars on a terminal only: a log file gets no carriage-return frames."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def on_terminal() -> bool:
    """Whether stderr (where the bars go) is a terminal, or a Jupyter kernel (where
    ``tqdm.auto`` draws widgets, not frames)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def progress_bar(total: int, desc: str, *, enabled: bool = True, **kw: Any) -> tqdm:
    """A tqdm bar on stderr, disabled unless ``enabled`` and stderr is a terminal."""
    return tqdm(total=total, desc=desc, disable=not (enabled and on_terminal()),
                file=sys.stderr, **kw)


def write_line(text: str) -> None:
    """Print one line to stdout without breaking an active bar."""
    tqdm.write(text, file=sys.stdout)
