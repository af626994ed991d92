"""The seams every driver implements: brokers, result backends, mailboxes and throttles.

A driver subclasses `Broker` (and, if it stores results, `ResultBackend`) and registers its URL
scheme (see `aqueue.drivers`).

**Brokers** publish encoded messages and hand out `Delivery` objects; each delivery is
acknowledged only after its task finished, which makes every driver at-least-once. The worker
asks for messages with a `Credit`: the number of free slots it has right now. A driver never
holds more unacknowledged deliveries for a consumer than the credit it was given, and it blocks
on the server (a blocking read, a push consumer, a notification) while the queues are empty,
never on a clock.

**Result backends** store results as opaque bytes with their state (see `aqueue.states`) and a
time to live. `wait` returns once a ready state is stored, and waits on a notification where
the backend has one (pub/sub, a reply queue, a wake-up socket), never on a poll loop.

**The mailbox** carries how the app and its workers talk outside the task queues. Every broker
offers one (`Broker.mailbox()`), over its own transport: pub/sub on Redis, a topic exchange on
RabbitMQ, the database on SQLite, memory in one process. It carries

- **topics**: `publish(topic, data)` reaches every current subscriber of the topic (fan-out;
  nothing is kept for subscribers that come later). The control plane sends commands on
  `control.broadcast` and `control.<hostname>`, and replies on a topic of the asker's;
- **settings**: a small durable key-value store (`put`, `get`, `items`, `delete`) for runtime
  changes that a restarted worker must pick up: rate limits set with `aqueue control`,
  revoked task ids.

**Throttles** (`RateLimiter`, `Semaphore`) are described in `aqueue.throttle`, which holds their
in-process implementations; a broker or backend may offer global ones.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol, Self, TypeAlias

from ..exceptions import BrokerError
from ..message import OutgoingMessage

__all__ = [
    "DEAD_LETTER_MAX_BYTES",
    "DEAD_LETTER_MAX_COUNT",
    "UNSTARTED_FACTOR",
    "BlockingPublisher",
    "Broker",
    "ChordStep",
    "Credit",
    "DeadLetter",
    "DeadLetterStats",
    "Delayed",
    "Delivery",
    "Mailbox",
    "QueueStats",
    "RateLimiter",
    "ResultBackend",
    "Semaphore",
    "StoredResult",
    "holds_suspect",
]

#: The dead letters a queue keeps, in bytes (bodies, reasons and details) and in number: past
#: either, the oldest are dropped (the newest is always kept). `broker_dead_letter_max_bytes`
#: (the broker option `dead_letter_max_bytes`) changes the first.
DEAD_LETTER_MAX_BYTES = 64 << 20
DEAD_LETTER_MAX_COUNT = 100_000

#: A message delivered `UNSTARTED_FACTOR * max_deliveries` times is dead-lettered even with no
#: run recorded: a backstop for one that kills its worker before its task starts.
UNSTARTED_FACTOR = 10


class Credit(Protocol):
    """How many more deliveries a consumer may take now."""

    async def wait(self) -> int:
        """Wait until at least one slot is free; return how many are."""
        ...


def holds_suspect(credit: Credit) -> bool:
    """Whether the consumer behind `credit` holds a redelivered message now (`suspects`).

    A worker runs redelivered messages apart: in quarantine processes
    (`aqueue.worker.quarantine`), or one at a time (`aqueue.worker.isolation`); a broker
    that can tell them apart before handing them out (messages of dead consumers, leases that
    ran out) takes none while the worker holds one, and one at a time otherwise, so that they
    spread over the workers. A credit without the attribute holds none.
    """
    return bool(getattr(credit, "suspects", 0))


class Delivery(abc.ABC):
    """One message handed to a consumer, with the means to settle it exactly once.

    `runs` counts the times a worker recorded (`begin`) that it started this message's task
    without settling it: the crashes it may have caused. A worker begins only redelivered
    messages (`suspect`), each run apart (`aqueue.worker.quarantine`, `aqueue.worker.isolation`),
    so a message that was merely held by a worker that died is not blamed for its death.
    """

    __slots__ = ("body", "delivery_count", "queue", "returned", "runs", "suspect")

    #: Whether this message may have been running when a worker died (a redelivery). An
    #: attribute, not a property: the worker reads it several times per task.
    suspect: bool

    def __init__(self, body: bytes, queue: str, delivery_count: int, runs: int = 0) -> None:
        self.body = body
        self.queue = queue
        self.delivery_count = delivery_count  # 1 on the first delivery
        self.runs = runs
        self.suspect = delivery_count > 1 or runs > 0
        #: Given back to the queue unfinished (a shutdown, a `nack`) and taken again: a
        #: worker runs it before the messages it took ahead of its slots (issue 19, finding 7).
        self.returned = False

    async def begin(self) -> None:  # noqa: B027 - deliberately a no-op by default
        """Record durably that a run of the task starts now (`runs` of later deliveries).

        A broker whose messages do not outlive the worker (memory) needs no record.
        """

    @abc.abstractmethod
    async def ack(self) -> None:
        """Remove the message for good: its task finished."""

    @abc.abstractmethod
    async def nack(self, *, delay: float = 0.0) -> None:
        """Give the message back to its queue, to be delivered again after `delay` seconds."""

    async def release(self) -> None:
        """Give back, at once, a message whose run here did not end in a crash.

        Either its task never started, or this worker's own shutdown interrupted it: nothing to
        blame it for, so a broker counts neither this delivery nor a run, and it comes back as
        it was (not a suspect, see `aqueue.worker.isolation`). By default, a `nack`.
        """
        await self.nack(delay=0.0)

    @abc.abstractmethod
    async def dead_letter(self, reason: str, detail: str = "") -> None:
        """Move the message to its queue's dead letters with a machine-readable reason."""

    async def renew(self) -> None:  # noqa: B027 - deliberately a no-op by default
        """Extend the lease of a message that is still being worked on.

        Brokers that hold a message for as long as the consumer's connection lives (AMQP) need
        no renewal; lease-based brokers (SQLite, Redis) override this.
        """


