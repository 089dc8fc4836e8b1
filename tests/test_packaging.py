"""The packaging's promises that need no build: the tested floors are the declared ones, the
version is defined once, the licence is the unmodified Apache-2.0 text, the changelog has the
version. (The wheel itself: ``tests/test_wheel.py``; the floors installed and run: ``.ci/floors``.)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

import sfw_jax

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_FLOORS = {"build", "tensorflow-datasets"}     # not installed by .ci/floors
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def requirement_lines(name: str) -> list[Requirement]:
    """The requirements of one requirement file, ``-r`` includes followed."""
    out = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out += requirement_lines(line[3:].strip())
        elif line:
            out.append(Requirement(line))
    return out


def _only(req: Requirement, op: str) -> str:
    (spec,) = req.specifier                  # one bound a line: the floor (>=) or the pin (==)
    assert spec.operator == op, f"{req}: expected one {op!r} bound"
    return spec.version


def test_floors_pin_exactly_the_declared_floors():
    declared = {r.name.lower(): _only(r, ">=") for r in requirement_lines("requirements-dev.txt")
                if r.name.lower() not in NOT_IN_FLOORS}
    pinned = {r.name.lower(): _only(r, "==") for r in requirement_lines("requirements-floors.txt")}
    assert pinned == declared
    assert {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"} <= set(pinned)


def test_version_is_defined_once_and_is_the_metadata():
    assert re.fullmatch(r"\d+\.\d+\.\d+", sfw_jax.__version__)
    assert importlib.metadata.version("sfw-jax") == sfw_jax.__version__
    init = (ROOT / "sfw_jax" / "__init__.py").read_text()
    assert init.count(sfw_jax.__version__) == 1          # the one definition
    assert sfw_jax.__version__ not in (ROOT / "pyproject.toml").read_text()


def test_licence_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256      # unmodified
    assert b"Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


def test_changelog_describes_this_version():
    assert re.search(rf"^## {re.escape(sfw_jax.__version__)}$",
                     (ROOT / "CHANGELOG.md").read_text(), re.M)
