"""Heartbeats on SQLite: how a dead worker's leases run out in seconds, not at lease end.

A consuming broker upserts its row of `aqueue_consumers` (its id, `time.monotonic()` of its
last beat: one clock for every process on the machine, which wall-clock steps do not move)
every `heartbeat_interval` seconds from a thread of its own (`aqueue.drivers.heartbeat`). Each lease
token starts with its owner's id. A claim first looks for owners whose beat is older than
`heartbeat_timeout` (or in the future: from before a reboot, when the clock started again),
makes their leases run out at once, and deletes their rows; the claim then takes those
messages like any whose lease ran out. An idle consumer wakes up when the oldest beat of an
owner holding leases would go stale, and at least every `heartbeat_timeout` seconds (for a
worker that starts meanwhile, takes messages and dies): a timer, not a poll loop.

Each beat also records the consumer's process (`aqueue_consumer_processes`, see `liveness`): a
claim, at most every `PROCESS_CHECK_INTERVAL`, treats an owner whose process is gone (killed,
`os._exit()`) as one whose beat went stale, without waiting for `heartbeat_timeout`.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
import uuid
from dataclasses import dataclass

import anyio

from ..heartbeat import Heartbeat
from ..liveness import Process, alive, this_process
from ..options import BrokerOptions
from .database import BUSY_TIMEOUT_MS, STRICT, placeholders
from .wake import notify

__all__ = [
    "PROCESS_CHECK_INTERVAL",
    "SCHEMA",
    "Beating",
    "Judge",
    "expire_dead_owners",
    "oldest_beat",
]

logger = logging.getLogger("aqueue.drivers.sqlite.broker")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aqueue_consumers (
        id TEXT PRIMARY KEY,
        beat REAL NOT NULL
    )"""
    + STRICT,  # an older file may hold anything: see _DEAD_OWNERS
    """CREATE TABLE IF NOT EXISTS aqueue_consumer_processes (
        id TEXT PRIMARY KEY,
        place TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started INTEGER NOT NULL
    )"""
    + STRICT,
)

#: How often a claiming consumer looks for owners whose process is gone (seconds).
PROCESS_CHECK_INTERVAL = 0.1

#: The length of a consumer id, the first characters of each lease token it makes.
OWNER_LENGTH = 32

_DEAD_OWNERS = """SELECT id FROM aqueue_consumers
    WHERE id != ? AND NOT (typeof(beat) IN ('real', 'integer') AND beat BETWEEN ? AND ?)"""
_EXPIRE_OWNER = f"""UPDATE aqueue_messages SET lease_until = 0
    WHERE lease_until IS NOT NULL AND substr(lease_token, 1, {OWNER_LENGTH}) = ?"""
_PROCESSES = "SELECT id, place, pid, started FROM aqueue_consumer_processes WHERE id != ?"
_OLDEST_HOLDER = f"""SELECT min(beat) FROM aqueue_consumers
    WHERE id != ? AND typeof(beat) IN ('real', 'integer') AND id IN (
        SELECT substr(lease_token, 1, {OWNER_LENGTH}) FROM aqueue_messages
        WHERE lease_until IS NOT NULL)"""


@dataclass(frozen=True, slots=True)
class Judge:
    """Who claims (`owner`, the prefix of its lease tokens) and how it judges other owners."""

    owner: str
    timeout: float
    judging: bool  # whether its own heartbeat lets it declare others dead now
    wake: str  # the wake-up directory, poked when it expired a dead owner's leases
    processes: bool = False  # whether to look for owners whose process is gone, now


def expire_dead_owners(conn: sqlite3.Connection, judge: Judge) -> int:
    """In a claim's transaction: make the leases of dead owners run out; return how many.

    Dead: its beat is stale (when `judge.judging`), or its process is gone (when
    `judge.processes`).
    """
    stale: list[str] = []
    if judge.judging:
        now = time.monotonic()
        args = (judge.owner, now - judge.timeout, now + judge.timeout)
        stale = [row[0] for row in conn.execute(_DEAD_OWNERS, args).fetchall()]
    gone: list[str] = []
    if judge.processes:
        gone = [
            row[0]
            for row in conn.execute(_PROCESSES, (judge.owner,)).fetchall()
            if row[0] not in stale and _gone(*row[1:])
        ]
    dead = stale + gone
    if not dead:
        return 0
    counts = {owner: conn.execute(_EXPIRE_OWNER, (owner,)).rowcount for owner in dead}
    marks = placeholders(len(dead))
    conn.execute(f"DELETE FROM aqueue_consumers WHERE id IN ({marks})", dead)
    conn.execute(f"DELETE FROM aqueue_consumer_processes WHERE id IN ({marks})", dead)
    for owners, why in (
        (stale, f"heartbeat stopped more than {judge.timeout:g}s ago"),
        (gone, "process is gone"),
    ):
        expired = sum(counts[owner] for owner in owners)
        if expired:
            logger.warning(
                "reclaiming %d message(s) of %d consumer(s) whose %s", expired, len(owners), why
            )
    if any(counts.values()):
        notify(judge.wake)  # consumers of other queues look again, once this commits
    return sum(counts.values())


