"""The public API is what ``sfw_jax`` and its public packages export; everything else is private.

A module is public when no part of its dotted path starts with ``_``. Every public module lists
its API in ``__all__``: each public name it defines (function, class, assignment) is listed, each
listed name exists, and a public module that is not a package is listed in its package's
``__all__`` (a namespace of that package; otherwise it would be a public path nobody exports).
An object is exported under one path (only ``sfw_jax`` also re-exports the common pruning
names); a constant is defined in one module and imported elsewhere (no name is assigned the
same value in two modules, e.g. ``PyTree = Any``); no function in ``sfw_jax`` has over 100
lines.
"""

from __future__ import annotations

import ast
import collections
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "sfw_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
PUBLIC = [m for m in FILES if not any(part.startswith("_") for part in m.split("."))]


def _assignments(node: ast.stmt) -> list[tuple[str, str]]:
    """(name, source of its value) of each name a top-level statement assigns."""
    if isinstance(node, ast.Assign):
        targets, value = node.targets, node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        targets, value = [node.target], node.value
    else:
        return []
    out = []
    for t in targets:
        if isinstance(t, ast.Tuple) and isinstance(value, ast.Tuple):
            out += [(e.id, ast.unparse(v)) for e, v in zip(t.elts, value.elts)
                    if isinstance(e, ast.Name)]
        elif isinstance(t, ast.Name):
            out.append((t.id, ast.unparse(value)))
    return out


def _assigned(node: ast.stmt) -> list[str]:
    targets = (node.targets if isinstance(node, ast.Assign)
               else [node.target] if isinstance(node, ast.AnnAssign) else [])
    names = []
    for t in targets:
        names += [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t])
                  if isinstance(e, ast.Name)]
    return names


def _exported(module, name: str):
    """``module.name``, importing the submodule ``name`` of a package first if it is one."""
    if not hasattr(module, name) and f"{module.__name__}.{name}" in FILES:
        importlib.import_module(f"{module.__name__}.{name}")
    return getattr(module, name)


def _defined(path: pathlib.Path) -> list[str]:
    """The names a module defines at its top level (not the ones it imports)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        names += _assigned(node)
    return names


def test_the_rule_sees_the_packages():
    assert {"sfw_jax", "sfw_jax.fw", "sfw_jax.pruning", "sfw_jax.training",
            "sfw_jax.training.config", "sfw_jax.training.loop"} <= set(PUBLIC)
    assert "sfw_jax.training.datasets._loader" in FILES


@pytest.mark.parametrize("name", PUBLIC)
def test_a_public_module_lists_its_api(name):
    module = importlib.import_module(name)
    listed = getattr(module, "__all__", None)
    assert listed is not None, f"{name} has no __all__"
    missing = [n for n in listed if not hasattr(module, n)
               and f"{name}.{n}" not in FILES]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"
    unlisted = [n for n in _defined(FILES[name]) if not n.startswith("_") and n not in listed]
    assert not unlisted, (f"{name} defines public names that are not in its __all__ (export "
                          f"them or make them private): {unlisted}")
    if "." in name and not FILES[name].name == "__init__.py":
        package, short = name.rsplit(".", 1)
        assert short in importlib.import_module(package).__all__, (
            f"{name} is a public module that {package}.__all__ does not list: export it as a "
            f"namespace or make it private")


def test_a_constant_is_defined_once():
    where = collections.defaultdict(list)
    for name, path in FILES.items():
        for n in ast.parse(path.read_text()).body:
            for target, value in _assignments(n):
                if target != "__all__":
                    where[(target.lstrip("_"), value)].append(name)
    twice = {f"{n} = {v}": ms for (n, v), ms in where.items() if len(ms) > 1}
    assert not twice, f"defined in several modules (define once, import): {twice}"


def test_an_object_is_exported_under_one_path():
    paths = collections.defaultdict(list)
    for name in PUBLIC:
        module = importlib.import_module(name)
        for n in module.__all__:
            obj = _exported(module, n)
            if not isinstance(obj, (str, int, float, tuple)):  # values are equal, not the same
                paths[id(obj)].append(f"{name}.{n}")
    twice = [ps for ps in paths.values() if len(ps) > 1
             and {p.rsplit(".", 1)[0] for p in ps} != {"sfw_jax", "sfw_jax.pruning"}]
    assert not twice, f"exported under several paths (export once): {twice}"


def test_no_function_over_100_lines():
    long = []
    for name, path in FILES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long