@dataclass(frozen=True, slots=True)
class Delayed:
    """A message the broker holds until it is due: a countdown, an ETA, a retry's delay."""

    queue: str
    body: bytes
    due: float  # POSIX time
    priority: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a worker refused, with the reason it gave."""

    queue: str
    body: bytes
    reason: str
    detail: str
    at: float
    #: The driver's name for it, for `retry_dead_letters` and `purge_dead_letters`.
    id: str = ""

    @property
    def size(self) -> int:
        """What it counts for against `dead_letter_max_bytes`."""
        return dead_letter_size(self.body, self.reason, self.detail)


@dataclass(frozen=True, slots=True)
class DeadLetterStats:
    """What a queue's dead letters hold: how many, their bytes, how many were dropped.

    None where the driver cannot know (RabbitMQ: the bytes and the drops of a length policy).
    """

    kept: int
    bytes: int | None
    dropped: int | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What a queue holds now (`Broker.queue_stats`, `aqueue inspect queues`).

    `waiting`: ready to be delivered; `delayed`: with an eta (or a retry countdown) still
    ahead; `running`: delivered and not yet settled (None where the driver cannot tell:
    memory, RabbitMQ); `dead`: dead letters kept.
    """

    waiting: int
    delayed: int
    running: int | None
    dead: int


def dead_letter_size(body: bytes, reason: str, detail: str) -> int:
    """Return the bytes a dead letter counts for: its body, reason and detail (UTF-8)."""
    return len(body) + len(reason.encode()) + len(detail.encode())


class RateLimiter(abc.ABC):
    """Books task starts at a rate."""

    #: "global": one rate for all workers; "local": each worker keeps the rate on its own.
    scope: Literal["global", "local"]

    @abc.abstractmethod
    async def reserve(self, key: str, rate: float, burst: int = 1) -> float:
        """Book the next start of `key` at `rate` per second; return seconds to wait for it.

        `burst` starts may go at once after a quiet spell; beyond it, starts are spaced
        `1 / rate` apart.
        """


class Semaphore(abc.ABC):
    """At most `limit` holders of a key at once, with leases that a dead holder cannot keep."""

    #: "global": counted across all workers; "local": in this worker only.
    scope: Literal["global", "local"]

    @abc.abstractmethod
    async def acquire(self, key: str, limit: int, lease: float) -> str | None:
        """Take a place for `lease` seconds; return its token, or None if all are taken."""

    @abc.abstractmethod
    async def renew(self, key: str, token: str, lease: float) -> None:
        """Extend a held place's lease."""

    @abc.abstractmethod
    async def release(self, key: str, token: str) -> None:
        """Give a place back, waking a waiter."""

    @abc.abstractmethod
    async def wait(self, key: str, at_most: float) -> None:
        """Return when a place of `key` may have come free, or after `at_most` seconds."""


