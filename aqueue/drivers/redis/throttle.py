"""Global throttles on Redis: a GCRA rate limiter and a lease-based semaphore.

Both keep their state in Redis and change it only in Lua scripts that read Redis' own clock
(`TIME`), so every worker of every host books against one clock and one state.

**Rate limiter.** `<prefix>:rate:<key>` holds the theoretical arrival time (TAT, microseconds
of Redis time) of the next start and the interval it was booked at. One script books a start
as `LocalRateLimiter` does: `start = max(now, TAT - (burst - 1) * interval)`, then
`TAT = max(TAT, now) + interval`, and sets the key to expire when the new TAT is reached (an
idle key is the same as no key: it vanishes). Concurrent `reserve` calls of one process go
out together as one pipeline of script calls (`Batcher`), booked in the order they were made.

The rate and burst are arguments of each call, and a changed rate applies from the next
booking on: the backlog (`TAT - now`) is first rescaled to the new interval, as if the
bookings still ahead had been made at the new rate. So raising `1/h` to `100/s` lets the next
start go within a second rather than after the hour already booked; lowering a rate makes the
next start wait for the recent starts counted at the new rate. Starts booked before the change
keep their times (a worker that wants them to follow the new rate books them again).

**Semaphore.** `<prefix>:sem:<key>` is a sorted set of token -> lease expiry (Redis time in ms),
itself expiring with its last lease. `acquire` drops the expired leases, then adds a token if
fewer than `limit` remain; `renew` moves a token's expiry if it still holds a place; `release`
removes it and, if it was there, PUBLISHes on `<prefix>:sem:<key>:freed`. A place whose worker
died frees itself when its lease runs out, with no one to publish it: so `wait` subscribes to
the channel, then looks once (a place free already? the earliest lease expiry?), then waits
for a release, the earliest expiry or `at_most`, whichever comes first. Every waiter of a key
wakes on a release (across workers) and races for the place with `acquire`.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, Literal

import anyio
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from ..base import RateLimiter, Semaphore
from .client import Batcher, RedisSettings, Script, redis_errors, run_scripts
from .pubsub import PubSub

__all__ = ["RedisRateLimiter", "RedisSemaphore"]

logger = logging.getLogger(__name__)

#: KEYS: the booking ("<TAT> <interval>"). ARGV: interval (us), burst.
#: Returns {start, now} in microseconds of Redis time.
_RESERVE = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat, was = now, interval
local stored = redis.call('GET', KEYS[1])
if stored then
  local a, b = string.match(stored, '^(%S+) (%S+)$')
  tat, was = tonumber(a) or now, tonumber(b) or interval
end
if tat < now then tat = now end
if was ~= interval then tat = now + (tat - now) / was * interval end
local start = math.max(now, tat - (burst - 1) * interval)
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.17g %.17g', tat, interval),
  'PX', math.ceil((tat - now) / 1000))
return {string.format('%.17g', start), string.format('%.17g', now)}
"""
)

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms(x) return string.format('%.0f', x) end
-- The set lives as long as its last lease.
local function keep(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, last[2]) end
end
"""

#: KEYS: the set. ARGV: limit, lease (ms), token, channel. Returns 1 if the token got a place.
_ACQUIRE = Script(
    _NOW_MS
    + """
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local got = 0
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ms(now + tonumber(ARGV[2])), ARGV[3])
  keep(KEYS[1])
  got = 1
end
if expired > got then redis.call('PUBLISH', ARGV[4], 'expired') end
return got
"""
)

#: KEYS: the set. ARGV: token, lease (ms). Returns 1 if the token still held a place.
_RENEW = Script(
    _NOW_MS
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ms(now + tonumber(ARGV[2])), ARGV[1])
keep(KEYS[1])
return 1
"""
)

#: KEYS: the set. ARGV: token, channel. Returns 1 if the token held a place.
_RELEASE = Script(
    """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then redis.call('PUBLISH', ARGV[2], 'released') end
return removed
"""
)

#: KEYS: the set. ARGV: limit, channel. Drops expired leases (telling the other waiters).
#: Returns -1 if a place is free, else ms until the earliest lease runs out (0: none held).
_LOOK = Script(
    _NOW_MS
    + """
if redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) > 0 then
  redis.call('PUBLISH', ARGV[2], 'expired')
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then return -1 end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not first[2] then return 0 end
return tonumber(first[2]) - now
"""
)


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


async def _run(client: aioredis.Redis, script: Script, keys: list[str], args: list[Any]) -> Any:
    """Run one script with a plain EVALSHA (a third faster than a pipeline of one)."""
    try:
        reply = client.execute_command(  # type: ignore[no-untyped-call]
            "EVALSHA", script.sha, len(keys), *keys, *args
        )
        return await reply
    except NoScriptError:
        return await script(client, keys, args)  # loads it, then runs it


