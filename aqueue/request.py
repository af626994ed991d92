"""The invocation a task is running: `Request`, and the context variables that carry it.

A worker sets `current_request` for each task it runs (lazily: a function that builds the
`Request` only if the task asks for it); `running_request()` reads it. Bound tasks see it as
`self.request`; logging uses it to name the task a record comes from.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Request", "current_request", "current_revocations", "running_request"]


@dataclass(frozen=True, slots=True)
class Request:
    """What a bound task (`bind=True`) sees of the invocation it is running: `self.request`."""

    id: str | None = None
    task: str = ""
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    hostname: str | None = None
    delivery_count: int = 0
    called_directly: bool = True


#: The request of the task running in this context (each worker task has its own context): a
#: `Request`, or a function that builds it, for the worker to build it only if the task asks.
current_request: contextvars.ContextVar[Request | Callable[[], Request] | None] = (
    contextvars.ContextVar("aqueue_request", default=None)
)


def running_request() -> Request | None:
    """Return the request of the task running in this context (None outside a worker)."""
    request = current_request.get()
    if request is None or isinstance(request, Request):
        return request
    built = request()
    current_request.set(built)  # the same object on every call; the worker resets the var
    return built


#: The task ids revoked on the worker running this context (set once per worker slot).
current_revocations: contextvars.ContextVar[Container[str]] = contextvars.ContextVar(
    "aqueue_revocations", default=frozenset()
)
