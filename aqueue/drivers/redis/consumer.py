"""The consuming side of the Redis broker: one `Consumer` per `RedisBroker.consume` call.

A consumer claims with the claim script, blocks in `XREADGROUP ... BLOCK` when nothing is ready,
retries with backoff when Redis goes away, and gives back what it claimed but did not hand out.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from redis.exceptions import RedisError, ResponseError

from ...exceptions import BrokerError
from ..base import UNSTARTED_FACTOR
from ..liveness import Process, alive, this_process
from . import per_slot
from . import scripts as lua
from .client import LeanClient, Script, broker_error, run_scripts

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..heartbeat import Heartbeat
    from .client import RedisSettings

__all__ = [
    "CLAIM_BATCH",
    "GROUP",
    "MAX_BLOCK",
    "Beats",
    "Claimed",
    "Consumer",
    "ConsumerHost",
    "QueueKeys",
    "text",
]

logger = logging.getLogger("aqueue.drivers.redis.broker")

GROUP = "aqueue"
#: The most messages one claim takes. A worker with more free slots claims again as soon as
#: this batch is handed out, so the next claim travels while this one's tasks run, instead of
#: the worker and Redis waiting for each other in turn (measured: 40k against 30k no-op
#: tasks/s for claims of up to 500).
CLAIM_BATCH = 100
#: The longest an idle consumer blocks in one XREADGROUP call.
MAX_BLOCK = 30.0
#: The longest wait between two attempts to reach a Redis that went away.
MAX_BACKOFF = 2.0
#: How soon a consumer that left redeliveries to others (its worker held one) looks again.
RECHECK = 0.5
#: A consumer with nothing pending and unseen for this long is removed from the groups.
STALE_CONSUMER_MS = 3_600_000


class ConsumerHost(Protocol):
    """What a `Consumer` needs of its broker (`RedisBroker` is one): no private reach-ins."""

    settings: RedisSettings
    owner: str  # this broker's consumers are named after it (see `scripts`)
    beat_queues: tuple[QueueKeys, ...]  # the queues its heartbeat writes in, each consumed
    heartbeat: Heartbeat | None
    sweep_interval: float
    max_deliveries: int
    visibility_timeout: float
    dead_letter_max_bytes: int

    @property
    def is_open(self) -> bool:
        """Whether the broker is open (a consumer stops quietly once it is not)."""
        ...

    def redis_client(self) -> aioredis.Redis:
        """Return the broker's redis-py client, for pipelines."""
        ...

    def hot_path(self) -> LeanClient:
        """Return the broker's pipelining client, for claims."""
        ...

    def blocking_reader(self) -> LeanClient:
        """Return a new connection for this consumer's blocking reads."""
        ...

    async def give_back_unyielded(
        self, messages: list[Claimed], consumer: str, *, fenced: bool
    ) -> None:
        """Give back claimed messages that were never handed out."""
        ...

    async def settle_unacked(self) -> None:
        """Send again the acks that Redis did not answer."""
        ...

    async def forget_runs(self, claimed: Claimed) -> None:
        """Drop a settled message's count of runs."""
        ...

    async def dead_letter_claimed(
        self, claimed: Claimed, consumer: str, reason: str, detail: str
    ) -> bool:
        """Dead-letter a claimed message; return whether this consumer still held it."""
        ...


_CLAIM = Script(lua.CLAIM)
_BEAT = Script(lua.BEAT)
_GONE = Script(lua.GONE)


class QueueKeys:
    """The keys of one queue."""

    __slots__ = ("beats", "dead", "delayed", "procs", "queue", "runs", "streams", "wake")

    def __init__(self, prefix: str, queue: str) -> None:
        base = f"{prefix}:{{{queue}}}"
        self.queue = queue
        self.streams = [f"{base}:p{priority}" for priority in range(9, -1, -1)]  # p9 first
        self.delayed = f"{base}:delayed"
        self.wake = f"{base}:wake"
        self.dead = f"{base}:dead"
        self.runs = f"{base}:runs"  # recorded runs, by `run_key` of the message body
        self.beats = f"{base}:beats"
        self.procs = f"{base}:procs"  # each owner's process (see `scripts`)

    def stream(self, priority: int) -> str:
        """Return the stream of `priority` (0-9)."""
        return self.streams[9 - priority]


