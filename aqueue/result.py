"""`AsyncResult`: the handle `delay()` returns, to ask a task's state and wait for its result.

What is stored, and how a failure is raised again, is `result_meta`'s: `get()` raises a builtin
exception type as itself and any other as a `TaskError` naming it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import anyio

from . import states
from .control import Control
from .exceptions import ResultsDisabled, ResultTimeout, TaskRevoked
from .result_meta import ResultMeta, rebuild_exception
from .signing import open_result

if TYPE_CHECKING:
    from .drivers.base import ResultBackend
    from .interfaces import AppLike

__all__ = ["AsyncResult", "TaskMeta"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskMeta:
    """What is known of a task at one moment: `await result.meta()`.

    `result` is the return value once SUCCESS, the exception once FAILURE or REVOKED (and, in
    RETRY, the error retried for), else None: Celery's `result` / `info`.
    """

    state: str
    result: Any = None
    traceback: str | None = None
    date_done: dt.datetime | None = None
    retries: int = 0


class AsyncResult(Generic[R]):
    """The state and the eventual return value of one task invocation."""

    def __init__(self, task_id: str, app: AppLike, *, task_name: str = "", ignored: bool = False):
        self.id = task_id
        self.app = app
        self.task_name = task_name
        self._ignored = ignored

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def _backend(self) -> ResultBackend:
        if self._ignored:
            raise ResultsDisabled(
                f"task {self.task_name} ignores its results (ignore_result=True or "
                "task_ignore_result); there is nothing to wait for"
            )
        backend = await self.app.result_backend()
        if backend is None:
            raise ResultsDisabled(
                "this app has no result backend (result_backend is disabled); "
                "set result_backend, or leave it unset to use the broker's own store"
            )
        return backend

    async def _meta(self) -> tuple[str, ResultMeta | None]:
        stored = await (await self._backend()).fetch(self.id)
        if stored is None:
            return states.PENDING, None
        return stored.state, ResultMeta.decode(open_result(self.app.conf, stored.payload))

    async def state(self) -> str:
        """Return the task's state: PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        return (await self._meta())[0]

    async def ready(self) -> bool:
        """Return whether the task has finished (succeeded, failed or was revoked)."""
        return await self.state() in states.READY_STATES

    async def successful(self) -> bool:
        """Return whether the task finished and succeeded."""
        return await self.state() == states.SUCCESS

    async def failed(self) -> bool:
        """Return whether the task finished with a failure."""
        return await self.state() == states.FAILURE

    async def meta(self) -> TaskMeta:
        """Return the state, result, traceback and finishing time together, in one lookup."""
        state, meta = await self._meta()
        if meta is None:
            return TaskMeta(state)
        result: Any = meta.result
        if state == states.REVOKED:
            result = self._revoked(meta)
        elif meta.exc_type is not None:
            result = rebuild_exception(meta)
        done = meta.date_done
        return TaskMeta(
            state,
            result,
            meta.traceback,
            dt.datetime.fromtimestamp(done, dt.UTC) if done is not None else None,
            meta.retries,
        )

    async def date_done(self) -> dt.datetime | None:
        """Return when the task finished (an aware UTC datetime), or None if it has not."""
        return (await self.meta()).date_done

    def _revoked(self, meta: ResultMeta) -> TaskRevoked:
        return TaskRevoked(
            f"task {meta.task or self.task_name}[{self.id}] was revoked: {meta.exc_message}"
        )

    async def traceback(self) -> str | None:
        """Return the formatted remote traceback of a failed task, or None."""
        _, meta = await self._meta()
        return meta.traceback if meta else None

    async def get(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - Celery's API is get(timeout=...)
        *,
        propagate: bool = True,
    ) -> R:
        """Wait for the task to finish and return its result.

        A failure is raised (or, with `propagate=False`, returned as the exception). Past
        `timeout` seconds, `ResultTimeout` (a `TimeoutError`) is raised; the task carries on.
        """
        backend = await self._backend()
        try:
            with anyio.fail_after(timeout):
                stored = await backend.wait(self.id)
        except TimeoutError:
            raise ResultTimeout(
                f"task {self.task_name or self.id} gave no result within {timeout} s; "
                "it may still be queued or running"
            ) from None
        meta = ResultMeta.decode(open_result(self.app.conf, stored.payload))
        if stored.state == states.SUCCESS:
            return cast(R, meta.result)
        if stored.state == states.REVOKED:
            error: Exception = self._revoked(meta)
        else:
            error = rebuild_exception(meta)
        if propagate:
            raise error
        return cast(R, error)

    async def revoke(self, *, terminate: bool = False) -> None:
        """Stop the task from running on any worker; with `terminate`, cancel it if it runs.

        A coroutine is cancelled; a `def` task's thread cannot be, so the worker stops waiting
        for it and its message is not run again (the function itself runs on to its end).
        """
        await Control(self.app).revoke(self.id, terminate=terminate, reply=False)

    async def forget(self) -> None:
        """Delete the stored result."""
        await (await self._backend()).forget(self.id)
