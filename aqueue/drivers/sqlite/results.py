"""`sqlite:///path.db` results: one table in the broker's file (or any other), for any process.

`store` pokes the "results" wake-up channel (`wake`) when a task reaches a ready state.
Every `wait` of one backend shares one wake-up socket: one waiter at a time reads it (the
reader), and on each wake-up looks up every awaited task id in one query and wakes the waiters
whose result is there. When the reader leaves (its result came, or its caller gave up), it hands
the socket over to another waiter. Nothing polls; the reader looks again every
`MAX_WAIT` seconds as a safety net.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from ...exceptions import BrokerError
from ...states import READY_STATES
from ..base import ChordStep, ResultBackend, StoredResult
from ..waiting import Waiters
from .database import STRICT, Database, parse_sqlite_url, placeholders
from .wake import Listener, wake_dir

__all__ = ["SQLiteBackend"]

#: The longest the reader sleeps before it looks again, wake-up or not (a safety net).
MAX_WAIT = 30.0
#: Expired rows are deleted after this many stores, or this many seconds, whichever is first.
SWEEP_EVERY = 200
SWEEP_SECONDS = 60.0

_CHUNK = 500  # task ids per lookup, well under SQLite's bound on query parameters

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aqueue_results (
        task_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        payload BLOB NOT NULL,
        expires REAL NOT NULL
    )"""
    + STRICT,
    "CREATE INDEX IF NOT EXISTS aqueue_results_expires ON aqueue_results (expires)",
    # Chords: the header task ids recorded (each once), and per chord its count and flags.
    """CREATE TABLE IF NOT EXISTS aqueue_chord_parts (
        chord_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        PRIMARY KEY (chord_id, task_id)
    )"""
    + STRICT,
    """CREATE TABLE IF NOT EXISTS aqueue_chords (
        chord_id TEXT PRIMARY KEY,
        parts INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        done INTEGER NOT NULL,
        expires REAL NOT NULL
    )"""
    + STRICT,
    "CREATE INDEX IF NOT EXISTS aqueue_chords_expires ON aqueue_chords (expires)",
    # Claims on a chord (a table of its own, so older files need no migration): "send" held
    # by the header task that acts (`chord_part`), "run:<task id>" by the token of the copy
    # of a message it sent that may run (`chord_run`).
    """CREATE TABLE IF NOT EXISTS aqueue_chord_claims (
        chord_id TEXT NOT NULL,
        what TEXT NOT NULL,
        holder TEXT NOT NULL,
        PRIMARY KEY (chord_id, what)
    )"""
    + STRICT,
)

_READY = ", ".join(f"'{state}'" for state in sorted(READY_STATES))


def _store(conn: sqlite3.Connection, row: tuple[str, str, bytes, float], sweep: bool) -> None:
    conn.execute(
        "INSERT INTO aqueue_results (task_id, state, payload, expires) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, "
        "payload = excluded.payload, expires = excluded.expires",
        row,
    )
    if sweep:
        _purge(conn)


def _fetch(conn: sqlite3.Connection, task_id: str) -> StoredResult | None:
    row = conn.execute(
        # CAST: a row of a non-STRICT table may hold anything; a payload that is not a BLOB
        # then fails to decode in `get()`, with a ValueError, instead of anywhere else.
        "SELECT CAST(state AS TEXT), CAST(payload AS BLOB) FROM aqueue_results "
        "WHERE task_id = ? AND expires > ?",
        (task_id, time.time()),
    ).fetchone()
    return None if row is None else StoredResult(row[0], row[1])


def _fetch_ready(conn: sqlite3.Connection, task_ids: Sequence[str]) -> dict[str, StoredResult]:
    found: dict[str, StoredResult] = {}
    now = time.time()
    for start in range(0, len(task_ids), _CHUNK):
        chunk = task_ids[start : start + _CHUNK]
        rows = conn.execute(
            "SELECT task_id, state, CAST(payload AS BLOB) FROM aqueue_results "
            f"WHERE task_id IN ({placeholders(len(chunk))}) AND expires > ? "
            f"AND state IN ({_READY})",
            (*chunk, now),
        ).fetchall()
        found.update((task_id, StoredResult(state, payload)) for task_id, state, payload in rows)
    return found


