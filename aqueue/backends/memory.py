"""`memory://` results: in-process, for tests and scripts; waiters wake on an event."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio

from ..backend import ResultBackend, StoredResult
from ..states import READY_STATES

__all__ = ["MemoryBackend"]


class MemoryBackend(ResultBackend):
    """Results kept in a dict of this process, with their expiry times."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self._results: dict[str, tuple[StoredResult, float]] = {}
        self._waiters: dict[str, anyio.Event] = {}

    async def open(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to release."""

    async def store(
        self,
        task_id: str,
        state: str,
        payload: bytes,
        ttl: float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Keep the result for `ttl` seconds and wake its waiters if it is final."""
        now = time.monotonic()
        self._results[task_id] = (StoredResult(state, payload), now + ttl)
        if len(self._results) % 1024 == 0:
            self._expire(now)
        if state in READY_STATES and (event := self._waiters.pop(task_id, None)):
            event.set()

    def _expire(self, now: float) -> None:
        for key in [key for key, (_, expiry) in self._results.items() if expiry <= now]:
            del self._results[key]

    async def fetch(self, task_id: str) -> StoredResult | None:
        """Return the stored result unless it expired."""
        entry = self._results.get(task_id)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._results[task_id]
            return None
        return entry[0]

    async def wait(self, task_id: str) -> StoredResult:
        """Wait on an event set by `store`."""
        while True:
            stored = await self.fetch(task_id)
            if stored is not None and stored.state in READY_STATES:
                return stored
            event = self._waiters.setdefault(task_id, anyio.Event())
            await event.wait()

    async def forget(self, task_id: str) -> None:
        """Delete the result."""
        self._results.pop(task_id, None)
