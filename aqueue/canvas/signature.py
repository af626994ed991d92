"""`Signature`: one task call as data: `add.s(2, 2)`, `add.si(2, 2)`, `add.signature(...)`.

A signature names its task, holds arguments and call options, and is sent later, alone or as
a step of a chain, group or chord. In a chain, the previous step's result is put before its
arguments, unless it is immutable (`si`). `link=` / `link_error=` signatures are sent after the
task succeeds (with its result first) or fails (with its task id first).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar, Unpack

from ..exceptions import ConfigurationError
from ..interfaces import AppLike
from ..message import new_id
from ..options import ManySendOptions, SendOptions
from ..result import AsyncResult
from ..sending import Call
from ..sync import SyncResult
from .chain import Chain
from .node import Plan, Sendable, SignatureOptions, Workflow

__all__ = ["Signature", "SignatureOptions", "signature"]

R = TypeVar("R")
T = TypeVar("T")

#: The call options a signature keeps (`SendOptions`, and its callbacks).
OPTION_NAMES = frozenset(SendOptions.__optional_keys__) | {"link", "link_error"}
_SEND_OPTIONS = frozenset(ManySendOptions.__optional_keys__)


class Signature(Sendable[R, AsyncResult[R], SyncResult[R]]):
    """One task call: its task's name, arguments, call options, and whether it is immutable."""

    def __init__(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        app: AppLike | None = None,
        chord: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(app)
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = _checked_options(options or {})
        self.immutable = immutable
        #: Internal: set on the last task of each member of a chord's header.
        self.chord = dict(chord) if chord is not None else None

    def __repr__(self) -> str:
        arguments = [repr(arg) for arg in self.args]
        arguments += [f"{key}={value!r}" for key, value in self.kwargs.items()]
        return f"{self.task}({', '.join(arguments)}){'!' if self.immutable else ''}"

    @property
    def id(self) -> str | None:
        """The task id, once given (`freeze`, `set(task_id=...)`)."""
        task_id: str | None = self.options.get("task_id")
        return task_id

    def _copy(self, **changes: Any) -> Self:
        fields: dict[str, Any] = {
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "immutable": self.immutable,
            "app": self._app,
            "chord": self.chord,
        }
        fields.update(changes)
        return type(self)(**fields)

    def set(self, **options: Unpack[SignatureOptions]) -> Self:
        """Return a copy with these call options changed (`queue=`, `countdown=`, ...)."""
        return self._copy(options={**self.options, **_checked_options(options)})

    def set_immutable(self, immutable: bool) -> Self:
        """Return a copy that takes no previous result (True) or does (False)."""
        return self._copy(immutable=immutable)

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Self:
        """Return a copy, `args` before its own (unless immutable), `kwargs` merged in."""
        if self.immutable:
            return self._copy()
        return self._copy(args=(*args, *self.args), kwargs={**self.kwargs, **(kwargs or {})})

    def link(self, callback: Workflow[Any]) -> Self:
        """Return a copy that sends `callback` (with this task's result first) on success."""
        return self._copy(options={**self.options, "link": [*self._links("link"), callback]})

    def link_error(self, errback: Workflow[Any]) -> Self:
        """Return a copy that sends `errback` (with this task's id first) if the task fails."""
        links = [*self._links("link_error"), errback]
        return self._copy(options={**self.options, "link_error": links})

    def _links(self, name: str) -> list[Workflow[Any]]:
        return list(self.options.get(name) or ())

    def frozen(self) -> Self:
        """Return a copy with its id and its callbacks' ids given."""
        options = dict(self.options)
        options["task_id"] = options.get("task_id") or new_id()
        for name in ("link", "link_error"):
            if options.get(name):
                options[name] = [link.frozen() for link in options[name]]
        return self._copy(options=options)

    def to_data(self) -> dict[str, Any]:
        """Return the signature as plain data."""
        options: dict[str, Any] = {}
        for name, value in self.options.items():
            if value is None:
                continue
            if name in ("link", "link_error"):
                options[name] = [link.to_data() for link in value]
            elif isinstance(value, dt.datetime):
                options[name] = _timestamp(value)
            else:
                options[name] = value
        data: dict[str, Any] = {
            "t": "task",
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": options,
            "immutable": self.immutable,
        }
        if self.chord is not None:
            data["chord"] = self.chord
        return data

    def ids(self) -> list[str]:
        """Return its task id (once frozen)."""
        return [self.id] if self.id else []

    def handle(self, app: AppLike) -> AsyncResult[R]:
        """Return the result handle of the (frozen) task."""
        assert self.id is not None, "freeze the signature first"
        task = app.tasks.get(self.task)
        ignored = task.ignore_result if task is not None else False
        return AsyncResult(self.id, app, task_name=self.task, ignored=ignored)

    def __or__(self, other: Workflow[T]) -> Chain[T]:
        """Chain `a | b`: b gets a's result."""
        return Chain(self, other)

    async def _eager(self, app: AppLike, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Run a plain signature (no callbacks) here, as `task.apply()` does."""
        task: Any = app.tasks.get(self.task)
        if task is None or self.options.get("link") or self.options.get("link_error"):
            return await super()._eager(app, args, kwargs)
        call = self.clone(args, kwargs)
        return await task.apply(call.args, call.kwargs, task_id=self.id)

    def plan(self, plan: Plan, prev: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Add the task's message: its arguments, options and `canvas` header."""
        assert self.id is not None, "freeze the signature first"
        if self.immutable:
            args, merged = self.args, self.kwargs
        else:
            args, merged = (*prev, *self.args), {**self.kwargs, **kwargs}
        options: dict[str, Any] = {
            name: value
            for name, value in self.options.items()
            if name in _SEND_OPTIONS and value is not None
        }
        canvas: dict[str, Any] = {}
        for name in ("link", "link_error"):
            if self.options.get(name):
                canvas[name] = [link.to_data() for link in self.options[name]]
        if self.chord is not None:
            task = plan.app.tasks.get(self.task)
            if task is not None and task.ignore_result:
                raise ConfigurationError(
                    f"task {self.task} ignores its results, so it cannot be in a chord's "
                    "header (the callback gets the header's results)"
                )
            canvas["chord"] = self.chord
        if plan.parent is not None:
            canvas["parent"] = plan.parent
        if plan.once is not None:
            canvas["once"] = {"chord": plan.once, "token": new_id()}
        if canvas or plan.headers:
            options["headers"] = {**plan.headers, **(options.get("headers") or {})}
            if canvas:
                options["headers"]["canvas"] = canvas
        call_options: ManySendOptions = options  # type: ignore[assignment]
        plan.calls.append(Call(self.task, args, merged, self.id, call_options))

    def plan_then(
        self,
        plan: Plan,
        following: Workflow[Any],
        prev: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        """Plan the task with `following` as its callback."""
        self.link(following).plan(plan, prev, kwargs)

    def reference(self) -> Any:
        """Return its task id."""
        return self.id

    def with_chord(self, info: dict[str, Any]) -> Workflow[Any]:
        """Return a copy that records itself in chord `info`."""
        return self._copy(chord=info)

    def with_options(self, options: Mapping[str, Any]) -> Signature[R]:
        """Return a copy with these options set, callbacks added to its own."""
        checked = _checked_options(options)
        for name in ("link", "link_error"):
            if checked.get(name):
                checked[name] = [*self._links(name), *checked[name]]
        return self._copy(options={**self.options, **checked})

    def errbacks(self) -> Iterator[Workflow[Any]]:
        """Yield its `link_error` callbacks, and those of what follows it in a chain."""
        yield from self.options.get("link_error") or ()
        for link in self.options.get("link") or ():
            yield from link.errbacks()


def signature(
    task: str | Any,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    app: AppLike | None = None,
    immutable: bool = False,
    **options: Unpack[SignatureOptions],
) -> Signature[Any]:
    """Build a signature of a task by name (or of a task object): Celery's `signature()`."""
    if isinstance(task, str):
        return Signature(task, args or (), kwargs, options, immutable=immutable, app=app)
    made: Signature[Any] = task.signature(args, kwargs, immutable=immutable, **options)
    return made


def _checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    for name in options:
        if name not in OPTION_NAMES:
            raise TypeError(
                f"unknown signature option {name!r}; the options are "
                f"{', '.join(sorted(OPTION_NAMES))}"
            )
    checked = dict(options)
    for name in ("link", "link_error"):
        value = checked.get(name)
        if isinstance(value, Workflow):
            checked[name] = [value]
        elif value is not None:
            checked[name] = list(_workflows(value, name))
    return checked


def _workflows(values: Iterable[Any], name: str) -> Iterable[Workflow[Any]]:
    for value in values:
        if not isinstance(value, Workflow):
            raise TypeError(f"{name}= takes signatures (add.s(...)), not {type(value).__name__}")
        yield value


def _timestamp(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()
