"""`redis://`, `rediss://`, `unix://`: a broker on Redis Streams with consumer groups.

Each queue has one stream per priority level (`<prefix>:{<queue>}:p0` ... `:p9`) read by the
consumer group `aqueue`, a sorted set of delayed messages, a wake-up stream and a dead-letter
stream; the `{queue}` hash tag keeps them in one Redis Cluster slot (see `scripts`).

- A consumer claims up to its credit (at most `CLAIM_BATCH`) in one Lua script (due delayed
  messages move to their streams, then priority 9 first, oldest first), and when nothing is
  ready it blocks in
  `XREADGROUP ... BLOCK` on every stream of its queues: a publish wakes it at once. It sleeps
  no longer than the next delayed message (a publish of an earlier one wakes a consumer through
  the wake-up stream) or its next reclaim sweep.
- A delivered message stays pending until it is settled. `renew` (the worker's heartbeat)
  resets its idle time; a message idle longer than `visibility_timeout` belongs to a dead
  consumer and is reclaimed (`XAUTOCLAIM`) by the sweep of any live one, which every consumer
  runs every `visibility_timeout / 2` seconds. Settling is fenced by owner and delivery counter:
  a consumer whose lease ran out cannot settle the message another consumer now holds.
- Runs: `begin` (the worker calls it before running a redelivered message alone, see
  `aqueue.worker.isolation`) and `nack` add one to the message's field in the hash
  `<prefix>:{<queue>}:runs` (keyed by a digest of the body, which survives `nack` and delays);
  a redelivered message with `max_deliveries` runs goes to the dead letters
  (`max-deliveries`); the worker does it first, with a failure result. Deliveries blame
  nothing: a message merely held by a worker that died is not the one that killed it.
- Heartbeats (`aqueue.drivers.heartbeat`): a consuming broker records in each of its queues'
  `beats` hash, every `heartbeat_interval` seconds from a thread of its own, that it is alive
  (in Redis's time). A claim takes the messages of consumers whose owner's beat is older than
  `heartbeat_timeout` at once, without waiting for their leases; an idle consumer looks again
  when the oldest beat would go stale, and at least every `heartbeat_timeout` seconds.
- `nack`, `release` and a closing consumer give messages back at once, not after the lease,
  and in their place: the next claim takes them before the newer entries (see `scripts`); a
  `nack` with a delay adds the message to the delayed set (counting the deliveries so far).
- Connections: publishes, claims and acks share one lean pipelined connection (`resp`),
  and each consumer blocks on a connection of its own; redis-py serves everything else.
  Concurrent publishes coalesce there: what callers send in one turn of the event loop while
  replies are awaited goes in one write, and each caller returns on its own reply (an error
  reply fails its caller alone; a lost connection, the callers whose commands were in flight).
  Publishes are not sent again after a lost connection: the caller gets a `BrokerError`.
- Lost connections: the consumer retries with backoff (at most 2 s apart), and recreates the
  consumer groups and scripts a restarted Redis lost (`consumer`).
- Across queues, priority goes first, then age: stream ids (Redis time, in milliseconds).

The mailbox (`aqueue.drivers.redis.mailbox`: pub/sub topics, settings in a hash), the global rate
limiter and the lease-based semaphore (`aqueue.drivers.redis.throttle`) are made on first use, once
per broker; the mailbox's subscriptions and the semaphore's waiters share one pub/sub
connection of the broker's own.

Options (URL query or `broker_transport_options`): `prefix` (default `aqueue`), the connection
options of `client`, and `visibility_timeout` / `max_deliveries` / `heartbeat_interval` /
`heartbeat_timeout` as on SQLite.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

import anyio
import hiredis
import redis.asyncio as aioredis
import redis.connection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from ...exceptions import BrokerError
from ...message import OutgoingMessage
from ..base import (
    BlockingPublisher,
    Broker,
    Credit,
    DeadLetter,
    DeadLetterStats,
    Delayed,
    Delivery,
    QueueStats,
    holds_suspect,
)
from ..heartbeat import Heartbeat
from ..options import BrokerOptions
from . import dead as deadletters
from . import scripts as lua
from .client import (
    SOCKET_TIMEOUT,
    Batcher,
    LeanClient,
    RedisSettings,
    Script,
    answering,
    broker_error,
    close_clients,
    parse_redis_url,
    process_tag,
    redis_errors,
    run_scripts,
)
from .consumer import (
    CLAIM_BATCH,
    GROUP,
    MAX_BLOCK,
    Beats,
    Claimed,
    Consumer,
    QueueKeys,
    run_key,
)
from .mailbox import RedisMailbox
from .pubsub import PubSub
from .resp import encode_bulk, encode_command, encode_head, reply_error
from .throttle import RedisRateLimiter, RedisSemaphore

__all__ = ["RedisBroker"]

#: The options a Redis broker reads itself, not passed on to the connections.
_BROKER_OPTIONS = (
    "visibility_timeout",
    "max_deliveries",
    "dead_letter_max_bytes",
    "message_max_bytes",
    "heartbeat_interval",
    "heartbeat_timeout",
)

logger = logging.getLogger(__name__)

_ACK = Script(lua.ACK)
_REQUEUE = Script(lua.REQUEUE)
_DEAD_LETTER = Script(lua.DEAD_LETTER)
_SCHEDULE = Script(lua.SCHEDULE)
_PURGE = Script(lua.PURGE)
_QUEUE_STATS = Script(lua.QUEUE_STATS)
#: How long a queue's runs hash outlives its last change (a count left by a lost settle).
RUNS_TTL = 7 * 24 * 3600


class _RedisDelivery(Delivery):
    __slots__ = ("_begun", "_broker", "_claimed", "_consumer", "_held", "_settled")

    def __init__(
        self, broker: RedisBroker, claimed: Claimed, consumer: str, held: set[str]
    ) -> None:
        count = claimed.n + claimed.counter
        super().__init__(claimed.body, claimed.keys.queue, count, claimed.runs)
        self._broker = broker
        self._claimed = claimed
        self._consumer = consumer
        self._held = held
        self._settled = False
        self._begun = False
        self.returned = claimed.returned

    async def begin(self) -> None:
        """Count a run of the message in its queue's runs hash, before it starts."""
        if not self._settled and not self._begun:
            self._begun = True
            await self._broker._count_run(self._claimed)

    async def _forget_runs(self) -> None:
        """Settled for good: drop its count of runs, if it has one."""
        if self._begun or self.runs:
            await self._broker.forget_runs(self._claimed)

    def _settle(self) -> bool:
        first, self._settled = not self._settled, True
        return first

    def _release(self) -> None:
        """Settled: no longer this consumer's to give back (only once Redis has done it)."""
        self._held.discard(self._claimed.id)

    def _lost(self, action: str) -> None:
        logger.warning(
            "could not %s message %s of queue %r: its lease ran out and another consumer "
            "holds it now (raise visibility_timeout above the longest task)",
            action,
            self._claimed.id,
            self.queue,
        )

    async def ack(self) -> None:
        """Delete the message, if this delivery still holds it (batched with other acks).

        It returns without waiting while another batch of acks is on its way: this one goes
        with the next batch, sent before the caller sending the current one returns. An ack
        that Redis does not answer is kept and sent again before the next claim
        (`RedisBroker.settle_unacked`), rather than left to its lease and a second run.
        """
        if self._settle():
            settler, item = self._broker._settler, ("ack", self)
            if not settler.queue_unwaited(item):  # as a rule queued, with no coroutine
                await settler.send(item)
            if self._begun or self.runs:  # as _forget_runs, without a coroutine per ack
                await self._broker._forget_runs_or_keep(self._claimed)

    def _acked(self, outcome: bool | Exception) -> None:
        """Take the outcome of this delivery's ack, when its batch came back."""
        if isinstance(outcome, Exception):  # still held by this consumer: acked again later
            self._broker._unacked.append(self)
            self._broker._unreachable(outcome)
            return
        self._release()
        if not outcome:
            self._lost("acknowledge")

    async def renew(self) -> None:
        """Reset the message's idle time, so that no sweep reclaims it."""
        if self._settled:
            return
        with redis_errors(self._broker.settings, "renewing a lease"):
            if not await self._broker._settler.submit(("renew", self)):
                self._lost("renew the lease of")

    async def nack(self, *, delay: float = 0.0) -> None:
        """Give the message back, in its place or to the delayed set, counting this delivery."""
        if not self._settle():
            return
        due = time.time() + delay if delay > 0 else 0.0
        if not self._begun:  # a begun run was counted already
            await self._broker._count_run(self._claimed)
        try:
            if not await self._broker._requeue(self._claimed, self._consumer, "nack", due):
                self._lost("return")
        finally:
            self._release()

    async def release(self) -> None:
        """Give back a message never started: counted neither as a delivery nor as a run."""
        if not self._settle():
            return
        try:
            if not await self._broker._requeue(self._claimed, self._consumer, "release", 0.0):
                self._lost("return")
        finally:
            self._release()

    async def dead_letter(self, reason: str, detail: str = "") -> None:
        """Move the message to its queue's dead-letter stream."""
        if not self._settle():
            return
        try:
            if not await self._broker.dead_letter_claimed(
                self._claimed, self._consumer, str(reason), detail
            ):
                self._lost("dead-letter")
            await self._forget_runs()
        finally:
            self._release()


