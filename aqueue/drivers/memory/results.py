"""`memory://` results: in-process, for tests and scripts; waiters wake on an event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..base import ChordStep, ResultBackend, StoredResult
from ..local import LocalChords, LocalResults

__all__ = ["MemoryBackend"]


class MemoryBackend(ResultBackend):
    """Results kept in a dict of this process, with their expiry times."""

    counts_chords = True

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self._local = LocalResults()
        self._chords = LocalChords()

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
        self._local.keep(task_id, state, payload, ttl)

    async def fetch(self, task_id: str) -> StoredResult | None:
        """Return the stored result unless it expired."""
        return self._local.get(task_id)

    async def wait(self, task_id: str) -> StoredResult:
        """Wait on an event set by `store`."""
        return await self._local.wait(task_id)

    async def forget(self, task_id: str) -> None:
        """Delete the result."""
        self._local.forget(task_id)

    async def chord_part(
        self, chord_id: str, task_id: str, size: int, ttl: float, *, ok: bool
    ) -> ChordStep:
        """Record a chord header task in this process's dict."""
        return self._chords.part(chord_id, task_id, size, ok=ok)

    async def chord_done(self, chord_id: str, ttl: float) -> None:
        """Mark the chord settled."""
        self._chords.done(chord_id)

    async def chord_run(self, chord_id: str, task_id: str, token: str, ttl: float) -> bool:
        """Claim the run of a task the chord sent, in this process's dict."""
        return self._chords.run(chord_id, task_id, token)
