"""`redis://`, `rediss://`, `unix://` results: one key per task, with a time to live.

A result is the key `<prefix>:result:<task id>` (state, a NUL byte, the encoded payload),
written with `SET ... PX <ttl>`. Reaching a ready state also PUBLISHes the same value on the
channel `<prefix>:done:<task id>`.

`wait` never polls: each backend instance (so, one per `App`, typically one per process) keeps
ONE pub/sub connection shared by all its waiters (`pubsub`): a waiter subscribes
to its task's channel, then reads the key, then waits for the notification. The key lookups of
concurrent waiters go out together as one `MGET`, and concurrent stores as one script call, so
10,000 concurrent waiters use two connections: the pub/sub one and one for commands.

An app whose broker is not Redis still gets global rate limits and per-task concurrency from
a Redis result backend: `rate_limiter()` and `semaphore()` (see `aqueue.drivers.redis.throttle`),
made on first use; the semaphore's waiters have a pub/sub connection of their own.

Options (URL query or `result_backend_transport_options`): `prefix` (default `aqueue`) and the
connection options of `client`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import msgpack
import redis.asyncio as aioredis

from ...exceptions import BrokerError
from ...states import READY_STATES
from ..base import ChordStep, ResultBackend, StoredResult
from .client import (
    Batcher,
    RedisSettings,
    Script,
    answering,
    close_clients,
    parse_redis_url,
    redis_errors,
    run_scripts,
)
from .pubsub import PubSub
from .resp import RespClient
from .throttle import RedisRateLimiter, RedisSemaphore

__all__ = ["RedisBackend"]

_READY = frozenset(state.encode() for state in READY_STATES)

#: Store a batch of results in one script call: its reply is one integer, where parsing the
#: replies of a pipeline of SET and PUBLISH took about a sixth of a busy worker's time.
#: KEYS: the result keys. ARGV[1]: a msgpack array, per key: {value, ttl_ms, channel}; a TTL
#: of 0 or less deletes the key, an empty channel publishes nothing.
_STORE = Script(
    """
local items = cmsgpack.unpack(ARGV[1])
for i, key in ipairs(KEYS) do
  local value, ttl, channel = items[i][1], items[i][2], items[i][3]
  if ttl > 0 then
    redis.call('SET', key, value, 'PX', string.format('%d', ttl))
  else
    redis.call('DEL', key)
  end
  if channel ~= '' then
    redis.call('PUBLISH', channel, value)
  end
end
return #KEYS
"""
)


#: Record chord header tasks, a batch in one call. Per chord two keys: a set of the header
#: task ids recorded (each counts once) and a hash of flags (failed, done). KEYS: per item, the
#: set then the hash. ARGV[1]: a msgpack array, per item: {task_id, size, ok, ttl_ms}.
#: Replies, per item: 1 fire, 2 fail, 0 wait (see `ResultBackend.chord_part`): the first
#: recorder to find the chord complete or failed is its claimant, and alone is told to act.
_CHORD_PART = Script(
    """
local items = cmsgpack.unpack(ARGV[1])
local out = {}
for i, item in ipairs(items) do
  local members, flags = KEYS[2 * i - 1], KEYS[2 * i]
  local ttl = string.format('%d', item[4])
  redis.call('SADD', members, item[1])
  redis.call('PEXPIRE', members, ttl)
  if item[3] == 0 then
    redis.call('HSET', flags, 'failed', '1')
    redis.call('PEXPIRE', flags, ttl)
  end
  local state = redis.call('HMGET', flags, 'failed', 'done', 'claimant')
  out[i] = 0
  if not state[2] and (state[1] or redis.call('SCARD', members) >= item[2]) then
    if not state[3] then
      redis.call('HSET', flags, 'claimant', item[1])
      redis.call('PEXPIRE', flags, ttl)
      state[3] = item[1]
    end
    if state[3] == item[1] then
      out[i] = state[1] and 2 or 1
    end
  end
end
return out
"""
)

#: Claim the run of a task a chord sent for one token. KEYS[1]: the chord's hash of flags.
#: ARGV: the task id, the token, the TTL in milliseconds. Replies 1 if the token holds it.
_CHORD_RUN = Script(
    """