class RedisRateLimiter(RateLimiter):
    """GCRA booked in Redis: one rate for every worker that shares the Redis server."""

    scope: Literal["global", "local"] = "global"

    def __init__(self, settings: RedisSettings, client: Callable[[], aioredis.Redis]) -> None:
        self._settings = settings
        self._client = client
        self._bookings: Batcher[tuple[str, float, int], tuple[float, float]] = Batcher(self._flush)

    def key(self, key: str) -> str:
        """Return the Redis key holding `key`'s next start."""
        return f"{self._settings.prefix}:rate:{key}"

    async def reserve(self, key: str, rate: float, burst: int = 1) -> float:
        """Book the next start of `key` at `rate` per second; return seconds to wait for it."""
        start, now = await self.book(key, rate, burst)
        return max(0.0, (start - now) / 1e6)

    async def book(self, key: str, rate: float, burst: int = 1) -> tuple[float, float]:
        """Book a start; return it and the time of booking, in microseconds of Redis time."""
        if not rate > 0:
            raise ValueError(f"rate must be > 0, not {rate!r}")
        self._client()  # not open: say so before queueing
        with redis_errors(self._settings, "reserving a start"):
            return await self._bookings.submit((self.key(key), 1e6 / rate, max(1, int(burst))))

    async def _flush(self, items: list[tuple[str, float, int]]) -> list[tuple[float, float]]:
        calls: list[tuple[Script, list[str], list[Any]]] = [
            (_RESERVE, [key], [repr(interval), burst]) for key, interval, burst in items
        ]
        if len(calls) == 1:
            replies = [await _run(self._client(), *calls[0])]
        else:
            replies = await run_scripts(self._client(), calls)
        return [(float(start), float(now)) for start, now in replies]


class RedisSemaphore(Semaphore):
    """Leases in a Redis sorted set: at most `limit` holders of a key across all workers."""

    scope: Literal["global", "local"] = "global"

    def __init__(
        self,
        settings: RedisSettings,
        client: Callable[[], aioredis.Redis],
        channels: PubSub,
    ) -> None:
        self._settings = settings
        self._client = client
        self._channels = channels
        self._limits: dict[str, int] = {}  # the last limit asked for, per key (for `wait`)

    def key(self, key: str) -> str:
        """Return the Redis key of `key`'s leases."""
        return f"{self._settings.prefix}:sem:{key}"

    def channel(self, key: str) -> bytes:
        """Return the channel that says a place of `key` came free."""
        return f"{self._settings.prefix}:sem:{key}:freed".encode()

    async def acquire(self, key: str, limit: int, lease: float) -> str | None:
        """Take a place for `lease` seconds; return its token, or None if all are taken."""
        self._limits[key] = limit
        token = uuid.uuid4().hex
        args = [limit, _milliseconds(lease), token, self.channel(key)]
        with redis_errors(self._settings, "acquiring a place"):
            got = await _run(self._client(), _ACQUIRE, [self.key(key)], args)
        return token if got else None

    async def renew(self, key: str, token: str, lease: float) -> None:
        """Extend a held place's lease to `lease` seconds from now.

        A token whose lease ran out and whose place was taken is not renewed (logged).
        """
        with redis_errors(self._settings, "renewing a lease"):
            held = await _run(
                self._client(), _RENEW, [self.key(key)], [token, _milliseconds(lease)]
            )
        if not held:
            logger.warning(
                "the lease of a place of %r ran out before it was renewed; another worker may "
                "hold the place now (renew more often than the lease)",
                key,
            )

    async def release(self, key: str, token: str) -> None:
        """Give a place back and wake the waiters of `key`; a second release does nothing."""
        with redis_errors(self._settings, "releasing a place"):
            await _run(self._client(), _RELEASE, [self.key(key)], [token, self.channel(key)])

    async def wait(self, key: str, at_most: float) -> None:
        """Return when a place of `key` may have come free, or after `at_most` seconds.

        That is: a release, a place free already, or the earliest lease running out.
        """
        client = self._client()
        with anyio.move_on_after(at_most):
            async with self._channels.subscribe(self.channel(key)) as freed:
                args = [self._limits.get(key, 0), self.channel(key)]
                with redis_errors(self._settings, "looking for a free place"):
                    until = int(await _run(client, _LOOK, [self.key(key)], args))
                if until < 0:
                    return
                with anyio.move_on_after(until / 1000 + 0.001 if until else math.inf):
                    await freed.receive()
