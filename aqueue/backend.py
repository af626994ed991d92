"""The result backend interface: where workers put results and callers wait for them.

Results are opaque bytes to a backend, stored with their state (see `aqueue.states`) and a
time to live. `wait` returns once a ready state is stored, and waits on a notification where
the backend has one (pub/sub, a reply queue, a wake-up socket), never on a poll loop.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from .throttle import RateLimiter, Semaphore

__all__ = ["ResultBackend", "StoredResult"]


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A state and its encoded result metadata, as a backend keeps them."""

    state: str
    payload: bytes


class ResultBackend(abc.ABC):
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