def _acked(item: tuple[str, _RedisDelivery], outcome: bool | Exception) -> None:
    item[1]._acked(outcome)


def _requeue_call(
    claimed: Claimed, consumer: str, mode: str, due: float, *, fenced: bool
) -> tuple[Script, list[str], list[Any]]:
    """Return the REQUEUE script call for a claimed message (unfenced: whatever its counter)."""
    keys = claimed.keys
    args = [
        GROUP,
        consumer,
        claimed.id,
        claimed.counter if fenced else "",
        mode,
        repr(due),
        uuid.uuid4().hex[:8],
        claimed.priority,
    ]
    return _REQUEUE, [claimed.stream, keys.delayed, keys.wake], args


class RedisBroker(Broker):
    """A broker on Redis Streams: `App(broker="redis://localhost:6379/0")`."""

    claims_ahead = True  # a claim is a round trip: the worker keeps some claimed ahead

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.settings: RedisSettings = parse_redis_url(
            url, options, ignore=frozenset(_BROKER_OPTIONS)
        )
        #: The options aqueue defines, checked (see `aqueue.drivers.options`).
        self.broker_options = opts = BrokerOptions.parse(options)
        self.visibility_timeout = opts.visibility_timeout
        self.max_deliveries = opts.max_deliveries
        self.renew_interval = opts.renew_interval
        self.heartbeat_interval, self.heartbeat_timeout = (
            opts.heartbeat_interval,
            opts.heartbeat_timeout,
        )
        #: This broker's name, the start of its consumers' names (see `scripts`).
        self.owner = f"{process_tag()}:{uuid.uuid4().hex[:8]}"
        #: The beats hashes of the queues consumed so far (replaced, never changed in place:
        #: the heartbeat thread reads it).
        self.beat_queues: tuple[QueueKeys, ...] = ()
        self.heartbeat: Heartbeat | None = None
        self.dead_letter_max_bytes = opts.dead_letter_max_bytes
        #: How often a consumer looks for messages whose lease ran out.
        self.sweep_interval = min(self.visibility_timeout / 2, MAX_BLOCK)
        self._client: aioredis.Redis | None = None
        #: The blocking reads of the consumers now running, a connection each (`resp`).
        self._readers: set[LeanClient] = set()
        #: Publishes, claims and acks (the hot path), on a lean connection (`resp`).
        self._hot: LeanClient | None = None
        self._keys: dict[str, QueueKeys] = {}
        #: The encoded start of the XADD of a ready message, by queue and priority (`_add`).
        self._xadd: dict[tuple[str, int], bytes] = {}
        self._channels: PubSub | None = None
        self._mailbox: RedisMailbox | None = None
        self._rate_limiter: RedisRateLimiter | None = None
        self._semaphore: RedisSemaphore | None = None
        #: Since when (monotonic) settles have failed for want of Redis: logged once then.
        self._unreachable_since: float | None = None
        #: Deliveries whose ack Redis did not answer: sent again by `settle_unacked`.
        self._unacked: list[_RedisDelivery] = []
        #: Settled messages whose count of runs Redis did not drop: dropped with them.
        self._unforgotten: list[Claimed] = []
        self._settler: Batcher[tuple[str, _RedisDelivery], bool] = Batcher(
            self._flush_settles, on_unwaited=_acked
        )

    def __repr__(self) -> str:
        return f"<RedisBroker {self.settings.url}>"

    # -- connections ------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (and check that Redis answers)."""
        if self._client is not None:
            return
        hot = await answering(self.settings)
        if self._client is not None:  # a concurrent open won
            await hot.aclose()
            return
        self._hot = hot
        # redis-py for everything but the hot path; it connects when first used.
        self._client = self.settings.client()

    async def close(self) -> None:
        """Close every connection; a consumer blocked on Redis stops, a subscriber fails."""
        if self._unacked or self._unforgotten:  # a last try; the leases bring the others back
            with anyio.CancelScope(shield=True):
                await self.settle_unacked()
        heartbeat, self.heartbeat = self.heartbeat, None
        if heartbeat is not None:  # removes this broker's beats
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(heartbeat.stop)
        client, hot = self._client, self._hot
        self._client = self._hot = None
        for each in [hot, *self._readers]:
            if each is not None:
                await each.aclose()
        channels, self._channels = self._channels, None
        self._mailbox = self._rate_limiter = self._semaphore = None
        with anyio.CancelScope(shield=True):
            if channels is not None:
                await channels.close()
            await close_clients(client)

    @property
    def is_open(self) -> bool:
        """Whether the broker is open."""
        return self._client is not None

    def redis_client(self) -> aioredis.Redis:
        """Return the redis-py client (pipelines, scripts off the hot path)."""
        if self._client is None:
            raise BrokerError(f"{type(self).__name__} is not open: call `await broker.open()`")
        return self._client

    def hot_path(self) -> LeanClient:
        """Return the pipelining client that claims, acks and publishes."""
        if self._hot is None:
            raise BrokerError(f"{type(self).__name__} is not open: call `await broker.open()`")
        return self._hot

    def blocking_reader(self) -> LeanClient:
        """Return a new connection for one consumer's blocking reads (closed by `close`)."""
        self.hot_path()
        reader = self.settings.lean(socket_timeout=MAX_BLOCK + SOCKET_TIMEOUT)
        self._readers.add(reader)
        return reader

    async def _drop_reader(self, reader: LeanClient) -> None:
        self._readers.discard(reader)
        await reader.aclose()

    def _pubsub(self) -> PubSub:
        self.redis_client()
        if self._channels is None:
            self._channels = PubSub(self.settings)
        return self._channels

    def mailbox(self) -> RedisMailbox:
        """Return the mailbox on this Redis: pub/sub topics and settings (open the broker first)."""
        if self._mailbox is None:
            self._mailbox = RedisMailbox(self.settings, self.redis_client, self._pubsub())
        return self._mailbox

    def rate_limiter(self) -> RedisRateLimiter:
        """Return the rate limiter every worker on this Redis shares (open the broker first)."""
        self.redis_client()
        if self._rate_limiter is None:
            self._rate_limiter = RedisRateLimiter(self.settings, self.redis_client)
        return self._rate_limiter

    def semaphore(self) -> RedisSemaphore:
        """Return the semaphore every worker on this Redis shares (open the broker first)."""
        if self._semaphore is None:
            self._semaphore = RedisSemaphore(self.settings, self.redis_client, self._pubsub())
        return self._semaphore

    def keys(self, queue: str) -> QueueKeys:
        """Return the Redis keys of `queue`."""
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys(self.settings.prefix, queue)
        return keys

    # -- producing --------------------------------------------------------------------------

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Add the messages in one round trip: ready ones to their streams, others delayed."""
        if not messages:
            return
        if len(messages) == 1 and messages[0].eta is None:  # what every `delay()` sends
            hot = self.hot_path()  # one XADD, awaited here: no coroutine more a call
            try:
                reply = await hot.execute_encoded(self._xadd_command(messages[0]))
                if self.settings.wait and not isinstance(reply, Exception):
                    await self._replicated(hot)
            except (RedisError, OSError) as exc:
                raise broker_error(self.settings, exc, "publishing") from None
            if isinstance(reply, Exception):
                raise broker_error(self.settings, reply, "publishing")
            return
        hot = self.hot_path()
        now = time.time()
        delayed: dict[str, list[Any]] = {}
        commands: list[tuple[Any, ...]] = []
        for message in messages:
            keys = self.keys(message.queue)
            priority = min(max(int(message.priority), 0), 9)
            if message.eta is not None and message.eta > now:
                member = b"%d:0:%s:%s" % (priority, uuid.uuid4().hex[:8].encode(), message.body)
                delayed.setdefault(message.queue, []).extend((repr(message.eta), member))
            else:
                commands.append(("XADD", keys.stream(priority), "*", "b", message.body))
        try:  # not `redis_errors`: every `delay()` comes this way, and a try costs nothing
            await self._send(hot, commands, delayed)
        except (RedisError, OSError) as exc:
            raise broker_error(self.settings, exc, "publishing") from None

    async def _send(
        self, hot: LeanClient, commands: list[tuple[Any, ...]], delayed: dict[str, list[Any]]
    ) -> None:
        if commands:
            for reply in await hot.execute_many(commands):
                if isinstance(reply, Exception):
                    raise reply
        if delayed:
            calls = [
                (_SCHEDULE, [self.keys(queue).delayed, self.keys(queue).wake], args)
                for queue, args in delayed.items()
            ]
            await run_scripts(hot, calls)
        if self.settings.wait:
            await self._replicated(hot)

    async def _replicated(self, hot: LeanClient) -> None:
        """Wait until `?wait=N` replicas hold what this connection wrote (Redis's `WAIT`).

        A publish confirmed this way survives the failover of its primary to one of them.
        """
        settings = self.settings
        held = await hot.execute("WAIT", settings.wait, int(settings.wait_timeout * 1000))
        if held < settings.wait:
            raise BrokerError(
                f"Redis at {settings.url}: only {held} of {settings.wait} replica(s) held a "
                f"published message within {settings.wait_timeout} s; it is on the primary, "
                "but may not survive its failover"
            )

    def blocking_publisher(self) -> BlockingPublisher | None:
        """Return a publisher on a connection of its own, for sync callers' threads.

        None for a cluster or behind sentinels (their publishes go through the I/O loop).
        """
        self.hot_path()
        if self.settings.cluster or self.settings.connection_class not in _SYNC_CONNECTIONS:
            return None
        return _BlockingPublisher(self.settings, self.keys)

    def _xadd_command(self, message: OutgoingMessage) -> bytes:
        """Return the XADD of one ready message, its head encoded once per stream."""
        priority = min(max(int(message.priority), 0), 9)
        head = self._xadd.get((message.queue, priority))
        if head is None:
            stream = self.keys(message.queue).stream(priority)
            head = self._xadd[message.queue, priority] = encode_head(("XADD", stream, "*", "b"), 5)
        return head + encode_bulk(message.body)

    # -- settling ---------------------------------------------------------------------------

    async def _flush_settles(self, items: list[tuple[str, _RedisDelivery]]) -> list[bool]:
        """One ACK script call per (mode, stream, consumer), all in one pipeline."""
        groups: dict[tuple[str, str, str], list[int]] = {}
        for index, (mode, delivery) in enumerate(items):
            claimed = delivery._claimed
            stream = claimed.keys.stream(claimed.priority)
            groups.setdefault((mode, stream, delivery._consumer), []).append(index)
        calls = []
        for (mode, stream, consumer), indexes in groups.items():
            packed = ",".join(
                f"{items[index][1]._claimed.id}/{items[index][1]._claimed.counter}"
                for index in indexes
            )
            calls.append((_ACK, [stream], [GROUP, mode, consumer, packed]))
        with redis_errors(self.settings, "settling messages"):
            replies = await run_scripts(self.hot_path(), calls)
        done = [False] * len(items)
        for indexes, reply in zip(groups.values(), replies, strict=True):
            for index, flag in zip(indexes, bytes(reply), strict=True):
                done[index] = flag == ord("1")
        return done

    async def settle_unacked(self) -> None:
        """Send again the acks that Redis did not answer (it went away).

        Consumers call this before each claim: the first round trip after an outage settles
        them. They are fenced as any ack: one whose lease ran out meanwhile changes nothing (its
        result is stored: the consumer that took it acknowledges it without running it).
        """
        if not self._unacked and not self._unforgotten:
            return
        unacked, self._unacked = self._unacked, []
        unforgotten, self._unforgotten = self._unforgotten, []
        try:
            done = await self._flush_settles([("ack", delivery) for delivery in unacked])
            if unforgotten:
                with redis_errors(self.settings, "settling messages"):
                    pipe = self.redis_client().pipeline(transaction=False)
                    for claimed in unforgotten:
                        pipe.hdel(claimed.keys.runs, run_key(claimed.body))
                    await pipe.execute()
        except BrokerError:  # still unreachable: the claim that follows backs off
            self._unacked[:0] = unacked
            self._unforgotten[:0] = unforgotten
            return
        down, self._unreachable_since = self._unreachable_since, None
        logger.warning(
            "Redis at %s answers again%s: acknowledged %d message(s) kept meanwhile",
            self.settings.url,
            "" if down is None else f" after {time.monotonic() - down:.1f}s",
            len(unacked),
        )
        for delivery, outcome in zip(unacked, done, strict=True):
            delivery._acked(outcome)

    def _unreachable(self, exc: BaseException) -> None:
        """Note a settle that failed for want of Redis; log it once per outage."""
        if self._unreachable_since is not None:
            return
        self._unreachable_since = time.monotonic()
        logger.warning(
            "Redis at %s is unreachable (%s): acknowledgements are kept and sent again once it "
            "answers; a message whose lease runs out meanwhile is delivered again, and "
            "acknowledged without running if its result was stored",
            self.settings.url,
            exc,
        )

    async def _forget_runs_or_keep(self, claimed: Claimed) -> None:
        """Drop a settled message's count of runs; if Redis is unreachable, do it later."""
        try:
            await self.redis_client().hdel(claimed.keys.runs, run_key(claimed.body))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._unforgotten.append(claimed)  # with the unacked acks (`settle_unacked`)
            self._unreachable(broker_error(self.settings, exc, "settling a message"))
        except RedisError as exc:
            raise broker_error(self.settings, exc, "settling a message") from None

    async def _requeue(
        self, claimed: Claimed, consumer: str, mode: str, due: float, *, fenced: bool = True
    ) -> bool:
        script, keys, args = _requeue_call(claimed, consumer, mode, due, fenced=fenced)
        with redis_errors(self.settings, "returning a message"):
            return bool(await script(self.redis_client(), keys, args))

    async def give_back_unyielded(
        self, messages: list[Claimed], consumer: str, *, fenced: bool
    ) -> None:
        """Give back claimed messages that were never handed out, all in one round trip."""
        calls = [_requeue_call(m, consumer, "release", 0.0, fenced=fenced) for m in messages]
        with redis_errors(self.settings, "returning messages"):
            await run_scripts(self.redis_client(), calls)

    async def _count_run(self, claimed: Claimed) -> None:
        """Add one to the message's runs (the hash lives a week after its last change)."""
        key = claimed.keys.runs
        with redis_errors(self.settings, "recording the start of a task"):
            pipe = self.redis_client().pipeline(transaction=True)
            pipe.hincrby(key, run_key(claimed.body), 1)
            pipe.expire(key, RUNS_TTL)
            await pipe.execute()

    async def forget_runs(self, claimed: Claimed) -> None:
        """Drop a settled message's count of runs."""
        with redis_errors(self.settings, "settling a message"):
            await self.redis_client().hdel(claimed.keys.runs, run_key(claimed.body))

    async def dead_letter_claimed(
        self, claimed: Claimed, consumer: str, reason: str, detail: str
    ) -> bool:
        """Dead-letter a claimed message; return whether `consumer` still held it."""
        args = [GROUP, consumer, claimed.id, claimed.counter, reason, detail, repr(time.time())]
        args.append(self.dead_letter_max_bytes)
        with redis_errors(self.settings, "dead-lettering a message"):
            reply = await _DEAD_LETTER(
                self.redis_client(), [claimed.stream, claimed.keys.dead], args
            )
        return bool(reply)

    # -- consuming --------------------------------------------------------------------------

    async def consume(
        self, queues: Sequence[str], credit: Credit, *, burst: bool = False
    ) -> AsyncGenerator[Delivery, None]:
        """Claim up to the credit; block in XREADGROUP while nothing is ready."""
        keys = [self.keys(queue) for queue in dict.fromkeys(queues)]
        await self._start_heartbeat(keys)
        state = Consumer(self, keys, burst)
        try:
            while True:
                limit = min(await credit.wait(), CLAIM_BATCH)
                # Redeliveries one at a time, none while one is in the worker: they run
                # alone there, and spread over the workers this way (`scripts.CLAIM`).
                claimed = await state.next_batch(limit, lambda: 0 if holds_suspect(credit) else 1)
                if claimed is None:
                    return
                state.unyielded.extend(claimed)
                while state.unyielded:
                    message = state.unyielded.popleft()
                    state.held.add(message.id)
                    yield _RedisDelivery(self, message, state.name, state.held)
        finally:
            with anyio.CancelScope(shield=True):
                for reader in state.readers:  # a blocked read ends before we look
                    await self._drop_reader(reader)
                await state.give_back()

    async def _start_heartbeat(self, keys: list[QueueKeys]) -> None:
        """Beat in these queues too, starting the heartbeat on the first call (`close` stops it)."""
        self.hot_path()
        queues = {each.queue: each for each in (*self.beat_queues, *keys)}
        self.beat_queues = tuple(queues.values())
        if self.heartbeat is not None or self.heartbeat_timeout is None:
            return
        self.heartbeat = heartbeat = Heartbeat(
            lambda: Beats(self),
            interval=self.heartbeat_interval,
            timeout=self.heartbeat_timeout,
            name=f"aqueue-heartbeat-{self.owner}",
        )
        with anyio.CancelScope(shield=True):  # a thread started is a thread stopped (close)
            await anyio.to_thread.run_sync(heartbeat.start)

    async def purge(self, queue: str) -> int:
        """Delete the queue's waiting and delayed messages (not the delivered ones)."""
        keys = self.keys(queue)
        with redis_errors(self.settings, "purging"):
            return int(await _PURGE(self.redis_client(), [*keys.streams, keys.delayed], [GROUP]))

    async def delayed(self, queue: str, limit: int = 100) -> list[Delayed]:
        """Return the messages of `queue` in its delayed set, the soonest first."""
        with redis_errors(self.settings, "listing delayed messages"):
            entries: Any = await self.redis_client().zrange(
                self.keys(queue).delayed, 0, max(limit, 1) - 1, withscores=True
            )
        found = []
        for member, due in entries[:limit]:
            priority, _, _, body = bytes(member).split(b":", 3)  # see `publish`
            found.append(Delayed(queue, body, float(due), int(priority)))
        return found

    async def queue_stats(self, queue: str) -> QueueStats:
        """Count the queue's waiting, delayed, delivered (running) and dead messages."""
        keys = self.keys(queue)
        with redis_errors(self.settings, "counting messages"):
            waiting, running, delayed = await _QUEUE_STATS(
                self.redis_client(), [*keys.streams, keys.delayed], [GROUP]
            )
            dead = (await deadletters.stats(self.redis_client(), keys)).kept
        return QueueStats(
            waiting=int(waiting), delayed=int(delayed), running=int(running), dead=dead
        )

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Return the queue's dead letters, oldest first."""
        with redis_errors(self.settings, "reading dead letters"):
            return await deadletters.dead_letters(self.redis_client(), self.keys(queue), limit)

    async def dead_letter_stats(self, queue: str) -> DeadLetterStats:
        """Return how many dead letters `queue` keeps, their bytes, and how many were dropped."""
        with redis_errors(self.settings, "counting dead letters"):
            return await deadletters.stats(self.redis_client(), self.keys(queue))

    async def retry_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Move dead letters back to their queue (priority 0, never delivered)."""
        with redis_errors(self.settings, "retrying dead letters"):
            return await deadletters.retry(self.redis_client(), self.keys(queue), ids)

    async def purge_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (those in `ids`, else all)."""
        with redis_errors(self.settings, "purging dead letters"):
            return await deadletters.purge(self.redis_client(), self.keys(queue), ids)


#: The blocking twin of each connection class `_BlockingPublisher` can use.
#: How much a blocking publish reads of its replies at a time.
_READ_SIZE = 65536

_SYNC_CONNECTIONS: dict[type[Any], type[Any]] = {
    aioredis.Connection: redis.connection.Connection,
    aioredis.SSLConnection: redis.connection.SSLConnection,
    aioredis.UnixDomainSocketConnection: redis.connection.UnixDomainSocketConnection,
}


class _BlockingPublisher(BlockingPublisher):
    """`publish` for the threads of sync callers, on a blocking connection of their own.

    Ready messages only (what `delay()` sends): one XADD each, then `WAIT` for the replicas
    under `?wait=N`, as the broker's own publish, all in one write and one round trip. A
    connection that failed is dropped and made again by the next publish (the failed one is
    not sent again: it may have been added).

    redis-py's connection sets the connection up (TLS, AUTH, the database, timeouts); then
    the publish writes to its socket and parses the replies with a hiredis reader of its own,
    where redis-py's `send_packed_command` and a `read_response` per reply cost a third more
    (measured: 12.6 against 17-19 µs of CPU to publish 4 messages), all of it on the path of
    the callers waiting for the group.
    """

    def __init__(self, settings: RedisSettings, keys: Callable[[str], QueueKeys]) -> None:
        self._settings = settings
        self._keys = keys
        self._heads: dict[tuple[str, int], bytes] = {}
        self._lock = threading.Lock()  # one call at a time; `close` waits for a publish
        self._connection: Any = None  # a redis-py blocking connection (untyped)
        self._reader = hiredis.Reader(replyError=ResponseError)  # its replies'
        self._closed = False

    def _connect(self) -> Any:
        settings = self._settings
        kwargs = dict(settings.kwargs)
        kwargs["retry"] = SyncRetry(NoBackoff(), 0)  # a publish is never sent twice
        connection_class = _SYNC_CONNECTIONS[settings.connection_class]
        connection = connection_class(**kwargs)
        connection.connect()
        return connection

    def publish(self, messages: Sequence[OutgoingMessage]) -> list[Exception | None]:
        settings = self._settings
        with self._lock:
            if self._closed:
                raise BrokerError(f"Redis at {settings.url}: the publisher is closed")
            parts = self._encode(messages)
            try:
                replies, held = self._round_trip(parts)
            except (RedisError, OSError, hiredis.HiredisError) as exc:
                connection, self._connection = self._connection, None
                if connection is not None:
                    connection.disconnect()
                raise broker_error(settings, exc, "publishing") from None
        if held < settings.wait:
            raise BrokerError(
                f"Redis at {settings.url}: only {held} of {settings.wait} replica(s) held a "
                f"published message within {settings.wait_timeout} s; it is on the primary, "
                "but may not survive its failover"
            )
        return [
            broker_error(settings, reply, "publishing") if isinstance(reply, Exception) else None
            for reply in replies
        ]

    def _encode(self, messages: Sequence[OutgoingMessage]) -> list[bytes]:
        parts = []
        for message in messages:
            if message.eta is not None:
                raise ValueError("a blocking publish takes ready messages only")
            priority = min(max(int(message.priority), 0), 9)
            head = self._heads.get((message.queue, priority))
            if head is None:
                stream = self._keys(message.queue).stream(priority)
                head = self._heads[message.queue, priority] = encode_head(
                    ("XADD", stream, "*", "b"), 5
                )
            parts.append(head + encode_bulk(message.body))
        return parts

    def _round_trip(self, parts: list[bytes]) -> tuple[list[Any], int]:
        """Send the XADDs (and `WAIT`) in one write, and read their replies."""
        settings = self._settings
        connection = self._connection
        if connection is None:
            connection = self._connect()
            self._reader = hiredis.Reader(replyError=ResponseError)
            self._connection = connection
        sock, reader = connection._sock, self._reader
        count = len(parts)
        if settings.wait:
            parts.append(encode_command(("WAIT", settings.wait, int(settings.wait_timeout * 1000))))
        sock.sendall(b"".join(parts))
        replies: list[Any] = []
        while len(replies) < len(parts):
            reply = reader.gets()
            if reply is False:  # not whole yet
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                reader.feed(data)
            elif type(reply) is ResponseError:  # an error reply: this message's alone
                error = reply_error(reply)
                if not isinstance(error, ResponseError):  # the connection's, not the message's
                    raise error
                replies.append(error)
            else:
                replies.append(reply)
        held = 0
        if settings.wait:
            held = replies.pop()
            if isinstance(held, Exception):
                raise held
        return replies[:count], held

    def close(self) -> None:
        with self._lock:
            connection, self._connection, self._closed = self._connection, None, True
        if connection is not None:
            connection.disconnect()
