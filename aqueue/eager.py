"""Running a task here and now, as a worker would: `await add.apply((4, 4))`.

The task runs through the worker's own `Runner` on an in-process broker and result store of its
own: arguments and result round-trip through the codec, time limits hold, and retries run again
at once (their countdown is not waited for, as in Celery's eager mode). `task_always_eager`
makes `delay()` and `apply_async()` do the same.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio

from .drivers import create_backend, create_broker
from .drivers.base import Broker, Credit, DeadLetter, Delivery, ResultBackend
from .exceptions import ResultsDisabled
from .message import Envelope, OutgoingMessage, new_id
from .result import AsyncResult
from .worker.runner import Runner, WorkerApp

if TYPE_CHECKING:
    from .interfaces import AppLike, RunnableTask

__all__ = ["EagerResult", "apply"]

R = TypeVar("R")

_QUEUE = "eager"


class EagerResult(AsyncResult[R]):
    """The result of a task run by `apply()`: kept in this process, with `AsyncResult`'s API."""

    def __init__(
        self,
        task_id: str,
        app: AppLike,
        backend: ResultBackend,
        *,
        task_name: str = "",
        ignored: bool = False,
    ) -> None:
        super().__init__(task_id, app, task_name=task_name, ignored=ignored)
        self._store = backend

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    async def _backend(self) -> ResultBackend:
        if self._ignored:
            raise ResultsDisabled(
                f"task {self.task_name} ignores its results (ignore_result=True or "
                "task_ignore_result); apply() kept none"
            )
        return self._store

    async def revoke(self, *, terminate: bool = False) -> None:
        """Nothing to do: the task has run."""


class _Credit:
    async def wait(self) -> int:
        return 1


class _ImmediateRetries(Broker):
    """An in-process broker (the registry's `memory://`) on which retries are due at once."""

    def __init__(self, inner: Broker) -> None:
        super().__init__(inner.url, inner.options)
        self._inner = inner

    async def open(self) -> None:
        await self._inner.open()

    async def close(self) -> None:
        await self._inner.close()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        await self._inner.publish([dataclasses.replace(message, eta=None) for message in messages])

    def consume(
        self, queues: Sequence[str], credit: Credit, *, burst: bool = False
    ) -> AsyncGenerator[Delivery, None]:
        return self._inner.consume(queues, credit, burst=burst)

    async def purge(self, queue: str) -> int:
        return await self._inner.purge(queue)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return await self._inner.dead_letters(queue, limit)


async def apply(
    task: RunnableTask,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    task_id: str | None = None,
) -> EagerResult[Any]:
    """Run `task` with these arguments through a runner of its own; return its result."""
    app = cast(WorkerApp, task.app)
    task.check_arguments(args, kwargs)  # a call that cannot bind fails here, as a call would
    conf = app.conf
    broker = _ImmediateRetries(
        create_broker("memory://", {"max_deliveries": conf.broker_max_deliveries})
    )
    backend = create_backend("memory://", {})
    runner = Runner(
        app,
        broker,
        backend,
        hostname=f"eager@{socket.gethostname()}",
        threads=anyio.CapacityLimiter(1),
    )
    envelope = Envelope(task_id or new_id(), task.name, list(args), dict(kwargs))
    body = envelope.encode(conf.message_max_bytes)
    await broker.publish([OutgoingMessage(envelope.id, _QUEUE, body)])
    async for delivery in broker.consume([_QUEUE], _Credit(), burst=True):
        await runner.handle(delivery)
    return EagerResult(envelope.id, app, backend, task_name=task.name, ignored=task.ignore_result)