class Mailbox(abc.ABC):
    """Fan-out topics and durable settings over a broker's transport."""

    @abc.abstractmethod
    async def publish(self, topic: str, data: bytes) -> None:
        """Send `data` to every current subscriber of `topic`."""

    @abc.abstractmethod
    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Receive what is published on `topic` from the moment the context is entered."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a setting, for `ttl` seconds or for good."""

    @abc.abstractmethod
    async def items(self, prefix: str) -> dict[str, bytes]:
        """Return every live setting whose key starts with `prefix`."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove a setting."""

    async def claim(self, key: str, ttl: float) -> bool:
        """Take `key` for `ttl` seconds: True for exactly one of the callers racing for it.

        Atomic with the broker's own primitive; several beats claim each run so one sends it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot claim keys")


class _Connected(abc.ABC):
    """Opened and closed by `async with`: what brokers and result stores share."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; idempotent."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class BlockingPublisher(abc.ABC):
    """`Broker.publish` for plain threads, blocking: one thread at a time calls it."""

    @abc.abstractmethod
    def publish(self, messages: Sequence[OutgoingMessage]) -> Sequence[Exception | None]:
        """Put ready messages on their queues; return once the broker holds them durably.

        Return each message's outcome: None if sent, else the error of that message alone
        (the others were sent); raise if the publish failed as a whole (none or only some
        may have been sent).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; a later `publish` fails. Idempotent."""


