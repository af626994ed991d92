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
from ..options import BrokerOptions
from .database import BUSY_TIMEOUT_MS, STRICT, placeholders
from .wake import notify

__all__ = ["SCHEMA", "Beating", "Judge", "expire_dead_owners", "oldest_beat"]

logger = logging.getLogger("aqueue.drivers.sqlite.broker")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aqueue_consumers (
        id TEXT PRIMARY KEY,
        beat REAL NOT NULL
    )"""
    + STRICT,  # an older file may hold anything: see _DEAD_OWNERS
)

#: The length of a consumer id, the first characters of each lease token it makes.
OWNER_LENGTH = 32

_DEAD_OWNERS = """SELECT id FROM aqueue_consumers
    WHERE id != ? AND NOT (typeof(beat) IN ('real', 'integer') AND beat BETWEEN ? AND ?)"""
_EXPIRE_OWNER = f"""UPDATE aqueue_messages SET lease_until = 0
    WHERE lease_until IS NOT NULL AND substr(lease_token, 1, {OWNER_LENGTH}) = ?"""
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


def expire_dead_owners(conn: sqlite3.Connection, judge: Judge) -> int:
    """In a claim's transaction: make the leases of dead owners run out; return how many."""
    if not judge.judging:
        return 0
    now = time.monotonic()
    args = (judge.owner, now - judge.timeout, now + judge.timeout)
    dead = [row[0] for row in conn.execute(_DEAD_OWNERS, args).fetchall()]
    if not dead:
        return 0
    expired = sum(conn.execute(_EXPIRE_OWNER, (owner,)).rowcount for owner in dead)
    conn.execute(f"DELETE FROM aqueue_consumers WHERE id IN ({placeholders(len(dead))})", dead)
    if expired:
        logger.warning(
            "reclaiming %d message(s) of %d consumer(s) whose heartbeat stopped more than %gs ago",
            expired,
            len(dead),
            judge.timeout,
        )
        notify(judge.wake)  # consumers of other queues look again, once this commits
    return expired


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

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
        return self._conn

    async def beat(self) -> None:
        self._connection().execute(
            "INSERT INTO aqueue_consumers (id, beat) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET beat = excluded.beat",
            (self._owner, time.monotonic()),
        )

    async def forget(self) -> None:
        self._connection().execute("DELETE FROM aqueue_consumers WHERE id = ?", (self._owner,))

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
        return Judge(self.owner, heartbeat.timeout, heartbeat.judging(), wake)

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
