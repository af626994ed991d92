"""`AsyncResult`: the handle `delay()` returns, and what a stored result means.

A result is stored as data: the state, the return value or, for a failure, the exception's type
name, message and formatted traceback. `get()` raises a builtin exception type as itself (a
`TypeError` in the task is a `TypeError` here, carrying the remote traceback as a note); any
other type becomes a `TaskError` that carries the remote type's name. No type named in a result
is ever imported.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import anyio

from . import codec, states
from .exceptions import ResultsDisabled, ResultTimeout, TaskError, TaskRevoked

if TYPE_CHECKING:
    from .app import App
    from .drivers.base import ResultBackend

__all__ = [
    "MAX_MESSAGE_CHARS",
    "MAX_TRACEBACK_CHARS",
    "AsyncResult",
    "ResultMeta",
    "rebuild_exception",
    "truncate",
]

#: The longest exception message a failure keeps (its head and its tail; the middle is cut).
MAX_MESSAGE_CHARS = 8192
#: The longest formatted traceback a failure keeps, likewise.
MAX_TRACEBACK_CHARS = 32768

R = TypeVar("R")

#: Exception types `get()` re-raises as themselves: the builtin ones, and nothing else.
_BUILTIN_ERRORS: dict[str, type[Exception]] = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception) and not name.startswith("_")
}


@dataclass(frozen=True, slots=True)
class ResultMeta:
    """What a worker stores about a task, beside its state."""

    task: str = ""
    result: Any = None
    exc_type: str | None = None
    exc_message: str = ""
    traceback: str | None = None
    retries: int = 0
    date_done: float | None = None

    def encode(self) -> bytes:
        """Encode for a backend; a result the codec refuses raises `SerializationError`."""
        return codec.pack(
            {
                "task": self.task,
                "result": self.result,
                "exc_type": self.exc_type,
                "exc_message": self.exc_message,
                "traceback": self.traceback,
                "retries": self.retries,
                "date_done": self.date_done,
            },
            where="result",
        )

    @classmethod
    def decode(cls, payload: bytes) -> ResultMeta:
        """Decode what `encode` made."""
        data = codec.unpack(payload)
        if not isinstance(data, dict):
            raise ValueError(f"stored result is a msgpack {type(data).__name__}, not a map")
        return cls(**{key: data[key] for key in cls.__slots__ if key in data})

    @classmethod
    def failure(cls, task: str, exc: BaseException, traceback: str | None) -> ResultMeta:
        """Describe a failure as data (a `TaskError` keeps the remote type it carries)."""
        if isinstance(exc, TaskError):
            return cls(
                task=task,
                exc_type=exc.type_name,
                exc_message=truncate(exc.message, MAX_MESSAGE_CHARS),
                traceback=_cut_traceback(exc.remote_traceback or traceback),
                date_done=time.time(),
            )
        kind = type(exc)
        name = (
            kind.__name__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        return cls(
            task=task,
            exc_type=name,
            exc_message=truncate(_message_of(exc), MAX_MESSAGE_CHARS),
            traceback=_cut_traceback(traceback),
            date_done=time.time(),
        )


def truncate(text: str, limit: int) -> str:
    """Return `text`, or its head and tail around a note of how much was cut from the middle."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... [{len(text) - 2 * half:,} characters cut] ... {text[-half:]}"


def _cut_traceback(text: str | None) -> str | None:
    return None if text is None else truncate(text, MAX_TRACEBACK_CHARS)


def _message_of(exc: BaseException) -> str:
    # str(KeyError("k")) is "'k'": keep the argument itself, so the rebuilt error matches.
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


def rebuild_exception(meta: ResultMeta) -> Exception:
    """Turn a stored failure back into an exception to raise, importing nothing."""
    type_name = meta.exc_type or "Exception"
    cls = _BUILTIN_ERRORS.get(type_name)
    error: Exception | None = None
    if cls is not None:
        try:
            error = cls(meta.exc_message)
        except Exception:  # a builtin that wants other arguments (UnicodeDecodeError)
            error = None
    if error is None:
        error = TaskError(type_name, meta.exc_message, meta.traceback)
    if meta.traceback:
        error.add_note(f"Remote traceback (task {meta.task}):\n{meta.traceback.rstrip()}")
    return error


class AsyncResult(Generic[R]):
    """The state and the eventual return value of one task invocation."""

    def __init__(self, task_id: str, app: App, *, task_name: str = "", ignored: bool = False):
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
        return stored.state, ResultMeta.decode(stored.payload)

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
        meta = ResultMeta.decode(stored.payload)
        if stored.state == states.SUCCESS:
            return cast(R, meta.result)
        if stored.state == states.REVOKED:
            error: Exception = TaskRevoked(
                f"task {meta.task or self.task_name}[{self.id}] was revoked: {meta.exc_message}"
            )
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
        await self.app.control.revoke(self.id, terminate=terminate, reply=False)

    async def forget(self) -> None:
        """Delete the stored result."""
        await (await self._backend()).forget(self.id)
