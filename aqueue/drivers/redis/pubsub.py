"""The Redis driver's one pub/sub engine: result waiters, the mailbox and the semaphore use it.

A `PubSub` owns ONE pub/sub connection. Each `subscribe(channel)` context sends its own
`SUBSCRIBE` and is entered once Redis confirmed it, so everything published after that is
received; the channel is unsubscribed when the last local subscriber of it leaves: nothing is
left subscribed behind. The (UN)SUBSCRIBE commands of concurrent subscribers are coalesced, in
order, into few commands (`Batcher`).

There is no background task: one of the subscribers blocked on the connection reads for all of
them (the reader) and, when it leaves, hands the role over to another one still blocked. A
read that is cancelled loses nothing: the hiredis parser keeps what it has read so far.

A dropped connection is opened again by the reader (with backoff) and every channel subscribed
again (`generation` counts the connections); what was published while it was down is lost, as
with any pub/sub. `wait` (a result waiter) therefore looks its key up once its channel is
subscribed (subscribe, *then* read), again after every reconnection, so a result stored before
the wait began, or while the connection was down, is not missed.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError
from redis.utils import HIREDIS_AVAILABLE

from ...exceptions import BrokerError
from .client import Batcher, RedisSettings, broker_error

__all__ = ["PubSub", "Subscription"]

logger = logging.getLogger(__name__)

#: Messages a subscriber that does not read may fall behind by before new ones are dropped.
BUFFER = 1000
#: The longest pause between two attempts to open a lost pub/sub connection again.
MAX_BACKOFF = 2.0

_SUBSCRIBE = b"SUBSCRIBE"
_UNSUBSCRIBE = b"UNSUBSCRIBE"


class Subscription:
    """The messages of one channel, from the moment its `SUBSCRIBE` was confirmed.

    Iterate it (`async for data in subscription`) or `await receive()`; one task reads it.
    """

    __slots__ = ("_pubsub", "channel", "event", "left", "live", "messages")

    def __init__(self, pubsub: PubSub, channel: bytes) -> None:
        self._pubsub = pubsub
        self.channel = channel
        self.messages: deque[bytes] = deque()
        self.event = anyio.Event()
        self.live = False  # Redis confirmed this subscription (on the current connection)
        self.left = False  # its context was closed

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        if self.left:
            raise StopAsyncIteration
        return await self.receive()

    async def receive(self) -> bytes:
        """Return the next message, waiting for it."""
        if self.left:
            raise BrokerError("this subscription's context is closed")
        await self._pubsub.until(self, lambda: bool(self.messages))
        return self.messages.popleft()


class PubSub:
    """Channels subscribed on one pub/sub connection while a `subscribe` context needs them."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._conn: Connection | None = None
        self._lock = anyio.Lock()  # orders local state with the commands on the wire
        self._subs: dict[bytes, list[Subscription]] = {}
        # Per channel, for each (UN)SUBSCRIBE sent, the subscriptions its reply confirms.
        self._expect: dict[bytes, deque[list[Subscription]]] = {}
        self._sleepers: dict[Subscription, None] = {}  # blocked, in order: who reads next
        self._reading = False
        self._failures = 0
        self.generation = 0  # bumped on every (re)connection
        self._closed = False
        self._commands: Batcher[tuple[bytes, Subscription], None] = Batcher(self._send)

    @property
    def channels(self) -> int:
        """How many channels are subscribed (or being subscribed) now."""
        return len(self._subs)

    async def close(self) -> None:
        """Close the connection; subscribers get a `BrokerError`."""
        self._closed = True
        conn, self._conn = self._conn, None
        for subs in self._subs.values():
            for sub in subs:
                sub.event.set()
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.disconnect()

    @asynccontextmanager
    async def subscribe(self, channel: bytes) -> AsyncIterator[Subscription]:
        """Subscribe to `channel`; enter once Redis confirmed it; unsubscribe on the way out."""
        if self._closed:
            raise self._closed_error()
        sub = Subscription(self, channel)
        self._subs.setdefault(channel, []).append(sub)
        try:
            if self._conn is None and not self.generation:
                async with self._lock:  # never connected: errors go to this caller
                    if self._conn is None and not self.generation and not self._closed:
                        try:
                            await self._open()  # subscribes every channel, this one too
                        except (RedisError, OSError) as exc:
                            raise broker_error(self._settings, exc, "subscribing") from None
            else:
                await self._commands.submit((_SUBSCRIBE, sub))
            await self.until(sub, lambda: sub.live)
            yield sub
        finally:
            with anyio.CancelScope(shield=True):
                await self._leave(sub)

    async def wait(self, channel: bytes, lookup: Callable[[], Awaitable[bytes | None]]) -> bytes:
        """Return the first message on `channel`, or what `lookup` finds once subscribed."""
        async with self.subscribe(channel) as sub:
            while True:
                generation = self.generation
                if (found := await lookup()) is not None:
                    return found

                def notified_or_reconnected(since: int = generation) -> bool:
                    return bool(sub.messages) or self.generation != since

                await self.until(sub, notified_or_reconnected)
                if sub.messages:
                    return sub.messages.popleft()
                await self.until(sub, lambda: sub.live or bool(sub.messages))

    async def _leave(self, sub: Subscription) -> None:
        sub.left = True
        self._sleepers.pop(sub, None)
        subs = self._subs.get(sub.channel, [])
        if sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.channel]
                if self._conn is not None and not self._closed:
                    await self._commands.submit((_UNSUBSCRIBE, sub))
        if not self._reading:
            self._hand_over()

    def _closed_error(self) -> BrokerError:
        return BrokerError(f"the Redis pub/sub connection to {self._settings.url} is closed")

    async def until(self, sub: Subscription, done: Callable[[], bool]) -> None:
        """Return once `done()`; read for every subscriber meanwhile, unless another does."""
        while not done():
            if self._closed:
                raise self._closed_error()
            if not self._reading:
                self._reading = True
                try:
                    while not done() and not self._closed:
                        await self._read_one()
                finally:
                    self._reading = False
                    self._hand_over()
                continue
            if sub.event.is_set():
                sub.event = anyio.Event()  # everyone asleep on the old one was woken
            self._sleepers[sub] = None
            try:
                await sub.event.wait()
            finally:
                self._sleepers.pop(sub, None)

    def _hand_over(self) -> None:
        """Wake one blocked subscriber, so that it reads (or hands over) in turn."""
        for sub in self._sleepers:
            sub.event.set()
            return

    # -- the connection ---------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect and subscribe every channel (the lock is held)."""
        conn = self._settings.connection()
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.disconnect()
            raise
        if self._closed:  # closed while connecting
            with anyio.CancelScope(shield=True):
                await conn.disconnect()
            raise self._closed_error()
        self.generation += 1
        self._expect.clear()
        self._conn = conn
        for subs in self._subs.values():  # confirmed again on this connection
            for sub in subs:
                sub.live = False
                sub.event.set()
        if self._subs:
            await self._write(conn, _SUBSCRIBE, {ch: list(subs) for ch, subs in self._subs.items()})

    async def _connection(self) -> Connection:
        if self._closed:
            raise self._closed_error()
        if self._conn is None:
            async with self._lock:
                if self._conn is None:
                    await self._open()
        if self._conn is None:  # lost again while subscribing
            raise ConnectionError("the pub/sub connection was lost while subscribing")
        return self._conn

    async def _drop(self, conn: Connection) -> None:
        if self._conn is conn:
            self._conn = None
            self._expect.clear()
        with anyio.CancelScope(shield=True):
            await conn.disconnect()

    async def _write(
        self, conn: Connection, command: bytes, channels: dict[bytes, list[Subscription]]
    ) -> None:
        """Send a command (the lock is held); on failure, leave the reconnecting to the reader."""
        for channel, subs in channels.items():
            self._expect.setdefault(channel, deque()).append(subs)
        try:
            await conn.send_command(command, *channels, check_health=False)
        except (RedisError, OSError):
            await self._drop(conn)
        except BaseException:
            await self._drop(conn)  # half a command may have gone out
            raise

    async def _send(self, items: list[tuple[bytes, Subscription]]) -> list[None]:
        """Send queued (UN)SUBSCRIBE commands in order, runs of the same command merged."""
        async with self._lock:
            runs: list[tuple[bytes, dict[bytes, list[Subscription]]]] = []
            for command, sub in items:
                if command == _SUBSCRIBE and sub.left:
                    continue  # it left already
                if command == _UNSUBSCRIBE and sub.channel in self._subs:
                    continue  # subscribed again since
                if not runs or runs[-1][0] != command:
                    runs.append((command, {}))
                confirms = runs[-1][1].setdefault(sub.channel, [])
                if command == _SUBSCRIBE:
                    confirms.append(sub)
            for command, channels in runs:
                if self._conn is None:
                    break  # the reader connects again, and subscribes every channel
                await self._write(self._conn, command, channels)
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
            if self._closed:
                return
            self._failures += 1
            delay = min(MAX_BACKOFF, 0.05 * 2**self._failures)
            logger.warning(
                "%s; again in %.1fs", broker_error(self._settings, exc, "reading pub/sub"), delay
            )
            await anyio.sleep(delay)
            return
        self._failures = 0
        self._dispatch(reply)

    def _dispatch(self, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel = reply[0], reply[1]
        if kind == b"message":
            for sub in self._subs.get(channel, ()):
                if sub.live and len(sub.messages) < BUFFER:
                    sub.messages.append(reply[2])
                    sub.event.set()
        elif kind in (b"subscribe", b"unsubscribe"):
            expected = self._expect.get(channel)
            if expected:
                for sub in expected.popleft():
                    sub.live = True
                    sub.event.set()
                if not expected:
                    del self._expect[channel]
