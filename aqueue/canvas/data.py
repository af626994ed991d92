"""Workflows read back from messages: plain data checked field by field, importing nothing.

What `Workflow.to_data` wrote comes back as the same tree of `Signature`, `Chain`, `Group`
and `Chord`. Task names stay names: the worker that runs a task is the one that looks it up,
among the tasks it registered. Anything else is refused with `InvalidWorkflow`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .chain import Chain
from .chord import Chord
from .group import Group
from .node import Workflow
from .signature import Signature

__all__ = ["InvalidWorkflow", "canvas_header", "from_data"]

#: The option names a signature may carry in a message, with the types of their values.
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "task_id": (str,),
    "countdown": (int, float),
    "eta": (int, float),
    "expires": (int, float),
    "queue": (str,),
    "priority": (int,),
    "headers": (dict,),
    "link": (list,),
    "link_error": (list,),
}


class InvalidWorkflow(ValueError):
    """Raised for workflow data (in a message) that is not what `to_data` writes."""


def from_data(data: Any) -> Workflow[Any]:
    """Rebuild a workflow from plain data; raise `InvalidWorkflow` saying what is wrong."""
    if not isinstance(data, Mapping):
        raise InvalidWorkflow(f"a workflow is a map, not a {type(data).__name__}")
    kind = data.get("t")
    if kind == "task":
        return _signature(data)
    if kind == "chain":
        return Chain(*(from_data(step) for step in _list(data, "steps")))
    if kind == "group":
        return Group((from_data(m) for m in _list(data, "tasks")), group_id=_id(data))
    if kind == "chord":
        header = [from_data(member) for member in _list(data, "header")]
        return Chord(header, from_data(data.get("body")), group_id=_id(data))
    raise InvalidWorkflow(f"unknown workflow kind {kind!r}")


def canvas_header(value: Any) -> dict[str, Any]:
    """Check the `canvas` header of a message (its callbacks and chord); return it."""
    if not isinstance(value, dict):
        raise InvalidWorkflow(f"the canvas header is a {type(value).__name__}, not a map")
    for name in ("link", "link_error"):
        for item in _list(value, name, required=False):
            from_data(item)
    if "chord" in value:
        _chord(value["chord"])
    parent = value.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise InvalidWorkflow("the canvas header's parent is not a task id")
    once = value.get("once")
    if once is not None and not (
        isinstance(once, dict)
        and isinstance(once.get("chord"), str)
        and isinstance(once.get("token"), str)
    ):
        raise InvalidWorkflow("the canvas header's once needs a chord id and a token")
    return value


def _signature(data: Mapping[str, Any]) -> Signature[Any]:
    task, args, kwargs = data.get("task"), data.get("args", []), data.get("kwargs", {})
    if not isinstance(task, str) or not task:
        raise InvalidWorkflow("a signature names no task")
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise InvalidWorkflow(f"signature of {task}: args must be a list and kwargs a map")
    if not all(isinstance(key, str) for key in kwargs):
        raise InvalidWorkflow(f"signature of {task}: a kwargs key is not a str")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise InvalidWorkflow(f"signature of {task}: options must be a map")
    checked: dict[str, Any] = {}
    for name, value in options.items():
        kinds = _OPTION_TYPES.get(name)
        if kinds is None or isinstance(value, bool) or not isinstance(value, kinds):
            raise InvalidWorkflow(f"signature of {task}: bad option {name!r}")
        if name in ("link", "link_error"):
            checked[name] = [from_data(item) for item in _list(options, name)]
        else:
            checked[name] = value
    chord = data.get("chord")
    if chord is not None:
        _chord(chord)
    immutable = data.get("immutable", False)
    if not isinstance(immutable, bool):
        raise InvalidWorkflow(f"signature of {task}: immutable must be a bool")
    return Signature(task, args, kwargs, checked, immutable=immutable, chord=chord)


def _chord(value: Any) -> None:
    if not (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and isinstance(value.get("size"), int)
        and not isinstance(value.get("size"), bool)
    ):
        raise InvalidWorkflow("a chord record needs an id and a size")
    from_data(value.get("body"))


def _id(data: Mapping[str, Any]) -> str | None:
    value = data.get("id")
    if value is not None and not isinstance(value, str):
        raise InvalidWorkflow("a group id must be a str")
    return value


def _list(data: Mapping[str, Any], name: str, *, required: bool = True) -> list[Any]:
    value = data.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidWorkflow(f"workflow field {name!r} must be a list")
    return list(value)
