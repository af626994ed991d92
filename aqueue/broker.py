"""The broker interface: the seam every transport driver implements.

A driver subclasses `Broker` and registers its URL scheme (see `aqueue.drivers`). It publishes
encoded messages and hands out `Delivery` objects; each delivery is acknowledged only after its
task finished, which makes every driver at-least-once.

The worker asks for messages with a `Credit`: the number of free slots it has right now. A
driver never holds more unacknowledged deliveries for a consumer than the credit it was given,
and it blocks on the server (a blocking read, a push consumer, a notification) while the queues
are empty, never on a clock.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

from .exceptions import BrokerError
from .mailbox import Mailbox
from .message import OutgoingMessage
from .throttle import RateLimiter, Semaphore

__all__ = [
    "DEAD_LETTER_MAX_BYTES",
    "DEAD_LETTER_MAX_COUNT",
    "UNSTARTED_FACTOR",
    "Broker",
    "Credit",
    "DeadLetter",
    "DeadLetterStats",
    "Delivery",
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


class Delivery(abc.ABC):
    """One message handed to a consumer, with the means to settle it exactly once.

    `runs` counts the times a worker recorded (`begin`) that it started this message's task
    without settling it: the crashes it may have caused. A worker begins only redelivered
    messages (`suspect`), each run alone (`aqueue.isolation`), so a message that was merely
    held by a worker that died is not blamed for its death.
    """

    __slots__ = ("body", "delivery_count", "queue", "runs")

    def __init__(self, body: bytes, queue: str, delivery_count: int, runs: int = 0) -> None:
        self.body = body
        self.queue = queue
        self.delivery_count = delivery_count  # 1 on the first delivery
        self.runs = runs

    @property
    def suspect(self) -> bool:
        """Whether this message may have been running when a worker died (a redelivery)."""
        return self.delivery_count > 1 or self.runs > 0

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
        """Give back a message that this worker claimed and never started, at once.

        Its task never ran here, so a broker that can should count neither this delivery nor a
        run (Redis): it comes back as it was. By default, a `nack`.
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


def dead_letter_size(body: bytes, reason: str, detail: str) -> int:
    """Return the bytes a dead letter counts for: its body, reason and detail (UTF-8)."""
    return len(body) + len(reason.encode()) + len(detail.encode())


class Broker(abc.ABC):
    """A message transport. Use it as an async context manager, or call `open` and `close`."""

    #: How often the worker must call `Delivery.renew` on running messages; None: never.
    renew_interval: float | None = None
    #: How many runs of a message may end in a dead worker before it is dead-lettered.
    max_deliveries: int = 5
    #: Whether the worker should keep messages claimed ahead of its free slots (half its
    #: concurrency): for a driver whose every claim is a round trip. They are renewed like
    #: running ones and given back (`Delivery.release`) first at shutdown; none is claimed
    #: ahead while a redelivered message is in the worker (see `aqueue.slots`).
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

    async def retry_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Put dead letters of `queue` (those in `ids`, else all) back on it; return how many.

        They go back at priority 0 with a fresh delivery count; unknown ids are skipped.
        """
        raise BrokerError(f"{type(self).__name__} cannot retry dead letters")

    async def purge_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters of `queue` (those named in `ids`, else all); return how many."""
        raise BrokerError(f"{type(self).__name__} cannot purge dead letters")

    def mailbox(self) -> Mailbox:
        """Return the mailbox over this broker's transport (see `aqueue.mailbox`)."""
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