class Broker(_Connected):
    """A message transport. Use it as an async context manager, or call `open` and `close`."""

    #: How often the worker must call `Delivery.renew` on running messages; None: never.
    renew_interval: float | None = None
    #: How many runs of a message may end in a dead worker before it is dead-lettered.
    max_deliveries: int = 5
    #: Whether the worker should keep messages claimed ahead of its free slots (half its
    #: concurrency): for a driver whose every claim is a round trip. They are renewed like
    #: running ones and given back (`Delivery.release`) first at shutdown; none is claimed
    #: ahead while a redelivered message is in the worker (see `aqueue.worker.slots`).
    claims_ahead: bool = False

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        self.url = url
        self.options = options

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create what the driver needs; idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; idempotent."""

    @abc.abstractmethod
    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Put messages on their queues; return once the broker holds them durably."""

    def blocking_publisher(self) -> BlockingPublisher | None:
        """Return a publisher that sync callers' threads use themselves, or None.

        Called on the broker's loop (the app's I/O thread) once the broker is open. With
        one, the threads of concurrent sync calls publish in groups, one of them for all the
        others (no hop to the I/O loop and back); without one, they go through the I/O loop.
        """
        return None

    @abc.abstractmethod
    def consume(
        self, queues: Sequence[str], credit: Credit, *, burst: bool = False
    ) -> AsyncGenerator[Delivery, None]:
        """Yield deliveries from `queues`, at most as many unsettled as `credit` allows.

        Across queues, a higher priority goes first, then the older message. With `burst`, stop
        once no message is ready (delayed messages not yet due do not count). Closing the
        generator gives back anything it claimed but did not yield.
        """

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Delete every waiting message of `queue`; return how many went."""

    @abc.abstractmethod
    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Return the oldest dead letters of `queue`, up to `limit`."""

    async def dead_letter_stats(self, queue: str) -> DeadLetterStats:
        """Return how many dead letters `queue` keeps, their bytes, and how many were dropped."""
        raise BrokerError(f"{type(self).__name__} cannot count dead letters")

    async def delayed(self, queue: str, limit: int = 100) -> list[Delayed]:
        """Return the messages of `queue` not due yet, the soonest first, up to `limit`."""
        raise BrokerError(f"{type(self).__name__} cannot list its delayed messages")

    async def retry_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Put dead letters of `queue` (those in `ids`, else all) back on it; return how many.

        They go back at priority 0 with a fresh delivery count; unknown ids are skipped.
        """
        raise BrokerError(f"{type(self).__name__} cannot retry dead letters")

    async def purge_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters of `queue` (those named in `ids`, else all); return how many."""
        raise BrokerError(f"{type(self).__name__} cannot purge dead letters")

    async def queue_stats(self, queue: str) -> QueueStats:
        """Return what `queue` holds now: waiting, delayed, running and dead messages."""
        raise BrokerError(f"{type(self).__name__} cannot count the messages of a queue")

    def mailbox(self) -> Mailbox:
        """Return the mailbox over this broker's transport (see `Mailbox`)."""
        raise BrokerError(
            f"{type(self).__name__} has no mailbox: inspect, control and runtime rate limits "
            "need a broker that provides one"
        )

    def rate_limiter(self) -> RateLimiter | None:
        """Return a limiter shared by every worker of this broker, if it can have one."""
        return None

    def semaphore(self) -> Semaphore | None:
        """Return a semaphore shared by every worker of this broker, if it can have one."""
        return None


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A state and its encoded result metadata, as a backend keeps them."""

    state: str
    payload: bytes


#: What `ResultBackend.chord_part` tells the worker that recorded a header task: "fire" (every
#: header task is recorded: send the callback), "fail" (one failed: fail the chord), or "wait"
#: (more to come, another recorder claimed the chord, or it was settled already).
ChordStep: TypeAlias = Literal["fire", "fail", "wait"]


class ResultBackend(_Connected):
    """A result store. Use it as an async context manager, or call `open` and `close`."""

    #: Whether every process can `fetch` what a worker stored (not so for `rpc://`, whose
    #: results travel to the caller alone).
    shared: ClassVar[bool] = True
    #: Whether expired results stay stored until `purge_expired` deletes them (SQLite); beat's
    #: housekeeping entry calls it hourly for such stores.
    keeps_expired: ClassVar[bool] = False

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        self.url = url
        self.options = options

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and wake no one; idempotent."""

    async def purge_expired(self) -> int:
        """Delete the expired results; return how many (0 where the store expires them)."""
        return 0

    def message_headers(self) -> Mapping[str, Any]:
        """Headers for every message the app sends, so its results can find their way back.

        A backend that routes results to the sending process (`rpc://`) names its reply queue
        here; the worker hands the headers back to `store`.
        """
        return {}

    @abc.abstractmethod
    async def store(
        self,
        task_id: str,
        state: str,
        payload: bytes,
        ttl: float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Store the latest state of a task, replacing the one before, for `ttl` seconds.

        `headers` are the task message's headers (see `message_headers`).
        """

    @abc.abstractmethod
    async def fetch(self, task_id: str) -> StoredResult | None:
        """Return what is stored for the task, or None."""

    @abc.abstractmethod
    async def wait(self, task_id: str) -> StoredResult:
        """Return once the task is in a ready state; the caller bounds the wait with a timeout."""

    @abc.abstractmethod
    async def forget(self, task_id: str) -> None:
        """Delete what is stored for the task."""

    def rate_limiter(self) -> RateLimiter | None:
        """Return a limiter shared by every worker using this store, if it can have one."""
        return None

    def semaphore(self) -> Semaphore | None:
        """Return a semaphore shared by every worker using this store, if it can have one."""
        return None

    async def fetch_many(self, task_ids: Sequence[str]) -> list[StoredResult | None]:
        """Return what is stored for each task, in order (a chord callback's arguments).

        By default one `fetch` after another; a store that can look many up at once should.
        """
        return [await self.fetch(task_id) for task_id in task_ids]

    #: Whether the store counts chord headers (`chord_part`, `chord_done`): chords need it.
    counts_chords: ClassVar[bool] = False

    async def chord_part(
        self, chord_id: str, task_id: str, size: int, ttl: float, *, ok: bool
    ) -> ChordStep:
        """Record, atomically, that header task `task_id` of a chord of `size` finished.

        Each task id counts once however often it is recorded (a redelivered task records
        again). With `ok=False` the chord is failed. The first recorder that finds all `size`
        ids recorded (or a failure) *claims* the chord, in the same atomic step, and is told
        "fire" (or "fail"); every other recorder is told "wait". The claimant is told so
        again each time it records until `chord_done` (its message redelivered after it died
        before sending: it sends again), then "wait". The records live for `ttl` seconds.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot count chords")

    async def chord_done(self, chord_id: str, ttl: float) -> None:
        """Record that the chord's callback was sent (or the chord failed): no more "fire"."""
        raise NotImplementedError(f"{type(self).__name__} cannot count chords")

    async def chord_run(self, chord_id: str, task_id: str, token: str, ttl: float) -> bool:
        """Claim, atomically, the run of task `task_id` sent by chord `chord_id`'s claimant.

        Each message the claimant sends carries a token of its own. The first token checked
        for a task id is kept (for `ttl` seconds): True for it (again on redelivery of its
        message), False for any other, a second copy sent after a crash, which must not run.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot count chords")