def _gone(place: object, pid: object, started: object) -> bool:
    if type(place) is not str or type(pid) is not int or type(started) is not int:
        return False  # a row written by something else: heartbeats decide
    return not alive(Process(place, pid, started))


def oldest_beat(conn: sqlite3.Connection, judge: Judge) -> float | None:
    """Return the oldest beat (monotonic) of another owner holding leases, if any."""
    row = conn.execute(_OLDEST_HOLDER, (judge.owner,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


class _Beats:
    """The heartbeat's own connection, used only by its thread (see `aqueue.drivers.heartbeat`)."""

    def __init__(self, path: str, owner: str) -> None:
        self._path = path
        self._owner = owner
        self._conn: sqlite3.Connection | None = None
        self._process = this_process()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
        return self._conn

    async def beat(self) -> None:
        conn = self._connection()
        conn.execute(
            "INSERT INTO aqueue_consumers (id, beat) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET beat = excluded.beat",
            (self._owner, time.monotonic()),
        )
        process = self._process
        if process is not None:  # again each beat: a consumer judged dead comes back whole
            conn.execute(
                "INSERT OR REPLACE INTO aqueue_consumer_processes (id, place, pid, started) "
                "VALUES (?, ?, ?, ?)",
                (self._owner, process.place, process.pid, process.started),
            )

    async def forget(self) -> None:
        conn = self._connection()
        conn.execute("DELETE FROM aqueue_consumers WHERE id = ?", (self._owner,))
        conn.execute("DELETE FROM aqueue_consumer_processes WHERE id = ?", (self._owner,))

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()


class Beating:
    """One broker's heartbeat: its owner id, its thread, and when it judges others."""

    def __init__(self, options: BrokerOptions) -> None:
        self.interval, self.timeout = options.heartbeat_interval, options.heartbeat_timeout
        #: The broker's consumer id: the start of every lease token it makes.
        self.owner = uuid.uuid4().hex
        self.heartbeat: Heartbeat | None = None
        self._processes_checked = -math.inf  # monotonic: when a claim last looked

    def token(self) -> str:
        """Return a fresh lease token of this owner."""
        return self.owner + uuid.uuid4().hex

    async def start(self, path: str) -> None:
        """Start beating before the first claim (once; `stop` ends it)."""
        if self.heartbeat is not None or self.timeout is None:
            return
        owner = self.owner
        self.heartbeat = heartbeat = Heartbeat(
            lambda: _Beats(path, owner),
            interval=self.interval,
            timeout=self.timeout,
            name=f"aqueue-heartbeat-{owner[:8]}",
        )
        with anyio.CancelScope(shield=True):  # a thread started is a thread stopped
            await anyio.to_thread.run_sync(heartbeat.start)

    async def stop(self) -> None:
        """Stop beating and remove this owner's row."""
        heartbeat, self.heartbeat = self.heartbeat, None
        if heartbeat is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(heartbeat.stop)

    def judge(self, wake: str) -> Judge:
        """Return what a claim needs to judge other owners now."""
        heartbeat = self.heartbeat
        if heartbeat is None:
            return Judge(self.owner, math.inf, False, wake)
        now = time.monotonic()
        processes = now - self._processes_checked >= PROCESS_CHECK_INTERVAL
        if processes:
            self._processes_checked = now
        return Judge(self.owner, heartbeat.timeout, heartbeat.judging(), wake, processes)

    def next_judgment(self, oldest: float | None) -> float | None:
        """When (a time.time()) an idle consumer looks for dead owners again."""
        heartbeat = self.heartbeat
        if heartbeat is None:
            return None
        now = time.monotonic()
        stale_at = now + heartbeat.timeout
        if oldest is not None:
            stale_at = min(stale_at, oldest + heartbeat.timeout)
        at = max(stale_at, heartbeat.judging_from())
        if at == math.inf:
            return None
        # Not sooner than half a beat: a dead owner found now was dealt with already.
        return time.time() + max(at - now, heartbeat.interval / 2)
