"""Values read from YAML configs and `--task-arg` checked against the annotations of the dataclass
or task they configure, before any work: `seeds: 1` or `steps: two` is named at once, not found
as a TypeError after screening and collection have run."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union


PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}


def type_problem(value: Any, hint: Any) -> str | None:
    """None if `value` fits the annotation `hint`, else what it should be ("a list of int").
    YAML gives lists for tuples and ints for floats; an annotation it cannot read passes."""
    return None if _fits(value, hint) else _describe(hint)


def hints_of(obj) -> dict[str, Any]:
    """The resolved annotations of a dataclass or a function ({} if they cannot be resolved)."""
    try:
        return typing.get_type_hints(obj)
    except Exception:  # an annotation naming something not importable here: leave it unchecked
        return {}


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (origin is not tuple or len(args) == 2 and args[1] is Ellipsis) else Any
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return all(_fits(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if hint is type(None):
        return "null"
    if origin in (list, tuple, set, frozenset):
        return f"a list of {PLURAL.get(args[0]) or _describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if hint in (int, float):
        return f"a number ({hint.__name__})" if hint is float else "an integer"
    return getattr(hint, "__name__", str(hint))