def _forget(conn: sqlite3.Connection, task_id: str) -> None:
    conn.execute("DELETE FROM aqueue_results WHERE task_id = ?", (task_id,))


def _purge(conn: sqlite3.Connection) -> int:
    now = time.time()
    for table in ("aqueue_chord_parts", "aqueue_chord_claims"):
        conn.execute(
            f"DELETE FROM {table} WHERE chord_id IN "
            "(SELECT chord_id FROM aqueue_chords WHERE expires <= ?)",
            (now,),
        )
    conn.execute("DELETE FROM aqueue_chords WHERE expires <= ?", (now,))
    return conn.execute("DELETE FROM aqueue_results WHERE expires <= ?", (now,)).rowcount


def _fetch_many(conn: sqlite3.Connection, task_ids: Sequence[str]) -> list[StoredResult | None]:
    found: dict[str, StoredResult] = {}
    now = time.time()
    for start in range(0, len(task_ids), _CHUNK):
        chunk = task_ids[start : start + _CHUNK]
        rows = conn.execute(
            "SELECT task_id, CAST(state AS TEXT), CAST(payload AS BLOB) FROM aqueue_results "
            f"WHERE task_id IN ({placeholders(len(chunk))}) AND expires > ?",
            (*chunk, now),
        ).fetchall()
        found.update((task_id, StoredResult(state, payload)) for task_id, state, payload in rows)
    return [found.get(task_id) for task_id in task_ids]


def _chord_part(
    conn: sqlite3.Connection, chord_id: str, task_id: str, size: int, ok: bool, expires: float
) -> ChordStep:
    """Record a header task in the transaction of the grouped write (`Database.write`)."""
    conn.execute(
        "INSERT INTO aqueue_chords (chord_id, parts, failed, done, expires) "
        "VALUES (?, 0, 0, 0, ?) ON CONFLICT (chord_id) DO NOTHING",
        (chord_id, expires),
    )
    added = conn.execute(
        "INSERT OR IGNORE INTO aqueue_chord_parts (chord_id, task_id) VALUES (?, ?)",
        (chord_id, task_id),
    ).rowcount
    conn.execute(
        "UPDATE aqueue_chords SET parts = parts + ?, failed = MAX(failed, ?) WHERE chord_id = ?",
        (added, 0 if ok else 1, chord_id),
    )
    parts, failed, done = conn.execute(
        "SELECT parts, failed, done FROM aqueue_chords WHERE chord_id = ?", (chord_id,)
    ).fetchone()
    if done or not (failed or parts >= size):
        return "wait"
    if _claim(conn, chord_id, "send", task_id) != task_id:
        return "wait"
    return "fail" if failed else "fire"


def _claim(conn: sqlite3.Connection, chord_id: str, what: str, holder: str) -> str:
    """Take `what` of the chord for `holder` unless it is held; return who holds it."""
    conn.execute(
        "INSERT OR IGNORE INTO aqueue_chord_claims (chord_id, what, holder) VALUES (?, ?, ?)",
        (chord_id, what, holder),
    )
    row = conn.execute(
        "SELECT holder FROM aqueue_chord_claims WHERE chord_id = ? AND what = ?",
        (chord_id, what),
    ).fetchone()
    return str(row[0])


def _chord_run(
    conn: sqlite3.Connection, chord_id: str, task_id: str, token: str, expires: float
) -> bool:
    conn.execute(
        "INSERT INTO aqueue_chords (chord_id, parts, failed, done, expires) "
        "VALUES (?, 0, 0, 0, ?) ON CONFLICT (chord_id) DO NOTHING",
        (chord_id, expires),
    )
    return _claim(conn, chord_id, f"run:{task_id}", token) == token


def _chord_done(conn: sqlite3.Connection, chord_id: str, expires: float) -> None:
    conn.execute(
        "INSERT INTO aqueue_chords (chord_id, parts, failed, done, expires) "
        "VALUES (?, 0, 0, 1, ?) ON CONFLICT (chord_id) DO UPDATE SET done = 1",
        (chord_id, expires),
    )


class _WakeUps:
    """The pause of the SQLite store's reader: the wake-up socket (`MAX_WAIT` as a safety net)."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self._backend = backend

    async def prepare(self) -> None:
        """Listen before a waiter's first look, so that no store goes unnoticed."""
        await self._backend._listen()

    async def next(self, youngest: float) -> None:
        """Wait for a wake-up (or the safety net); every awaited task is then looked up."""
        listener = await self._backend._listen()
        await listener.wait(MAX_WAIT)


