"""One Redis pub/sub connection shared by every waiter of a result backend.

Each awaited task has its own channel, subscribed while at least one `wait` needs it and
unsubscribed when the last one leaves (its result came, or its caller gave up): nothing is left
subscribed behind. SUBSCRIBE and UNSUBSCRIBE commands of concurrent waiters are coalesced, in
order, into few commands (`Batcher`).

There is no background task: one of the waiters reads the connection for all of them (the
reader) and, when it leaves, hands the role over to another waiter still blocked. A read that
is cancelled loses nothing: the hiredis parser keeps what it has read so far.

A waiter learns its result from the notification, or by looking the key up once its channel is
subscribed (subscribe, *then* read), so a result stored before the wait began is not missed.
A dropped connection is opened again by the reader (with backoff), every channel subscribed
again, and every waiter looks its key up again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import anyio
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError
from redis.utils import HIREDIS_AVAILABLE

from ...exceptions import BrokerError
from .client import Batcher, RedisSettings, broker_error

__all__ = ["Subscriptions"]

logger = logging.getLogger(__name__)

MAX_BACKOFF = 2.0


class _Waiter:
    """The `wait` calls on one channel."""

    __slots__ = ("blocked", "count", "event", "subscribed", "value")

    def __init__(self) -> None:
        self.count = 0  # wait() calls on this channel
        self.blocked = 0  # of which are asleep on `event`
        self.event = anyio.Event()
        self.subscribed = False
        self.value: bytes | None = None


class Subscriptions:
    """Channels subscribed on one connection, for as long as someone waits on them."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._conn: Connection | None = None
        self._lock = anyio.Lock()
        self._waiters: dict[bytes, _Waiter] = {}
        self._blocked: dict[_Waiter, None] = {}  # waiters asleep, in order: who reads next
        self._inflight: dict[bytes, int] = {}  # commands sent per channel, not confirmed yet
        self._reading = False
        self._generation = 0  # bumped on every (re)connection
        self._failures = 0
        self._closed = False
        self._commands: Batcher[tuple[bytes, bytes], None] = Batcher(self._send)

    @property
    def channels(self) -> int:
        """How many channels someone waits on now."""
        return len(self._waiters)

    async def close(self) -> None:
        """Close the connection; waiters get a `BrokerError`."""
        self._closed = True
        conn, self._conn = self._conn, None
        for waiter in self._waiters.values():
            waiter.event.set()
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.disconnect()

    async def wait(self, channel: bytes, lookup: Callable[[], Awaitable[bytes | None]]) -> bytes:
        """Return the first message on `channel`, or what `lookup` finds once subscribed."""
        waiter = self._waiters.get(channel)
        if waiter is None:
            waiter = self._waiters[channel] = _Waiter()
        waiter.count += 1
        try:
            if waiter.count == 1:
                await self._commands.submit((b"SUBSCRIBE", channel))
            while waiter.value is None:
                generation = self._generation

                def notified_or_reconnected(since: int = generation) -> bool:
                    return waiter.value is not None or self._generation != since

                await self._until(waiter, lambda: waiter.subscribed or waiter.value is not None)
                if waiter.value is None and (found := await lookup()) is not None:
                    return found
                await self._until(waiter, notified_or_reconnected)
            return waiter.value
        finally:
            waiter.count -= 1
            if waiter.count == 0:
                del self._waiters[channel]
                self._blocked.pop(waiter, None)
                if not self._closed:
                    with anyio.CancelScope(shield=True):
                        await self._commands.submit((b"UNSUBSCRIBE", channel))
            if not self._reading:
                self._hand_over()

    async def _until(self, waiter: _Waiter, done: Callable[[], bool]) -> None:
        """Return once `done()`; read for everyone meanwhile, unless another waiter does."""
        while not done():
            if self._closed:
                raise BrokerError(f"the result backend at {self._settings.url} is closed")
            if not self._reading:
                self._reading = True
                try:
                    while not done() and not self._closed:
                        await self._read_one()
                finally:
                    self._reading = False
                    self._hand_over()
                continue
            if waiter.event.is_set():
                waiter.event = anyio.Event()  # everyone asleep on the old one was woken
            waiter.blocked += 1
            self._blocked[waiter] = None
            try:
                await waiter.event.wait()
            finally:
                waiter.blocked -= 1
                if not waiter.blocked:
                    self._blocked.pop(waiter, None)

    def _hand_over(self) -> None:
        """Wake one sleeping waiter, so that it reads (or hands over) in turn."""
        for waiter in self._blocked:
            waiter.event.set()
            return

    # -- the connection ---------------------------------------------------------------------

    async def _connection(self) -> Connection:
        if self._closed:
            raise BrokerError(f"the result backend at {self._settings.url} is closed")
        if self._conn is not None:
            return self._conn
        async with self._lock:
            if self._conn is None:
                conn = self._settings.connection()
                try:
                    await conn.connect()  # type: ignore[no-untyped-call]
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await conn.disconnect()
                    raise
                self._generation += 1
                self._inflight.clear()
                for waiter in self._waiters.values():
                    waiter.subscribed = False
                    waiter.event.set()
                self._conn = conn
                if self._waiters:
                    await self._write(conn, b"SUBSCRIBE", list(self._waiters))
            return self._conn

    async def _drop(self, conn: Connection) -> None:
        if self._conn is conn:
            self._conn = None
        with anyio.CancelScope(shield=True):
            await conn.disconnect()

    async def _write(self, conn: Connection, command: bytes, channels: list[bytes]) -> None:
        for channel in channels:
            self._inflight[channel] = self._inflight.get(channel, 0) + 1
        await conn.send_command(command, *channels, check_health=False)

    async def _send(self, items: list[tuple[bytes, bytes]]) -> list[None]:
        """Send queued (UN)SUBSCRIBE commands in order, runs of the same command merged."""
        try:
            conn = await self._connection()
        except (RedisError, OSError):
            return [None] * len(items)  # the reader connects, and subscribes every channel
        runs: list[tuple[bytes, list[bytes]]] = []
        for command, channel in items:
            if command == b"SUBSCRIBE" and channel not in self._waiters:
                continue  # its waiter left already
            if runs and runs[-1][0] == command:
                runs[-1][1].append(channel)
            else:
                runs.append((command, [channel]))
        try:
            for command, channels in runs:
                await self._write(conn, command, channels)
        except (RedisError, OSError):
            await self._drop(conn)
        return [None] * len(items)

    async def _read_one(self) -> None:
        """Read and dispatch one reply; on a lost connection, back off and open it again."""
        try:
            conn = await self._connection()
            try:
                reply = await conn.read_response(
                    timeout=math.inf, disconnect_on_error=False, push_request=True
                )
            except BaseException:
                if not HIREDIS_AVAILABLE:  # the pure-Python parser may be mid-reply: start over
                    await self._drop(conn)
                raise
        except (RedisError, OSError) as exc:
            if self._conn is not None:
                await self._drop(self._conn)
            if self._generation == 0:  # never connected: Redis is unreachable, say so
                raise broker_error(self._settings, exc, "waiting for a result") from None
            self._failures += 1
            delay = min(MAX_BACKOFF, 0.05 * 2**self._failures)
            logger.warning(
                "%s; again in %.1fs", broker_error(self._settings, exc, "waiting"), delay
            )
            await anyio.sleep(delay)
            return
        self._failures = 0
        self._dispatch(reply)

    def _dispatch(self, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel, data = reply[0], reply[1], reply[2]
        waiter = self._waiters.get(channel)
        if kind == b"message":
            if waiter is not None and waiter.value is None:
                waiter.value = data
                waiter.event.set()
            return
        if kind not in (b"subscribe", b"unsubscribe"):
            return
        left = self._inflight.get(channel, 0) - 1
        if left > 0:
            self._inflight[channel] = left
            return
        self._inflight.pop(channel, None)
        if waiter is not None and not waiter.subscribed:
            waiter.subscribed = True
            waiter.event.set()
