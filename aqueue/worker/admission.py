"""Admission: whether a task may start now under its rate limit and its concurrency limit.

The worker asks `Admission.admit(task)` before it runs a task. A task that must wait (its
rate-limit start is booked for later, or all its places are taken) is *held*: the worker
frees the slot at once, so other tasks keep their throughput, and a holder coroutine waits
(`Admission.wait`) before the task takes a slot again and runs. Places are given back with
`Admission.done`, and renewed while their tasks run (`Admission.renew`).

Rate limits and places are global (one Lua script / lease set in Redis) when the broker or the
result backend is Redis, and per worker otherwise; `Admission.scope` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from ..drivers.base import RateLimiter, Semaphore
from ..throttle import LocalRateLimiter, LocalSemaphore, parse_rate

if TYPE_CHECKING:
    from ..interfaces import RunnableTask

__all__ = ["Admission", "Ticket"]


@dataclass(slots=True)
class Ticket:
    """What admission decided for one task run."""

    wait: float = 0.0  # seconds until its booked rate-limit start
    token: str | None = None  # its place, under a concurrency limit
    needs_place: bool = False  # limited, and no place was free

    @property
    def held(self) -> bool:
        """Whether the task must wait before it may start."""
        return self.wait > 0 or self.needs_place


class Admission:
    """Rate limits and concurrency limits for one worker's tasks."""

    def __init__(
        self, limiter: RateLimiter | None, semaphore: Semaphore | None, *, lease: float
    ) -> None:
        self.limiter = limiter or LocalRateLimiter()
        self.semaphore = semaphore or LocalSemaphore()
        self.lease = lease
        #: Rate limits changed at runtime, by task name (None: lifted).
        self.overrides: dict[str, str | float | None] = {}
        self._places: dict[str, str] = {}  # token -> task name, for the places held now

    @property
    def scope(self) -> str:
        """Say "global" when limits hold across all workers, else "local"."""
        return self.limiter.scope

    def rate_of(self, task: RunnableTask) -> float | None:
        """Return the rate limit in force for `task`, in starts per second (None: no limit)."""
        if task.name in self.overrides:
            return parse_rate(self.overrides[task.name])
        return parse_rate(task.options.rate_limit)

    def unlimited(self, task: RunnableTask) -> bool:
        """Say whether the task has no rate limit and no concurrency limit: nothing to book."""
        options = task.options
        return options.rate_limit is None and not options.concurrency and not self.overrides

    async def admit(self, task: RunnableTask) -> Ticket:
        """Book the task's start; the ticket says whether it must be held first."""
        ticket = Ticket()
        options = task.options
        rate = self.rate_of(task)
        if rate is not None:
            ticket.wait = await self.limiter.reserve(task.name, rate)
        if options.concurrency and not ticket.held:
            await self._take_place(task, ticket)
        return ticket

    async def wait(self, task: RunnableTask, ticket: Ticket) -> None:
        """Wait out a held ticket: its booked start, then a free place."""
        if ticket.wait > 0:
            await anyio.sleep(ticket.wait)  # a booked time, not a poll: nothing to wake us earlier
            ticket.wait = 0.0
        limit = task.options.concurrency
        while limit and ticket.token is None:
            if not await self._take_place(task, ticket):
                await self.semaphore.wait(task.name, at_most=self.lease)

    async def _take_place(self, task: RunnableTask, ticket: Ticket) -> bool:
        assert task.options.concurrency is not None
        token = await self.semaphore.acquire(task.name, task.options.concurrency, self.lease)
        ticket.token, ticket.needs_place = token, token is None
        if token is not None:
            self._places[token] = task.name
        return token is not None

    async def done(self, task: RunnableTask, ticket: Ticket) -> None:
        """Give back the task's place, if it had one."""
        if ticket.token is not None:
            self._places.pop(ticket.token, None)
            await self.semaphore.release(task.name, ticket.token)

    async def renew(self) -> None:
        """Renew the leases of the places held by running tasks."""
        for token, name in list(self._places.items()):
            await self.semaphore.renew(name, token, self.lease)

    @property
    def holding_places(self) -> bool:
        """Whether any running task holds a place (whose lease needs renewing)."""
        return bool(self._places)
