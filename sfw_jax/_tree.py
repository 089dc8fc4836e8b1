"""Pytree path helpers shared by the subpackages."""

from __future__ import annotations

from typing import Any, Callable

import jax

PyTree = Any


def key_name(key: Any) -> str:
    """String name of one jax key-path entry (DictKey, GetAttrKey, SequenceKey, ...)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_names(path: tuple) -> tuple[str, ...]:
    """Tuple of strings for a jax key path."""
    return tuple(key_name(k) for k in path)


def path_str(path: tuple) -> str:
    """'a/b/c' for a jax key path."""
    return "/".join(path_names(path))


def flat_paths(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None
               ) -> list[tuple[str, Any]]:
    """``[(path string, leaf)]`` of ``tree`` in ``jax.tree.leaves`` order."""
    return [(path_str(p), v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]]


def check_same_structure(tree: PyTree, params: PyTree, argname: str,
                         is_leaf: Callable[[Any], bool] | None = None) -> None:
    """ValueError naming ``argname`` unless ``tree`` has the structure of ``params``."""
    p_def = jax.tree.structure(params)
    t_def = jax.tree.structure(tree, is_leaf=is_leaf)
    if p_def != t_def:
        raise ValueError(
            f"{argname} must be a pytree with the same structure as params; got {t_def}, "
            f"expected {p_def}")
