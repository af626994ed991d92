"""The options of tasks and of calls, each declared once.

`TaskOptions` are what `@app.task(...)` takes (`TaskOptionArgs` types its keywords);
`SendOptions` are what `apply_async`, `send_task` and `delay_many` take.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from .exceptions import ConfigurationError
from .throttle import parse_rate

__all__ = ["ManySendOptions", "SendOptions", "TaskOptionArgs", "TaskOptions"]


class ManySendOptions(TypedDict, total=False):
    """The call options shared by every invocation of a `send_many` / `delay_many`.

    `countdown` (seconds) or `eta` (an aware datetime, or a POSIX timestamp) delays the task;
    `expires` (seconds from now, or a datetime) drops it if no worker started it in time;
    `queue` and `priority` (0-9) override the task's and the routes'; `headers` travel with it.
    """

    countdown: float | None
    eta: dt.datetime | float | None
    expires: dt.datetime | float | None
    queue: str | None
    priority: int | None
    headers: Mapping[str, Any] | None


class SendOptions(ManySendOptions, total=False):
    """The call options of one invocation: `ManySendOptions`, and its own `task_id`."""

    task_id: str | None


class TaskOptionArgs(TypedDict, total=False):
    """The keyword options `@app.task(...)` takes (see `TaskOptions`)."""

    name: str
    ignore_result: bool
    queue: str
    priority: int
    max_retries: int | None
    default_retry_delay: float
    autoretry_for: tuple[type[Exception], ...]
    retry_backoff: bool | float
    retry_backoff_max: float
    retry_jitter: bool
    time_limit: float
    soft_time_limit: float
    rate_limit: str | float | None
    concurrency: int | None
    executor: Literal["auto", "thread", "process"]


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task options given to `@app.task(...)`; None means "use the app's setting".

    Retries (Celery's names): `max_retries` (3; None retries for ever), `default_retry_delay`
    (seconds, 180), `autoretry_for` (exception types that retry by themselves),
    `retry_backoff` (True, or a base in seconds: the delay doubles with each retry, up to
    `retry_backoff_max`, 600) and `retry_jitter` (True: a random delay up to the computed one).
    Time limits: `soft_time_limit` and `time_limit`, in seconds. Throttles: `rate_limit`
    ("10/m": across all workers where the app has Redis, else per worker) and `concurrency`
    (at most this many running at once, counted the same way).
    Executor: "auto" (an `async def` on the event loop, a `def` in a thread), "thread" (a `def`
    only), or "process" (a `def` in a child process of the worker's pool: for CPU-bound code,
    and code that must be killable at its hard `time_limit`).

    `task_annotations` (`{"tasks.add": {"rate_limit": "10/m"}, "*": {...}}`) override these
    for tasks by name, "*" for all, as in Celery.
    """

    name: str | None = None
    bind: bool = False
    ignore_result: bool | None = None
    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[Exception], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | float | None = None
    concurrency: int | None = None
    executor: Literal["auto", "thread", "process"] = "auto"

    def __post_init__(self) -> None:
        parse_rate(self.rate_limit)  # a malformed rate fails where it is written
        if self.executor not in ("auto", "thread", "process"):
            raise ConfigurationError(
                f"executor must be 'auto', 'thread' or 'process', not {self.executor!r}"
            )
        if self.concurrency is not None and (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 1
        ):
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1, not {self.concurrency!r}"
            )

    @classmethod
    def from_arguments(cls, **options: Any) -> TaskOptions:
        """Build options from keyword arguments; an unknown name names the closest one."""
        _check_names(options, "task option", identity=True)
        return cls(**options)

    def annotated(self, annotations: Any, name: str) -> TaskOptions:
        """Return these options with `task_annotations` for task `name` applied ("*" first)."""
        if not annotations:
            return self
        if not isinstance(annotations, Mapping):
            raise ConfigurationError("task_annotations must be a mapping of task names to options")
        changes: dict[str, Any] = {}
        for key in ("*", name):
            found = annotations.get(key) or {}
            _check_names(found, f"task_annotations[{key!r}] option")
            changes.update(found)
        return dataclasses.replace(self, **changes) if changes else self


def _check_names(options: Mapping[str, Any], what: str, *, identity: bool = False) -> None:
    # A task's name and binding are the decorator's to set, not an annotation's.
    known = TaskOptions.__dataclass_fields__
    for name in options:
        if name not in known or (not identity and name in ("name", "bind")):
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"unknown {what} {name!r}{hint}")