class SQLiteBackend(ResultBackend):
    """Results in a SQLite file; `wait` sleeps on a wake-up socket shared by all waiters."""

    keeps_expired = True
    counts_chords = True

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self._path = parse_sqlite_url(url)
        self._db: Database | None = None
        self._wake = ""
        self._listener: Listener | None = None
        self._lock: anyio.Lock | None = None
        self._waiters = Waiters(self.fetch, self._ready, _WakeUps(self))
        self._stores = 0
        self._swept = time.monotonic()

    @property
    def path(self) -> str | None:
        """The absolute path of the database file once open, else None."""
        return None if self._db is None else self._db.path

    async def open(self) -> None:
        """Open the file (relative paths resolve against the current directory now)."""
        if self._db is not None:
            return
        db = await Database.open(self._path, SCHEMA)
        with anyio.CancelScope(shield=True):  # the connection is ours to close: finish
            wake = await anyio.to_thread.run_sync(wake_dir, db.path, "results")
        if self._db is not None:  # a concurrent open won
            await db.close()
            return
        self._db, self._wake = db, wake
        self._lock = anyio.Lock()

    async def close(self) -> None:
        """Close the wake-up socket and the connection."""
        db, self._db = self._db, None
        listener, self._listener = self._listener, None
        with anyio.CancelScope(shield=True):
            if listener is not None:
                await listener.aclose()
            if db is not None:
                await db.close()

    def _database(self) -> Database:
        if self._db is None:
            raise BrokerError(f"{type(self).__name__} is not open: call `await backend.open()`")
        return self._db

    async def store(
        self,
        task_id: str,
        state: str,
        payload: bytes,
        ttl: float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Upsert the result, and wake the waiters if the state is a ready one."""
        db = self._database()
        self._stores += 1
        sweep = self._stores >= SWEEP_EVERY or time.monotonic() - self._swept >= SWEEP_SECONDS
        if sweep:
            self._stores, self._swept = 0, time.monotonic()
        wake = self._wake if state in READY_STATES else None
        await db.write(_store, (task_id, state, payload, time.time() + ttl), sweep, wake=wake)

    async def purge_expired(self) -> int:
        """Delete the expired rows (stores sweep now and then; this sweeps all at once)."""
        return await self._database().write(_purge)

    async def fetch(self, task_id: str) -> StoredResult | None:
        """Return the stored result unless it expired."""
        return await self._database().run(_fetch, task_id)

    async def forget(self, task_id: str) -> None:
        """Delete the result."""
        await self._database().run(_forget, task_id)

    async def fetch_many(self, task_ids: Sequence[str]) -> list[StoredResult | None]:
        """Look many results up, a few hundred per query."""
        return await self._database().run(_fetch_many, list(task_ids))

    async def chord_part(
        self, chord_id: str, task_id: str, size: int, ttl: float, *, ok: bool
    ) -> ChordStep:
        """Record a header task in one transaction (shared with concurrent writes)."""
        expires = time.time() + ttl
        return await self._database().write(_chord_part, chord_id, task_id, size, ok, expires)

    async def chord_done(self, chord_id: str, ttl: float) -> None:
        """Mark the chord settled."""
        await self._database().write(_chord_done, chord_id, time.time() + ttl)

    async def chord_run(self, chord_id: str, task_id: str, token: str, ttl: float) -> bool:
        """Claim the run of a task the chord sent, in one transaction."""
        expires = time.time() + ttl
        return await self._database().write(_chord_run, chord_id, task_id, token, expires)

    async def wait(self, task_id: str) -> StoredResult:
        """Return once the task is in a ready state; sleep on the shared wake-up socket."""
        return await self._waiters.wait(task_id)

    async def _ready(self, task_ids: list[str]) -> dict[str, StoredResult]:
        return await self._database().run(_fetch_ready, task_ids)

    async def _listen(self) -> Listener:
        if self._listener is None:
            self._database()
            assert self._lock is not None
            async with self._lock:
                if self._listener is None:
                    self._listener = await Listener.open(self._wake)
        return self._listener
