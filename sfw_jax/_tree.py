"""Pytree helpers shared by constraints and pruning.

A *selector* picks leaves of a params pytree. It is either
  * ``None``: use the caller's default predicate,
  * a bool pytree with the same structure as ``params``, or
  * a predicate ``f(path, leaf) -> bool`` where ``path`` is a tuple of strings naming the
    leaf (dict keys, attribute names and sequence indices as strings), e.g.
    ``('params', 'Conv_0', 'kernel')``.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax

PyTree = Any
Predicate = Callable[[tuple, Any], bool]
Selector = Union[None, PyTree, Predicate]


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


def select_leaves(params: PyTree, selector: Selector, default: Predicate,
                  argname: str = "where") -> PyTree:
    """Bool pytree like ``params``: which leaves the selector picks.

    Raises ValueError naming ``argname`` if a bool pytree does not match ``params``.
    """
    if selector is None:
        selector = default
    if callable(selector):
        return jax.tree_util.tree_map_with_path(
            lambda p, x: bool(selector(path_names(p), x)), params)
    p_def = jax.tree.structure(params)
    s_def = jax.tree.structure(selector)
    if p_def != s_def:
        raise ValueError(
            f"{argname} must be a predicate (path, leaf) -> bool or a bool pytree with the "
            f"structure of params; got a tree with structure {s_def}, expected {p_def}")
    return jax.tree.map(bool, selector)


def check_same_structure(tree: PyTree, params: PyTree, argname: str,
                         is_leaf: Callable[[Any], bool] | None = None) -> None:
    """ValueError naming ``argname`` unless ``tree`` has the structure of ``params``."""
    p_def = jax.tree.structure(params)
    t_def = jax.tree.structure(tree, is_leaf=is_leaf)
    if p_def != t_def:
        raise ValueError(
            f"{argname} must be a pytree with the same structure as params; got {t_def}, "
            f"expected {p_def}")
