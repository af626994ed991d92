"""`rpc://`: results sent back as AMQP messages to the process that sent the task.

The default result backend of a RabbitMQ broker, as in Celery. Each process that opens it
declares an exclusive, auto-delete reply queue (`<prefix>aqueue.reply.<uuid>`) on the broker's
RabbitMQ and names it in the `reply_to` header of every task message it sends. The worker
publishes each state of the task (STARTED, SUCCESS, FAILURE...) to that queue, correlated by
task id; one consumer per process receives them all and keeps them in memory, where `wait`
finds them: waiters sleep on an event per task id, nothing polls.

Its limits, the same as Celery's rpc backend:

- Only the process that sent a task sees its result. `app.AsyncResult(task_id)` in another
  process stays PENDING, and its `get()` waits until its timeout.
- Results live in the memory of that process, until `forget()` or `result_expires` (lower
  `result_expires` for a long-running producer that never reads its results). They are not
  persistent: a result published while the producer is disconnected or gone is dropped, and so
  is one whose task was sent by a process without this backend (no `reply_to`).
- Workers need the same broker: the reply queue lives there.

The RabbitMQ connection comes from the `broker_url` option (the app passes its broker URL);
its `prefix` and connection settings apply. A bare `rpc://` without it uses
`AQUEUE_BROKER_URL`, then `AQUEUE_TEST_AMQP_URL`, then `amqp://guest:guest@localhost//`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any, cast

import aiormq
import anyio
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from ...exceptions import BrokerError
from ...urls import scheme_of
from ..base import ResultBackend, StoredResult
from ..local import LocalResults
from .connection import AMQP_ERRORS, Link, amqp_errors, parse_amqp_url

__all__ = ["RPCBackend"]

logger = logging.getLogger("aqueue.amqp")

_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
#: How long sending a result may take, a reconnect included, before it fails.
RECONNECT_FOR = 10.0


def _broker_url(options: Mapping[str, Any]) -> str:
    candidates = [
        options.get("broker_url"),
        os.environ.get("AQUEUE_BROKER_URL"),
        os.environ.get("AQUEUE_TEST_AMQP_URL"),
    ]
    for url in candidates:
        if isinstance(url, str) and "://" in url and scheme_of(url) in _AMQP_SCHEMES:
            return url
    return "amqp://guest:guest@localhost//"


class RPCBackend(ResultBackend):
    """Results returned over RabbitMQ to the sending process: `backend="rpc://"`."""

    shared = False  # a worker cannot read what another one sent

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.settings = parse_amqp_url(_broker_url(options), options)
        self.link = Link(self.settings, "results")
        #: This process's reply queue, named in every task message it sends.
        self.reply_queue = f"{self.settings.prefix}aqueue.reply.{uuid.uuid4().hex}"
        self._local = LocalResults()
        self._consumer: AbstractChannel | None = None
        self._publisher: AbstractChannel | None = None
        self._publisher_lock = anyio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._listening = anyio.Event()

    def __repr__(self) -> str:
        return f"<RPCBackend {self.settings.display} reply_to={self.reply_queue}>"

    async def open(self) -> None:
        """Connect, declare the reply queue and start consuming it."""
        if self._supervisor is not None:
            return
        await self.link.open()
        try:
            await self._listen()
        except BaseException:
            await self.link.close()
            raise
        # The consumer must outlive the task that opened the backend (App.open), so it is
        # watched by a task of its own, cancelled and awaited by close().
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        """Stop consuming and disconnect; the reply queue goes away with the connection."""
        supervisor, self._supervisor = self._supervisor, None
        with anyio.CancelScope(shield=True):
            if supervisor is not None:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
            self._consumer = self._publisher = None
            await self.link.close()

    def message_headers(self) -> Mapping[str, Any]:
        """Name this process's reply queue in every message the app sends."""
        return {"reply_to": self.reply_queue}

    # -- the reply queue ----------------------------------------------------------------------

    async def _listen(self) -> None:
        channel = await self.link.channel(confirms=False)
        async with amqp_errors(self.settings, "consume the result queue"):
            await channel.queue_declare(self.reply_queue, exclusive=True, auto_delete=True)
            await channel.basic_consume(self.reply_queue, self._on_result, no_ack=True)
        self._consumer = channel
        self._listening.set()

    async def listening(self) -> None:
        """Return once the reply queue is consumed: at once, but while reconnecting."""
        while True:
            consumer = self._consumer
            if consumer is not None and not consumer.is_closed:
                return
            if self._listening.is_set():
                self._listening = anyio.Event()
            await self._listening.wait()

    async def _supervise(self) -> None:
        """Consume again on a new connection whenever the reply queue's channel closes."""
        while True:
            assert self._consumer is not None
            # However it ends (closed, failed, cancelled by aiormq): wait, do not raise.
            await asyncio.wait({self._consumer.closing})
            if self.link.closed:
                return
            logger.warning(
                "lost the result queue %s; results sent meanwhile are dropped", self.reply_queue
            )
            while True:
                try:
                    await self._listen()
                    break
                except BrokerError:
                    if self.link.closed:
                        return
                    await anyio.sleep(1.0)  # RabbitMQ is up but refused: try again later

    async def _on_result(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        headers = properties.headers or {}
        ttl = headers.get("ttl-ms")
        if properties.correlation_id and properties.message_type:
            seconds = ttl / 1000 if isinstance(ttl, int) else 86400.0
            self._local.keep(
                properties.correlation_id, properties.message_type, message.body, seconds
            )

    # -- the interface ------------------------------------------------------------------------

    async def store(
        self,
        task_id: str,
        state: str,
        payload: bytes,
        ttl: float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Send the state to the reply queue named in the task's headers (none: drop it)."""
        reply_to = (headers or {}).get("reply_to")
        if not isinstance(reply_to, str) or not reply_to:
            logger.debug("task %s has no reply_to: its %s result is dropped", task_id, state)
            return
        if reply_to == self.reply_queue:  # sent by this very process: no round trip
            self._local.keep(task_id, state, payload, ttl)
            return
        properties = spec.Basic.Properties(
            correlation_id=task_id,
            message_type=state,
            headers={"ttl-ms": round(ttl * 1000)},  # AMQP floats are 32-bit
            delivery_mode=1,
            expiration=str(max(int(ttl * 1000), 1)),
        )
        try:
            with anyio.fail_after(RECONNECT_FOR):
                try:
                    await self._publish(reply_to, payload, properties)
                except BrokerError:  # the connection dropped: once more, on a new one
                    await self._publish(reply_to, payload, properties)
        except TimeoutError:
            raise BrokerError(
                f"could not send a result to {self.settings.display} within {RECONNECT_FOR} s"
            ) from None

    async def _publish(self, queue: str, payload: bytes, properties: spec.Basic.Properties) -> None:
        async with self._publisher_lock:
            if self._publisher is None or self._publisher.is_closed:
                self._publisher = await self.link.channel(confirms=True)
            channel = cast(aiormq.Channel, self._publisher)
        async with amqp_errors(self.settings, "send a result"):
            try:
                await channel.basic_publish(
                    payload, routing_key=queue, properties=properties, wait=False
                )
            except AMQP_ERRORS:
                self._publisher = None
                raise

    async def fetch(self, task_id: str) -> StoredResult | None:
        """Return what this process received for the task, unless it expired."""
        return self._local.get(task_id)

    async def wait(self, task_id: str) -> StoredResult:
        """Wait until the reply queue brings a ready state for the task."""
        return await self._local.wait(task_id)

    async def forget(self, task_id: str) -> None:
        """Drop what this process holds for the task."""
        self._local.forget(task_id)
