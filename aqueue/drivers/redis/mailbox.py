"""The mailbox of the Redis driver: topics over pub/sub, settings in a hash; and its channels.

**Topics.** `publish(topic, data)` is a `PUBLISH` on the channel `<prefix>:mailbox:<topic>`.
Every subscription of one broker shares ONE pub/sub connection (`Channels`, also used by the
Redis semaphore's wake-ups): each `subscribe` context sends its own `SUBSCRIBE` and is entered
once Redis confirmed it, so everything published after that is received; the channel is
unsubscribed when the last local subscriber of it leaves. There is no background task: one of
the subscribers blocked on the connection reads for all of them and hands the role over when
it leaves (as `aqueue.drivers.redis.pubsub` does for result waiters). A dropped connection is opened
again (with backoff) and every channel subscribed again; what was published while it was down
is lost, as with any pub/sub.

**Settings.** Redis 7.0 has no expiry per hash field, so it is emulated: the values are the
hash `<prefix>:{settings}` (field: the setting's key) and the expiry times the sorted set
`<prefix>:{settings}:expires` (score: Redis time in ms); only settings with a ttl are in it.
`items` first deletes every expired setting, then returns those under the prefix, all in one
script against Redis' clock; `put` deletes up to 100 expired settings on its way. `items`
reads the whole hash: settings are meant to be few (rate limits, revocations).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError
from redis.utils import HIREDIS_AVAILABLE

from ...exceptions import BrokerError
from ..base import Mailbox
from .client import RedisSettings, Script, broker_error, redis_errors

__all__ = ["Channels", "RedisMailbox", "Subscription"]

logger = logging.getLogger(__name__)

#: Messages a subscriber that does not read may fall behind by before new ones are dropped.
BUFFER = 1000
#: The longest pause between two attempts to open a lost pub/sub connection again.
MAX_BACKOFF = 2.0

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function forget(values, expires, names)
  for i = 1, #names, 1000 do
    local chunk = {unpack(names, i, math.min(i + 999, #names))}
    redis.call('HDEL', values, unpack(chunk))
    redis.call('ZREM', expires, unpack(chunk))
  end
end
"""

#: KEYS: values, expires. ARGV: key, value, ttl in ms ('' for good).
_PUT = Script(
    _NOW_MS
    + """
forget(KEYS[1], KEYS[2], redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100))
if ARGV[3] == '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif tonumber(ARGV[3]) <= 0 then
  forget(KEYS[1], KEYS[2], {ARGV[1]})
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], string.format('%.0f', now + tonumber(ARGV[3])), ARGV[1])
end
return 1
"""
)

#: KEYS: values, expires. ARGV: prefix. Returns {key, value, ...} of the live settings.
_ITEMS = Script(
    _NOW_MS
    + """
forget(KEYS[1], KEYS[2], redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now))
local all, out, prefix = redis.call('HGETALL', KEYS[1]), {}, ARGV[1]
for i = 1, #all, 2 do
  if string.sub(all[i], 1, #prefix) == prefix then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
"""
)

#: KEYS: values, expires. ARGV: key.
_DELETE = Script(_NOW_MS + "forget(KEYS[1], KEYS[2], {ARGV[1]})\nreturn 1\n")


class Subscription:
    """The messages of one channel, from the moment its `SUBSCRIBE` was confirmed.

    Iterate it (`async for data in subscription`) or `await receive()`; one task reads it.
    """

    __slots__ = ("_channels", "channel", "event", "left", "live", "messages")

    def __init__(self, channels: Channels, channel: bytes) -> None:
        self._channels = channels
        self.channel = channel
        self.messages: deque[bytes] = deque()
        self.event = anyio.Event()
        self.live = False  # Redis confirmed this subscription
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
        await self._channels.until(self, lambda: bool(self.messages))
        return self.messages.popleft()


class Channels:
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
        sub = Subscription(self, channel)
        try:
            async with self._lock:
                if self._closed:
                    raise self._closed_error()
                self._subs.setdefault(channel, []).append(sub)
                if self._conn is not None:
                    await self._write(self._conn, b"SUBSCRIBE", {channel: [sub]})
                elif not self.generation:  # never connected: errors go to this caller
                    try:
                        await self._open()
                    except (RedisError, OSError) as exc:
                        raise broker_error(self._settings, exc, "subscribing") from None
            await self.until(sub, lambda: sub.live)
            yield sub
        finally:
            with anyio.CancelScope(shield=True):
                await self._leave(sub)

    async def _leave(self, sub: Subscription) -> None:
        sub.left = True
        self._sleepers.pop(sub, None)
        async with self._lock:
            subs = self._subs.get(sub.channel, [])
            if sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subs[sub.channel]
                    if self._conn is not None:
                        await self._write(self._conn, b"UNSUBSCRIBE", {sub.channel: []})
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
                sub.event = anyio.Event()
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
        if self._subs:
            pending = {ch: [s for s in subs if not s.live] for ch, subs in self._subs.items()}
            await self._write(conn, b"SUBSCRIBE", pending)

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

    async def _read_one(self) -> None:
        """Read and dispatch one reply; on a lost connection, back off and open it again."""
        try:
            conn = await self._connection()
            try:
                reply = await conn.read_response(
                    timeout=math.inf, disconnect_on_error=False, push_request=True
                )
            except BaseException:
                if not HIREDIS_AVAILABLE:  # the pure-Python parser may be mid-reply
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


class RedisMailbox(Mailbox):
    """Topics over Redis pub/sub, settings in a hash with emulated per-field expiry."""

    def __init__(
        self,
        settings: RedisSettings,
        client: Callable[[], aioredis.Redis],
        channels: Channels,
    ) -> None:
        self._settings = settings
        self._client = client
        self._channels = channels
        prefix = settings.prefix
        self._keys = [f"{prefix}:{{settings}}", f"{prefix}:{{settings}}:expires"]

    def channel(self, topic: str) -> bytes:
        """Return the Redis channel of `topic`."""
        return f"{self._settings.prefix}:mailbox:{topic}".encode()

    async def publish(self, topic: str, data: bytes) -> None:
        """`PUBLISH` to the topic's channel: every subscriber now listening gets it."""
        with redis_errors(self._settings, "publishing to the mailbox"):
            await self._client().publish(self.channel(topic), data)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Receive the topic's messages from the moment Redis confirmed the subscription."""
        self._client()  # not open: say so
        async with self._channels.subscribe(self.channel(topic)) as subscription:
            yield subscription

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a setting, for `ttl` seconds (by Redis' clock) or for good."""
        expiry = "" if ttl is None else str(math.ceil(ttl * 1000) if ttl > 0 else 0)
        with redis_errors(self._settings, "storing a setting"):
            await _PUT(self._client(), self._keys, [key, value, expiry])

    async def items(self, prefix: str) -> dict[str, bytes]:
        """Return every live setting whose key starts with `prefix`."""
        with redis_errors(self._settings, "reading settings"):
            flat = await _ITEMS(self._client(), self._keys, [prefix])
        return {bytes(flat[i]).decode(): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def delete(self, key: str) -> None:
        """Remove a setting."""
        with redis_errors(self._settings, "deleting a setting"):
            await _DELETE(self._client(), self._keys, [key])

    async def claim(self, key: str, ttl: float) -> bool:
        """`SET <prefix>:claim:<key> 1 NX PX <ttl>`: only the first caller sets it."""
        name = f"{self._settings.prefix}:claim:{key}"
        with redis_errors(self._settings, "claiming a key"):
            taken = await self._client().set(name, b"1", nx=True, px=max(1, math.ceil(ttl * 1000)))
        return bool(taken)
