"""The mailbox of the Redis driver: topics over pub/sub, settings in a hash.

**Topics.** `publish(topic, data)` is a `PUBLISH` on the channel `<prefix>:mailbox:<topic>`.
Every subscription of one broker shares ONE pub/sub connection (`pubsub.PubSub`, also used by
the Redis semaphore's wake-ups): each `subscribe` context is entered once Redis confirmed its
`SUBSCRIBE`, so everything published after that is received; what was published while the
connection was down is lost, as with any pub/sub.

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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from ..base import Mailbox
from .client import RedisSettings, Script, redis_errors
from .pubsub import PubSub

__all__ = ["RedisMailbox"]

logger = logging.getLogger(__name__)

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


class RedisMailbox(Mailbox):
    """Topics over Redis pub/sub, settings in a hash with emulated per-field expiry."""

    def __init__(
        self,
        settings: RedisSettings,
        client: Callable[[], aioredis.Redis],
        pubsub: PubSub,
    ) -> None:
        self._settings = settings
        self._client = client
        self._pubsub = pubsub
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
        async with self._pubsub.subscribe(self.channel(topic)) as subscription:
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
