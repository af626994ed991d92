"""Results held in this process, with expiry times, and waiters woken by events.

`memory://` keeps every result this way; `rpc://` keeps the results its reply queue brings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from ..states import READY_STATES
from .base import ChordStep, StoredResult

__all__ = ["LocalChords", "LocalResults"]


class LocalResults:
    """A dict of results by task id, each until it expires; `wait` sleeps on an event."""

    def __init__(self) -> None:
        self._results: dict[str, tuple[StoredResult, float]] = {}
        self._waiters: dict[str, anyio.Event] = {}

    def keep(self, task_id: str, state: str, payload: bytes, ttl: float) -> None:
        """Keep a result for `ttl` seconds, and wake its waiters if it is final."""
        now = time.monotonic()
        self._results[task_id] = (StoredResult(state, payload), now + ttl)
        if len(self._results) % 1024 == 0:
            for key in [key for key, (_, expiry) in self._results.items() if expiry <= now]:
                del self._results[key]
        if state in READY_STATES and (event := self._waiters.pop(task_id, None)):
            event.set()

    def get(self, task_id: str) -> StoredResult | None:
        """Return the result unless it expired."""
        entry = self._results.get(task_id)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._results[task_id]
            return None
        return entry[0]

    async def wait(self, task_id: str) -> StoredResult:
        """Wait until a ready state is kept for the task."""
        while True:
            stored = self.get(task_id)
            if stored is not None and stored.state in READY_STATES:
                return stored
            await self._waiters.setdefault(task_id, anyio.Event()).wait()

    def forget(self, task_id: str) -> None:
        """Drop the result."""
        self._results.pop(task_id, None)


@dataclass
class _Chord:
    """One chord's record: the header ids recorded, its flags, its claimant, its runs."""

    members: set[str] = field(default_factory=set)
    failed: bool = False
    done: bool = False
    claimant: str | None = None
    runs: dict[str, str] = field(default_factory=dict)


class LocalChords:
    """Chord headers counted in this process: per chord, the ids recorded, failed, done.

    Each call runs to its end without awaiting, so it is atomic among the loop's tasks.
    """

    def __init__(self) -> None:
        self._chords: dict[str, _Chord] = {}

    def part(self, chord_id: str, task_id: str, size: int, *, ok: bool) -> ChordStep:
        """Record a header task (once per id); see `ResultBackend.chord_part`."""
        chord = self._chords.setdefault(chord_id, _Chord())
        chord.members.add(task_id)
        chord.failed = chord.failed or not ok
        if chord.done or not (chord.failed or len(chord.members) >= size):
            return "wait"
        if chord.claimant is None:
            chord.claimant = task_id
        elif chord.claimant != task_id:
            return "wait"
        return "fail" if chord.failed else "fire"

    def done(self, chord_id: str) -> None:
        """Mark the chord settled."""
        self._chords.setdefault(chord_id, _Chord()).done = True

    def run(self, chord_id: str, task_id: str, token: str) -> bool:
        """Claim the run of a task the chord sent; see `ResultBackend.chord_run`."""
        runs = self._chords.setdefault(chord_id, _Chord()).runs
        return runs.setdefault(task_id, token) == token