local field = 'run:' .. ARGV[1]
if redis.call('HSETNX', KEYS[1], field, ARGV[2]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if redis.call('HGET', KEYS[1], field) == ARGV[2] then
  return 1
end
return 0
"""
)

#: Mark a chord settled. KEYS[1]: its hash of flags. ARGV[1]: the TTL in milliseconds.
_CHORD_DONE = Script(
    """
redis.call('HSET', KEYS[1], 'done', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

_STEPS: tuple[ChordStep, ChordStep, ChordStep] = ("wait", "fire", "fail")

#: Keys per MGET of `fetch_many`.
_MGET_CHUNK = 1000


def _decode(raw: bytes | None) -> StoredResult | None:
    if raw is None:
        return None
    state, _, payload = bytes(raw).partition(b"\0")
    return StoredResult(state.decode(), payload)


def _ready(raw: bytes | None) -> bool:
    return raw is not None and raw.partition(b"\0")[0] in _READY


class RedisBackend(ResultBackend):
    """Results in Redis: `App(backend="redis://localhost:6379/0")`."""

    counts_chords = True

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.settings: RedisSettings = parse_redis_url(
            url, options, ignore=frozenset({"broker_url"})
        )
        #: Stores and lookups, on a lean connection (`resp`): a waiter's process and a
        #: worker use no other for results.
        self._hot: RespClient | None = None
        self._client: aioredis.Redis | None = None  # for the rate limiter and the semaphore
        self._subscriptions: PubSub | None = None
        self._channels: PubSub | None = None
        self._rate_limiter: RedisRateLimiter | None = None
        self._semaphore: RedisSemaphore | None = None
        self._stores: Batcher[tuple[str, str, bytes, float], None] = Batcher(self._flush_stores)
        self._lookups: Batcher[str, bytes | None] = Batcher(self._flush_lookups)
        self._chord_parts: Batcher[tuple[str, str, int, bool, float], ChordStep] = Batcher(
            self._flush_chord_parts
        )

    def __repr__(self) -> str:
        return f"<RedisBackend {self.settings.url}>"

    def _key(self, task_id: str) -> str:
        return f"{self.settings.prefix}:result:{task_id}"

    def _channel(self, task_id: str) -> bytes:
        return f"{self.settings.prefix}:done:{task_id}".encode()

    async def open(self) -> None:
        """Connect (and check that Redis answers); the pub/sub connection opens on first wait."""
        if self._hot is not None:
            return
        hot = await answering(self.settings)
        if self._hot is not None:  # a concurrent open won
            await hot.aclose()
            return
        self._hot = hot
        self._subscriptions = PubSub(self.settings)

    async def close(self) -> None:
        """Close every connection."""
        hot, self._hot = self._hot, None
        client, self._client = self._client, None
        subscriptions, self._subscriptions = self._subscriptions, None
        channels, self._channels = self._channels, None
        self._rate_limiter = self._semaphore = None
        with anyio.CancelScope(shield=True):
            if hot is not None:
                await hot.aclose()
            if subscriptions is not None:
                await subscriptions.close()
            if channels is not None:
                await channels.close()
            await close_clients(client)

    def _hot_path(self) -> RespClient:
        if self._hot is None:
            raise BrokerError(f"{type(self).__name__} is not open: call `await backend.open()`")
        return self._hot

    def _redis(self) -> aioredis.Redis:
        """Return a redis-py client (made on first use) for the rate limiter and semaphore."""
        self._hot_path()
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    def rate_limiter(self) -> RedisRateLimiter:
        """Return the rate limiter every worker on this Redis shares (open the backend first)."""
        self._redis()
        if self._rate_limiter is None:
            self._rate_limiter = RedisRateLimiter(self.settings, self._redis)
        return self._rate_limiter

    def semaphore(self) -> RedisSemaphore:
        """Return the semaphore every worker on this Redis shares (open the backend first)."""
        self._redis()
        if self._semaphore is None:
            self._channels = PubSub(self.settings)
            self._semaphore = RedisSemaphore(self.settings, self._redis, self._channels)
        return self._semaphore

    @property
    def waiting(self) -> int:
        """How many task ids `wait` calls are waiting on now."""
        return 0 if self._subscriptions is None else self._subscriptions.channels

    async def store(
        self,
        task_id: str,
        state: str,
        payload: bytes,
        ttl: float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the result (batched with concurrent stores); notify waiters if it is final."""
        self._hot_path()
        with redis_errors(self.settings, "storing a result"):
            await self._stores.submit((task_id, state, payload, ttl))

    async def _flush_stores(self, items: list[tuple[str, str, bytes, float]]) -> list[None]:
        keys, values = [], []
        for task_id, state, payload, ttl in items:
            keys.append(self._key(task_id))
            channel = self._channel(task_id) if state in READY_STATES else b""
            values.append((state.encode() + b"\0" + payload, int(ttl * 1000), channel))
        # Bytes as msgpack raw strings: Redis's cmsgpack reads no bin types, and a Lua string
        # holds any bytes.
        packed = msgpack.packb(values, use_bin_type=False)
        await run_scripts(self._hot_path(), [(_STORE, keys, [packed])])
        return [None] * len(items)

    async def _flush_lookups(self, keys: list[str]) -> list[bytes | None]:
        values: Any = await self._hot_path().execute("MGET", *keys)
        return list(values)

    async def fetch(self, task_id: str) -> StoredResult | None:
        """Return the stored result, or None (never stored, expired or forgotten)."""
        with redis_errors(self.settings, "fetching a result"):
            raw: Any = await self._hot_path().execute("GET", self._key(task_id))
        return _decode(raw)

    async def wait(self, task_id: str) -> StoredResult:
        """Return once the task is ready: subscribe, look the key up, wait to be notified."""
        self._hot_path()
        subscriptions = self._subscriptions
        assert subscriptions is not None
        key = self._key(task_id)

        async def lookup() -> bytes | None:
            with redis_errors(self.settings, "fetching a result"):
                raw = await self._lookups.submit(key)
            return raw if _ready(raw) else None

        raw = await subscriptions.wait(self._channel(task_id), lookup)
        result = _decode(raw)
        assert result is not None
        return result

    async def forget(self, task_id: str) -> None:
        """Delete the result."""
        with redis_errors(self.settings, "forgetting a result"):
            await self._hot_path().execute("DEL", self._key(task_id))

    async def fetch_many(self, task_ids: Sequence[str]) -> list[StoredResult | None]:
        """Look many results up, a thousand keys per MGET."""
        found: list[StoredResult | None] = []
        with redis_errors(self.settings, "fetching results"):
            for start in range(0, len(task_ids), _MGET_CHUNK):
                keys = [self._key(task_id) for task_id in task_ids[start : start + _MGET_CHUNK]]
                values: Any = await self._hot_path().execute("MGET", *keys)
                found.extend(_decode(raw) for raw in values)
        return found

    def _chord_keys(self, chord_id: str) -> tuple[str, str]:
        base = f"{self.settings.prefix}:chord:{chord_id}"
        return f"{base}:parts", f"{base}:flags"

    async def chord_part(
        self, chord_id: str, task_id: str, size: int, ttl: float, *, ok: bool
    ) -> ChordStep:
        """Record a header task: one script call, shared with concurrent records."""
        self._hot_path()
        with redis_errors(self.settings, "counting a chord"):
            return await self._chord_parts.submit((chord_id, task_id, size, ok, ttl))

    async def _flush_chord_parts(
        self, items: list[tuple[str, str, int, bool, float]]
    ) -> list[ChordStep]:
        keys: list[str] = []
        values = []
        for chord_id, task_id, size, ok, ttl in items:
            keys.extend(self._chord_keys(chord_id))
            values.append((task_id, size, 1 if ok else 0, max(int(ttl * 1000), 1)))
        packed = msgpack.packb(values, use_bin_type=False)
        (replies,) = await run_scripts(self._hot_path(), [(_CHORD_PART, keys, [packed])])
        return [_STEPS[int(reply)] for reply in replies]

    async def chord_done(self, chord_id: str, ttl: float) -> None:
        """Mark the chord settled."""
        _, flags = self._chord_keys(chord_id)
        with redis_errors(self.settings, "counting a chord"):
            await run_scripts(self._hot_path(), [(_CHORD_DONE, [flags], [max(int(ttl * 1000), 1)])])

    async def chord_run(self, chord_id: str, task_id: str, token: str, ttl: float) -> bool:
        """Claim the run of a task the chord sent: one script call."""
        _, flags = self._chord_keys(chord_id)
        argv = [task_id, token, max(int(ttl * 1000), 1)]
        with redis_errors(self.settings, "claiming a chord's callback"):
            (reply,) = await run_scripts(self._hot_path(), [(_CHORD_RUN, [flags], argv)])
        return int(reply) == 1