@dataclass(slots=True)
class Claimed:
    """A message the claim script handed this consumer."""

    keys: QueueKeys
    priority: int
    id: str
    body: bytes
    n: int  # deliveries before this stream entry
    counter: int  # deliveries of this stream entry (the fencing token, with the consumer)
    runs: int = 0  # recorded runs (`begin`, `nack`), looked up for redeliveries only
    returned: bool = False  # given back (`release`, `nack`): it goes before queued messages

    @property
    def stream(self) -> str:
        """Return the stream the message was claimed from."""
        return self.keys.stream(self.priority)


def run_key(body: bytes) -> str:
    """Return the field of a message in its queue's runs hash (the same after `nack`)."""
    return hashlib.sha1(body, usedforsecurity=False).hexdigest()


def text(value: Any) -> str:
    """Return a reply field as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_fields(flat: Any) -> tuple[bytes, int] | str:
    """Return the body and delivery count of a stream entry, or what is wrong with it.

    The Python twin of `fields_of` in `scripts`: anyone can XADD anything to a stream.
    """
    fields: dict[Any, Any] = {}
    if isinstance(flat, list):
        fields = dict(zip(flat[::2], flat[1::2], strict=False))
    body, count = fields.get(b"b"), fields.get(b"n", b"0")
    if not isinstance(count, bytes) or not (0 < len(count) <= 9 and count.isdigit()):
        shown = count[:40].decode(errors="replace") if isinstance(count, bytes) else "nil"
        return f"stream entry field n is '{shown}', not a delivery count"
    if not isinstance(body, bytes):
        return "stream entry has no body (field b)"
    return body, int(count)


def _claim_keys(queues: list[QueueKeys]) -> list[str]:
    """Return the claim script's keys for these queues (see `scripts.CLAIM`)."""
    keys: list[str] = []
    for each in queues:
        keys.extend((*each.streams, each.delayed, each.dead))
    keys.extend(each.beats for each in queues)
    return keys


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Consumer:
    """The state of one `consume` call: its consumer name, what it holds, when to sweep."""

    def __init__(self, broker: ConsumerHost, keys: list[QueueKeys], burst: bool) -> None:
        self.broker = broker
        self.keys = keys
        self.burst = burst
        self.name = f"{broker.owner}:{uuid.uuid4().hex[:8]}"  # see `scripts`
        self.reader = broker.blocking_reader()  # its blocking reads: a connection of its own
        #: On a cluster, one reader per queue (a read touches one slot): see `per_slot`.
        self.readers = [self.reader]
        if broker.settings.cluster:
            self.readers += [broker.blocking_reader() for _ in keys[1:]]
        self.unyielded: deque[Claimed] = deque()
        self.held: set[str] = set()  # ids yielded and not settled yet
        self.next_sweep = 0.0  # the first claim sweeps
        #: When (a time.time()) to look for dead owners again, if nothing comes before.
        self.next_judgment = math.inf
        self.failures = 0
        self.by_stream: dict[str, tuple[QueueKeys, int]] = {}
        for each in keys:
            for priority in range(10):
                self.by_stream[each.stream(priority)] = (each, priority)

    async def next_batch(
        self, limit: int, orphans: Callable[[], int] = lambda: 1
    ) -> list[Claimed] | None:
        """Return the next messages to hand out (at most `limit`), or None to stop.

        Each claim takes at most `orphans()` of them from dead consumers or run-out leases
        (see `scripts.CLAIM`): 0 while the worker holds a redelivered message, which may
        change while this waits.
        """
        while True:
            try:
                batch, next_due = await self._claim(limit, orphans())
                if batch is None:  # only dead-lettered: look again
                    continue
                if batch or self.burst:
                    return batch or None
                batch = await self._block(limit, next_due)
                self.failures = 0
                if batch:
                    return batch
            except (RedisError, OSError) as exc:
                if not self.broker.is_open:
                    return None  # the broker closed under us
                if self.burst:
                    raise broker_error(self.broker.settings, exc, "consuming") from None
                await self._back_off(exc)

    async def _back_off(self, exc: BaseException) -> None:
        self.failures += 1
        delay = min(MAX_BACKOFF, 0.1 * 2 ** (self.failures - 1)) * random.uniform(0.5, 1.0)
        logger.warning(
            "%s; trying again in %.1fs", broker_error(self.broker.settings, exc, "consuming"), delay
        )
        await anyio.sleep(delay)

    async def _claim(
        self, limit: int, orphans: int = 1
    ) -> tuple[list[Claimed] | None, float | None]:
        """Run the claim script; (None, _) when it only dead-lettered messages."""
        broker = self.broker
        await broker.settle_unacked()  # acks lost to an outage first: no second run for them
        now = time.time()
        due = now >= self.next_sweep
        sweep = due and orphans > 0
        if sweep:
            self.next_sweep = now + broker.sweep_interval
        elif due:  # the worker holds a redelivery: sweep once it is done
            self.next_sweep = now + min(RECHECK, broker.sweep_interval)
        heartbeat = broker.heartbeat
        judging = heartbeat is not None and heartbeat.judging()
        args = [
            GROUP,
            self.name,
            limit,
            repr(now),
            broker.max_deliveries * UNSTARTED_FACTOR,  # a backstop: runs are counted below
            int(sweep),
            int(broker.visibility_timeout * 1000),
            STALE_CONSUMER_MS,
            broker.dead_letter_max_bytes,
            1 if judging else 2 if heartbeat is not None else 0,  # 2: gone processes only
            broker.owner,
            int((heartbeat.timeout if heartbeat else 0) * 1000),
            orphans,
        ]
        if len(self.readers) > 1:  # a cluster: one script per queue's slot
            calls = [(_CLAIM, _claim_keys([each]), args) for each in self.keys]
            merged = per_slot.merge_claims(await run_scripts(broker.hot_path(), calls), limit)
            entries, extra, buried, next_due, next_check, robbed = merged
            if extra:  # the best `limit` of them all are kept
                await broker.give_back_unyielded(self._claimed(extra), self.name, fenced=True)
        else:
            entries, buried, next_due, next_check, robbed = await _CLAIM(
                broker.hot_path(), _claim_keys(self.keys), args
            )
        self.failures = 0
        self._judged(judging, next_check, robbed, orphans)
        claimed = self._claimed(entries)
        if claimed:
            claimed = await self._with_runs(claimed)
            if not claimed:
                return None, None  # only dead-lettered
        if not claimed and int(buried):
            return None, None
        return claimed, float(next_due) if next_due is not None else None

    def _claimed(self, entries: list[Any]) -> list[Claimed]:
        """Return the claim script's entries as `Claimed` messages."""
        return [
            Claimed(
                self.keys[int(q) - 1],
                int(p),
                text(i),
                bytes(body),
                int(n),
                int(counter),
                returned=int(returned) == 1,
            )
            for q, p, i, body, n, counter, returned in entries
        ]

    def _judged(self, judging: bool, next_check: Any, robbed: list[Any], orphans: int) -> None:
        """Note when to judge again, and log what was taken from dead consumers."""
        heartbeat = self.broker.heartbeat
        if heartbeat is None:
            return
        if judging:  # when the oldest beat goes stale; a worker that starts meanwhile
            # and dies is seen by the next look, a timeout from now
            wait = heartbeat.timeout if next_check is None else int(next_check) / 1000
            wait = min(wait, heartbeat.timeout)
            if len(robbed) > 2 and int(robbed[2]):  # dead owners' entries left (`orphans`)
                wait = 0 if orphans else RECHECK
        else:
            wait = heartbeat.judging_from() - time.monotonic()
        # Not sooner than half a beat: a dead owner found now was dealt with already.
        self.next_judgment = time.time() + max(wait, heartbeat.interval / 2)
        taken, owners = int(robbed[0]), int(robbed[1])
        if taken:
            logger.warning(
                "reclaiming %d message(s) of %d consumer(s) whose heartbeat stopped more than "
                "%gs ago",
                taken,
                owners,
                heartbeat.timeout,
            )

    async def _block(self, limit: int, next_due: float | None) -> list[Claimed]:
        """Block until a message arrives, or an earlier delayed one is added.

        Or until it is time to look again: the next delayed message, the next sweep.
        """
        wake_at = min(
            self.next_sweep, self.next_judgment, next_due if next_due is not None else math.inf
        )
        timeout = min(max(wake_at - time.time(), 0.001), MAX_BLOCK)
        block_ms = max(1, int(timeout * 1000))
        try:
            if len(self.readers) > 1:
                commands = [self._read_command([each], limit, block_ms) for each in self.keys]
                hot = self.broker.hot_path()
                reply: Any = await per_slot.read_each(
                    self.readers, hot, [each.wake for each in self.keys], commands
                )
            else:
                reply = await self.reader.execute(*self._read_command(self.keys, limit, block_ms))
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_groups()  # a restarted Redis lost them
            return []
        return await self._with_runs(await self._sort_out(reply or [], limit))

    def _read_command(self, queues: list[QueueKeys], limit: int, block_ms: int) -> list[Any]:
        """Return the blocking XREADGROUP of every stream of these queues."""
        streams = [each.stream(p) for each in queues for p in range(10)]
        streams += [each.wake for each in queues]
        command: list[Any] = ["XREADGROUP", "GROUP", GROUP, self.name, "COUNT", limit]
        command += ["BLOCK", block_ms, "STREAMS", *streams]
        return command + [">"] * len(streams)

    async def _ensure_groups(self) -> None:
        pipe = self.broker.redis_client().pipeline(transaction=False)
        for stream in [*self.by_stream, *(each.wake for each in self.keys)]:
            pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await pipe.execute(raise_on_error=False)  # BUSYGROUP: it exists, fine

    async def _sort_out(self, reply: list[Any], limit: int) -> list[Any]:
        """Split a blocking read into messages (at most `limit`) and wake-up signals."""
        wakes, claimed, garbage = self._split(reply)
        if wakes:
            pipe = self.broker.redis_client().pipeline(transaction=False)
            for stream, ids in wakes.items():
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()
        for message, problem in garbage:  # never handed out: nothing could run it
            await self.broker.dead_letter_claimed(message, self.name, "undecodable", problem)
        claimed.sort(key=lambda message: (-message.priority, _id_key(message.id)))
        extra = claimed[limit:]
        if extra:  # several streams served at once (Redis 7.2+): give back
            await self.broker.give_back_unyielded(extra, self.name, fenced=True)
        kept = []
        for message in claimed[:limit]:
            if message.n + 1 > self.broker.max_deliveries * UNSTARTED_FACTOR:
                detail = f"delivered {message.n} times without a recorded start"
                await self.broker.dead_letter_claimed(message, self.name, "max-deliveries", detail)
            else:
                kept.append(message)
        return kept

    async def _with_runs(self, batch: list[Claimed]) -> list[Claimed]:
        """Look up the recorded runs of redelivered messages; dead-letter those with too many."""
        again = [message for message in batch if message.n + message.counter > 1]
        if not again:
            return batch
        pipe = self.broker.redis_client().pipeline(transaction=False)
        for message in again:
            pipe.hget(message.keys.runs, run_key(message.body))
        for message, runs in zip(again, await pipe.execute(), strict=True):
            message.runs = int(runs or 0)
        limit = self.broker.max_deliveries
        kept = []
        for message in batch:
            if message.runs >= limit:
                detail = f"started {message.runs} times without being acknowledged"
                await self.broker.dead_letter_claimed(message, self.name, "max-deliveries", detail)
                await self.broker.forget_runs(message)
            else:
                kept.append(message)
        return kept

    def _split(
        self, reply: list[Any]
    ) -> tuple[dict[str, list[str]], list[Claimed], list[tuple[Claimed, str]]]:
        """Sort a blocking read's entries: wake-ups, messages, and garbage with its fault."""
        wakes: dict[str, list[str]] = {}
        claimed: list[Claimed] = []
        garbage: list[tuple[Claimed, str]] = []
        for stream, entries in reply:
            place = self.by_stream.get(text(stream))
            if place is None:
                wakes.setdefault(text(stream), []).extend(text(entry_id) for entry_id, _ in entries)
                continue
            keys, priority = place
            for entry_id, flat in entries:
                parsed = entry_fields(flat)
                if isinstance(parsed, str):
                    garbage.append((Claimed(keys, priority, text(entry_id), b"", 0, 1), parsed))
                else:
                    claimed.append(Claimed(keys, priority, text(entry_id), *parsed, 1))
        return wakes, claimed, garbage

    async def give_back(self) -> None:
        """Give back what was claimed and not handed out.

        That includes claims whose reply a cancellation cut off: they are found among this
        consumer's pending entries.
        """
        broker = self.broker
        if not broker.is_open:
            return  # closed: their leases run out instead
        client = broker.redis_client()
        # Taken before asking: a message acknowledged meanwhile leaves `held` once its ack has
        # landed, and must not look unyielded then (measured: a burst worker's last claim
        # gave back ~350 such messages one round trip at a time, each a no-op).
        held = set(self.held)
        try:
            pipe = client.pipeline(transaction=False)
            streams = list(self.by_stream)
            for stream in streams:
                pipe.xpending_range(stream, GROUP, "-", "+", 10_000, self.name)
            replies = await pipe.execute(raise_on_error=False)
            self.unyielded.clear()  # pending for this consumer: found below
            lost = []
            for stream, reply in zip(streams, replies, strict=True):
                if isinstance(reply, Exception):
                    continue
                keys, priority = self.by_stream[stream]
                for entry in reply:
                    entry_id = text(entry["message_id"])
                    if entry_id not in held:
                        lost.append(Claimed(keys, priority, entry_id, b"", 0, 0))
            if lost:
                await broker.give_back_unyielded(lost, self.name, fenced=False)
        except (RedisError, OSError, BrokerError):
            logger.warning(
                "could not give back claimed messages; their leases will run out", exc_info=True
            )


