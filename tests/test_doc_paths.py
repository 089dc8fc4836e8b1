"""Every dotted ``sfw_jax.`` path named in the repository's text exists.

The Python files (docstrings, comments, messages) and the Markdown files (README.md, docs/,
results/) tracked by git are scanned for ``sfw_jax.<module>.<name>``; each is resolved by
importing its longest importable module prefix and reading the rest as attributes. A moved or renamed module,
function or constant that a docstring or a doc still names fails here with the list of the
unresolved paths and where they occur.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = re.compile(r"(?<![\w/.])sfw_jax(?:\.[A-Za-z_]\w*)+")


def _text_files() -> list[str]:
    """The tracked ``.py`` and ``.md`` files (every such file outside hidden folders when the
    checkout has no git)."""
    try:
        out = subprocess.run(["git", "ls-files", "*.py", "*.md"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
        for folder, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            out += [os.path.relpath(os.path.join(folder, f), REPO) for f in files
                    if f.endswith((".py", ".md"))]
    return [f for f in out if os.path.isfile(os.path.join(REPO, f))]


def resolves(path: str) -> bool:
    """Whether ``path`` names a module or an attribute chain of one."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_resolves_module_attribute_and_missing_paths():
    assert resolves("sfw_jax.fw.topk") and resolves("sfw_jax.KSparsePolytope.lmo")
    assert resolves("sfw_jax.training.config.TrainConfig.replace")
    stale = "sfw_jax" + ".lmo.lp_ball_lmo"  # spelled so that the scan below does not find it
    assert not resolves(stale) and not resolves("sfw_jax" + ".fw.topk.nothing")
    text = "see ``sfw_jax" + ".fw.old``. And sfw_jax/fw/old.py, x.sfw_jax.y"
    assert PATH.findall(text) == ["sfw_jax" + ".fw.old"]


def test_every_dotted_sfw_jax_path_in_code_and_docs_resolves():
    files = _text_files()
    assert "README.md" in files and "sfw_jax/fw/_sfw.py" in files
    where: dict[str, list[str]] = {}
    for file in files:
        with open(os.path.join(REPO, file), encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                for path in PATH.findall(line):
                    where.setdefault(path, []).append(f"{file}:{n}")
    assert len(where) > 50
    unresolved = {p: w for p, w in sorted(where.items()) if not resolves(p)}
    assert not unresolved, "unresolved sfw_jax paths:\n" + "\n".join(
        f"  {p}  ({', '.join(w)})" for p, w in unresolved.items())
