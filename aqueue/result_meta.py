"""What a worker stores about a task beside its state, and how a stored failure is raised again.

A failure is kept as data: the exception's type name, its message and the formatted traceback.
`rebuild_exception` gives a builtin type back as itself (a `TypeError` in the task is a
`TypeError` for the caller) and any other type as a `TaskError` naming it: no type named in a
result is ever imported.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass
from typing import Any

from . import codec
from .exceptions import TaskError
from .formats import Packer, unpack_any

__all__ = [
    "MAX_MESSAGE_CHARS",
    "MAX_TRACEBACK_CHARS",
    "ResultMeta",
    "rebuild_exception",
    "truncate",
]

#: The longest exception message a failure keeps (its head and its tail; the middle is cut).
MAX_MESSAGE_CHARS = 8192
#: The longest formatted traceback a failure keeps, likewise.
MAX_TRACEBACK_CHARS = 32768

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

    def encode(self, pack: Packer = codec.pack) -> bytes:
        """Encode for a backend; a result the codec refuses raises `SerializationError`."""
        return pack(
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
        """Decode what `encode` made, in either format (msgpack or JSON)."""
        data = codec.unpack(payload) if payload[:1] != b"{" else unpack_any(payload)
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