class Beats:
    """A broker's heartbeat, on a connection of its own used only by its thread.

    It writes the beats of every queue the broker consumes (see `scripts`), with its process;
    each beat reads the other owners' processes back, and an owner whose process is gone
    (`aqueue.drivers.liveness`: this machine, this pid namespace) is made dead at once.
    """

    def __init__(self, broker: ConsumerHost) -> None:
        self._broker = broker
        self._client = broker.settings.lean()
        process = this_process()
        self._process = (
            "" if process is None else f"{process.place}\t{process.pid}\t{process.started}"
        )

    async def beat(self) -> None:
        """Record that this consumer is alive; declare dead the owners whose process is gone."""
        broker = self._broker
        queues = broker.beat_queues
        calls = [(_BEAT, [q.beats, q.procs], [broker.owner, 0, self._process]) for q in queues]
        if not calls:
            return
        replies = await run_scripts(self._client, calls)
        gone = [
            (queue, owner)
            for queue, reply in zip(queues, replies, strict=True)
            for owner, process in _pairs(reply)
            if owner != broker.owner and _gone(process)
        ]
        if gone:
            marks = [(_GONE, [q.beats, q.procs, q.wake], [owner]) for q, owner in gone]
            marked = await run_scripts(self._client, marks)
            dead = sorted({owner for (_, owner), m in zip(gone, marked, strict=True) if m})
            if dead:
                logger.warning(
                    "consumer(s) %s: process gone; their messages go to the next claim",
                    ", ".join(dead),
                )

    async def forget(self) -> None:
        """Remove this consumer's beat: it stops for good."""
        broker = self._broker
        calls = [(_BEAT, [q.beats, q.procs], [broker.owner, 1, ""]) for q in broker.beat_queues]
        if calls:
            await run_scripts(self._client, calls)

    async def aclose(self) -> None:
        """Close the heartbeat's connection."""
        await self._client.aclose()


def _pairs(reply: Any) -> list[tuple[str, str]]:
    """Return the (owner, process) pairs of a `BEAT` reply (a flat list; else none)."""
    if not isinstance(reply, list):
        return []
    return [(text(reply[i]), text(reply[i + 1])) for i in range(0, len(reply) - 1, 2)]


def _gone(process: str) -> bool:
    """Whether a recorded process ("place<TAB>pid<TAB>started") is surely gone."""
    place, _, rest = process.partition("\t")
    pid, _, started = rest.partition("\t")
    if not (pid.isdigit() and started.isdigit()):
        return False  # written by something else: heartbeats decide
    return not alive(Process(place, int(pid), int(started)))
