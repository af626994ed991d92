"""`sqlite:///path.db`: the embedded default broker, durable and shared between processes.

Messages are rows of one table in a WAL-mode SQLite file. A consumer claims ready rows in a
`BEGIN IMMEDIATE` transaction by leasing them for `visibility_timeout` seconds under a fresh
token; `ack`, `nack`, `dead_letter` and `renew` only touch a row whose token still matches
(fencing), so a worker whose lease ran out cannot settle the message a second worker now holds.
A lease that runs out (its worker died) makes the message ready again.

No row is trusted: tables are STRICT where SQLite allows it (3.37+), but a file made before may
hold anything; `rows` checks what a claim reads and dead-letters a bad row at once.

Sooner than its lease, a claim makes the leases of a worker whose heartbeat stopped run out
(`beats`).

Idle consumers sleep on a Unix datagram socket (`wake`) that every publish pokes, with
a timeout set to the next delayed message or lease expiry: nothing polls.

Runs: `begin` (the worker calls it before running a redelivered message alone, see
`aqueue.worker.isolation`) and `nack` add one to the message's row in `aqueue_runs`; a message with
`max_deliveries` runs is dead-lettered when next claimed (the worker does it first, with a
failure result). Claims count deliveries in `deliveries`, which blames nothing: a message
merely held by a worker that died is not the one that killed it.

Options: `visibility_timeout` (seconds, default 30), `max_deliveries` (default 5),
`heartbeat_interval` (1) and `heartbeat_timeout` (5; None: leases only).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple

import anyio

from ...exceptions import BrokerError
from ...message import DeadLetterReason, OutgoingMessage
from ..base import (
    UNSTARTED_FACTOR,
    BlockingPublisher,
    Broker,
    Credit,
    DeadLetter,
    DeadLetterStats,
    Delayed,
    Delivery,
    Mailbox,
    QueueStats,
)
from ..options import BrokerOptions
from . import dead as deadletters
from .beats import SCHEMA as BEATS_SCHEMA
from .beats import Beating, Judge, expire_dead_owners, oldest_beat
from .database import STRICT, Database, connect, immediate, parse_sqlite_url, placeholders
from .mailbox import SCHEMA as MAILBOX_SCHEMA
from .mailbox import SQLiteMailbox
from .rows import bad_times, bury_rows, fault
from .wake import Listener, notify, wake_dir

__all__ = ["SQLiteBroker"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: The longest an idle consumer sleeps before it looks again, wake-up or not (a safety net).
MAX_IDLE_WAIT = 60.0

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aqueue_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        body BLOB NOT NULL,
        due REAL NOT NULL,
        lease_until REAL,
        lease_token TEXT,
        deliveries INTEGER NOT NULL DEFAULT 0
    )"""
    + STRICT,
    # Waiting messages, in claim order; leased ones are left out of it.
    """CREATE INDEX IF NOT EXISTS aqueue_messages_ready
        ON aqueue_messages (queue, priority DESC, id) WHERE lease_until IS NULL""",
    # The next delayed message, and the next lease to run out.
    """CREATE INDEX IF NOT EXISTS aqueue_messages_due
        ON aqueue_messages (queue, due) WHERE lease_until IS NULL""",
    """CREATE INDEX IF NOT EXISTS aqueue_messages_leased
        ON aqueue_messages (queue, lease_until) WHERE lease_until IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS aqueue_dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        body BLOB NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        at REAL NOT NULL
    )"""
    + STRICT,
    """CREATE INDEX IF NOT EXISTS aqueue_dead_letters_queue
        ON aqueue_dead_letters (queue, id)""",
    # Recorded runs (`begin`) and give-backs (`nack`) of messages, by aqueue_messages.id; a
    # table of its own, so that files made before it need no migration.
    """CREATE TABLE IF NOT EXISTS aqueue_runs (
        id INTEGER PRIMARY KEY,
        runs INTEGER NOT NULL
    )""",
)

# length() of a BLOB reads no overflow pages: a message's size is known before it is read.
_READY = """SELECT id, priority, length(body) FROM aqueue_messages
    WHERE queue = ? AND lease_until IS NULL AND due <= ? ORDER BY priority DESC, id LIMIT ?"""
_EXPIRED = """SELECT id, priority, length(body) FROM aqueue_messages
    WHERE queue = ? AND lease_until < ? ORDER BY priority DESC, id LIMIT ?"""
_NEXT_DUE = """SELECT due FROM aqueue_messages
    WHERE queue = ? AND lease_until IS NULL AND due > ? ORDER BY due LIMIT 1"""
_NEXT_LEASE = """SELECT lease_until FROM aqueue_messages
    WHERE queue = ? AND lease_until IS NOT NULL ORDER BY lease_until LIMIT 1"""
_STRIKE = """INSERT INTO aqueue_runs (id, runs) VALUES (?, 1)
    ON CONFLICT (id) DO UPDATE SET runs = runs + 1"""


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    queue: str
    priority: int
    body: bytes
    deliveries: int
    runs: int
    token: str


@dataclass(frozen=True, slots=True)
class _Claim:
    messages: list[_Claimed]
    buried: int  # claimed past max_deliveries, or oversized, and dead-lettered instead
    next_at: float | None  # nothing was ready: when the next message may be
    #: Nothing was ready: the oldest heartbeat (monotonic) of another owner holding leases.
    oldest_beat: float | None = None
    oversized: int = 0  # of `buried`: over `message_max_bytes`, dead-lettered unread


def _candidates(
    conn: sqlite3.Connection,
    queues: Sequence[str],
    limit: int,
    now: float,
    max_bytes: int | None,
) -> tuple[list[int], list[int]]:
    """Return the ids to claim, and those of the rows found over `max_bytes`.

    The ids to claim: the best `limit` rows, and any whose priority is no integer (a TEXT
    priority sorts first in SQL; it is claimed, to be dead-lettered by `_claim`). A row over
    `max_bytes` is never claimed: a claim rewrites the row, its body with it, and the worker
    would only refuse it.
    """
    rows: list[tuple[int, Any, Any]] = []
    for queue in queues:
        rows += conn.execute(_READY, (queue, now, limit)).fetchall()
        rows += conn.execute(_EXPIRED, (queue, now, limit)).fetchall()
    oversized: list[int] = []
    if max_bytes is not None:
        oversized = [row[0] for row in rows if type(row[2]) is int and row[2] > max_bytes]
        if oversized:
            rows = [row for row in rows if not (type(row[2]) is int and row[2] > max_bytes)]
    bad = [row[0] for row in rows if type(row[1]) is not int]
    if bad:
        rows = [row for row in rows if type(row[1]) is int]
    rows.sort(key=lambda row: (-row[1], row[0]))
    return bad + [row[0] for row in rows[:limit]], oversized


def _next_at(conn: sqlite3.Connection, queues: Sequence[str], now: float) -> float | None:
    times: list[float] = []
    for queue in queues:
        for sql, args in ((_NEXT_DUE, (queue, now)), (_NEXT_LEASE, (queue,))):
            row = conn.execute(sql, args).fetchone()
            if row is not None:
                times.append(row[0])
    return min(times, default=None)


def _claim(
    conn: sqlite3.Connection,
    queues: Sequence[str],
    limit: int,
    lease: float,
    max_deliveries: int,
    judge: Judge,
    token: str,
    max_bytes: int | None = None,
) -> _Claim:
    now = time.time()
    with immediate(conn):
        expire_dead_owners(conn, judge)
        ids, over = _candidates(conn, queues, limit, now, max_bytes)
        oversized = deadletters.bury_oversized(conn, over, max_bytes, now) if over else 0
        if not ids:
            buried = oversized + bad_times(conn, queues, now)
            next_at = None if buried else _next_at(conn, queues, now)
            return _Claim([], buried, next_at, oldest_beat(conn, judge), oversized)
        rows = conn.execute(
            "UPDATE aqueue_messages SET lease_until = ?, lease_token = ?, "
            f"deliveries = deliveries + 1 WHERE id IN ({placeholders(len(ids))}) "
            "RETURNING id, queue, priority, body, deliveries",
            (now + lease, token, *ids),
        ).fetchall()
        faults = {row[0]: wrong for row in rows if (wrong := fault(*row[2:]))}
        corrupt = bury_rows(conn, faults, now) if faults else 0
        rows = [row for row in rows if row[0] not in faults]
        again = [row[0] for row in rows if row[4] > 1]  # only they can have runs
        runs: dict[int, int] = {}
        if again:
            runs = dict(
                conn.execute(
                    f"SELECT id, runs FROM aqueue_runs WHERE id IN ({placeholders(len(again))})",
                    again,
                ).fetchall()
            )
        claimed = [
            _Claimed(id_, queue, pri, body, n, runs.get(id_, 0), token)
            for id_, queue, pri, body, n in rows
        ]
        dead = [(m, why) for m in claimed if (why := _exhausted(m, max_deliveries))]
        if dead:
            marks = placeholders(len(dead))
            ids = [message.id for message, _ in dead]
            conn.execute(f"DELETE FROM aqueue_messages WHERE id IN ({marks})", ids)
            conn.execute(f"DELETE FROM aqueue_runs WHERE id IN ({marks})", ids)
            reason = DeadLetterReason.MAX_DELIVERIES.value
            deadletters.bury(conn, [(m.queue, m.body, reason, why, now) for m, why in dead])
    gone = {message.id for message, _ in dead}
    live = [message for message in claimed if message.id not in gone]
    live.sort(key=lambda message: (-message.priority, message.id))
    return _Claim(live, len(dead) + corrupt + oversized, None, oversized=oversized)


def _exhausted(message: _Claimed, max_deliveries: int) -> str:
    """Why a claimed message must be dead-lettered rather than delivered; "" if it may run."""
    if message.runs >= max_deliveries:
        return f"started {message.runs} times without being acknowledged"
    if message.deliveries > UNSTARTED_FACTOR * max_deliveries:
        return f"delivered {message.deliveries - 1} times without a recorded start"
    return ""


#: Rows a publish inserts with one statement: sizes that are powers of two up to this, so
#: that few statements are compiled (and cached), and 4 values a row stay within SQLite's
#: oldest limit of 999 parameters.
_INSERT_ROWS = 128
_INSERTS = {
    size: "INSERT INTO aqueue_messages (queue, priority, body, due) VALUES "
    + ", ".join(["(?, ?, ?, ?)"] * size)
    for size in (1 << shift for shift in range(_INSERT_ROWS.bit_length()))
}


def _publish(conn: sqlite3.Connection, messages: list[OutgoingMessage]) -> None:
    """Insert the messages, many rows a statement.

    Half the CPU of `executemany` a row, and one release of the GIL a statement rather than
    one a row (which 8 threads calling `add.sync.delay()` contend for).
    """
    now = time.time()
    values: list[Any] = []
    for m in messages:
        values += (m.queue, m.priority, m.body, m.eta if m.eta is not None else now)
    start, left = 0, len(messages)
    while left:
        size = min(_INSERT_ROWS, 1 << (left.bit_length() - 1))  # the largest that fits
        conn.execute(_INSERTS[size], values[start * 4 : (start + size) * 4])
        start, left = start + size, left - size


class _BlockingPublisher(BlockingPublisher):
    """`publish` for the threads of sync callers, on a connection of their own.

    The connection opens on first use (in the calling thread, never on an event loop); each
    publish is one transaction, as the broker's own, then the consumers are woken.
    """

    def __init__(self, path: str, wake: str) -> None:
        self._path = path
        self._wake = wake
        self._lock = threading.Lock()  # one call at a time; `close` waits for a publish
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def publish(self, messages: Sequence[OutgoingMessage]) -> list[Exception | None]:
        with self._lock:
            if self._closed:
                raise BrokerError(f"SQLite database {self._path} is closed")
            try:
                conn = self._conn
                if conn is None:
                    conn = self._conn = connect(self._path)
                with immediate(conn):
                    _publish(conn, list(messages))
            except sqlite3.Error as exc:
                raise BrokerError(f"SQLite database {self._path}: {exc}") from exc
        notify(self._wake)
        return [None] * len(messages)

    def close(self) -> None:
        with self._lock:
            conn, self._conn, self._closed = self._conn, None, True
        if conn is not None:
            conn.close()


def _ack(conn: sqlite3.Connection, id_: int, token: str, runs: bool) -> bool:
    cursor = conn.execute(
        "DELETE FROM aqueue_messages WHERE id = ? AND lease_token = ?", (id_, token)
    )
    if runs and cursor.rowcount > 0:
        conn.execute("DELETE FROM aqueue_runs WHERE id = ?", (id_,))
    return cursor.rowcount > 0


def _nack(conn: sqlite3.Connection, id_: int, token: str, due: float, strike: bool) -> bool:
    cursor = conn.execute(
        "UPDATE aqueue_messages SET lease_until = NULL, lease_token = NULL, due = ? "
        "WHERE id = ? AND lease_token = ?",
        (due, id_, token),
    )
    if strike and cursor.rowcount > 0:
        conn.execute(_STRIKE, (id_,))
    return cursor.rowcount > 0


def _unclaim(conn: sqlite3.Connection, id_: int, token: str) -> bool:
    cursor = conn.execute(
        "UPDATE aqueue_messages SET lease_until = NULL, lease_token = NULL, "
        "deliveries = deliveries - 1 WHERE id = ? AND lease_token = ?",
        (id_, token),
    )
    return cursor.rowcount > 0


def _begin(conn: sqlite3.Connection, id_: int, token: str) -> bool:
    cursor = conn.execute(
        "INSERT INTO aqueue_runs (id, runs) SELECT id, 1 FROM aqueue_messages "
        "WHERE id = ? AND lease_token = ? ON CONFLICT (id) DO UPDATE SET runs = runs + 1",
        (id_, token),
    )
    return cursor.rowcount > 0


def _delayed(conn: sqlite3.Connection, queue: str, limit: int, now: float) -> list[Delayed]:
    rows = conn.execute(  # CAST: a row of a non-STRICT table may hold anything
        "SELECT CAST(body AS BLOB), due, priority FROM aqueue_messages "
        "WHERE queue = ? AND lease_until IS NULL AND due > ? ORDER BY due LIMIT ?",
        (queue, now, limit),
    ).fetchall()
    return [Delayed(queue, body or b"", float(due), int(priority)) for body, due, priority in rows]


def _dead_letter(conn: sqlite3.Connection, id_: int, token: str, reason: str, detail: str) -> bool:
    with immediate(conn):
        row = conn.execute(
            "DELETE FROM aqueue_messages WHERE id = ? AND lease_token = ? RETURNING queue, body",
            (id_, token),
        ).fetchone()
        if row is not None:
            deadletters.bury(conn, [(row[0], row[1], reason, detail, time.time())])
            conn.execute("DELETE FROM aqueue_runs WHERE id = ?", (id_,))
    return row is not None


def _renew(conn: sqlite3.Connection, id_: int, token: str, lease: float) -> bool:
    cursor = conn.execute(
        "UPDATE aqueue_messages SET lease_until = ? WHERE id = ? AND lease_token = ?",
        (time.time() + lease, id_, token),
    )
    return cursor.rowcount > 0


def _release(conn: sqlite3.Connection, leases: list[tuple[int, str]], wake: str) -> None:
    """Give back claimed messages that were never handed out (not counted as deliveries)."""
    with immediate(conn):
        conn.executemany(
            "UPDATE aqueue_messages SET lease_until = NULL, lease_token = NULL, "
            "deliveries = deliveries - 1 WHERE id = ? AND lease_token = ?",
            leases,
        )
    notify(wake)


def _queue_stats(conn: sqlite3.Connection, queue: str, now: float) -> QueueStats:
    waiting, delayed, running = conn.execute(
        """SELECT
            count(*) FILTER (WHERE lease_until IS NULL AND due <= ?),
            count(*) FILTER (WHERE lease_until IS NULL AND due > ?),
            count(*) FILTER (WHERE lease_until IS NOT NULL)
        FROM aqueue_messages WHERE queue = ?""",
        (now, now, queue),
    ).fetchone()
    dead = deadletters.stats(conn, queue).kept
    return QueueStats(waiting=waiting, delayed=delayed, running=running, dead=dead)


def _purge(conn: sqlite3.Connection, queue: str) -> int:
    with immediate(conn):
        cursor = conn.execute(
            "DELETE FROM aqueue_messages WHERE queue = ? AND lease_until IS NULL", (queue,)
        )
        conn.execute("DELETE FROM aqueue_runs WHERE id NOT IN (SELECT id FROM aqueue_messages)")
    return cursor.rowcount


class _SQLiteDelivery(Delivery):
    __slots__ = ("_begun", "_broker", "_id", "_settled", "_token")

    def __init__(self, broker: SQLiteBroker, message: _Claimed) -> None:
        super().__init__(message.body, message.queue, message.deliveries, message.runs)
        self._broker = broker
        self._id = message.id
        self._token = message.token
        self._settled = False
        self._begun = False

    def _settle(self) -> bool:
        first, self._settled = not self._settled, True
        return first

    def _lost(self, action: str) -> None:
        logger.warning(
            "could not %s message %d of queue %r: its lease ran out and another consumer "
            "holds it now (raise visibility_timeout above the longest task)",
            action,
            self._id,
            self.queue,
        )

    async def ack(self) -> None:
        """Delete the message, if this delivery still holds its lease."""
        runs = self._begun or self.runs > 0
        if self._settle() and not await self._broker._write(_ack, self._id, self._token, runs):
            self._lost("acknowledge")

    async def nack(self, *, delay: float = 0.0) -> None:
        """Make the message ready again after `delay` seconds, counted as a run."""
        if self._settle():
            due = time.time() + max(delay, 0.0)
            broker = self._broker
            strike = not self._begun  # a begun run was counted already
            if not await broker._write(
                _nack, self._id, self._token, due, strike, wake=broker._wake
            ):
                self._lost("return")

    async def release(self) -> None:
        """Make the message ready again at once, counting neither this delivery nor a run."""
        if self._settle():
            broker = self._broker
            if not await broker._write(_unclaim, self._id, self._token, wake=broker._wake):
                self._lost("return")

    async def begin(self) -> None:
        """Count a run of the message, in the same file, before it starts."""
        if not self._settled and not self._begun:
            self._begun = True
            if not await self._broker._write(_begin, self._id, self._token):
                self._lost("record the start of")

    async def dead_letter(self, reason: str, detail: str = "") -> None:
        """Move the message to the dead letters of its queue."""
        if self._settle() and not await self._broker._write(
            _dead_letter, self._id, self._token, str(reason), detail
        ):
            self._lost("dead-letter")

    async def renew(self) -> None:
        """Extend the lease by another `visibility_timeout`."""
        if not self._settled and not await self._broker._write(
            _renew, self._id, self._token, self._broker.visibility_timeout
        ):
            self._lost("renew the lease of")


def _earliest(*times: float | None) -> float | None:
    return min((each for each in times if each is not None), default=None)


class SQLiteBroker(Broker):
    """A broker in one SQLite file, shared by every process on this machine that opens it."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self._path = parse_sqlite_url(url)
        #: The options aqueue defines, checked (see `aqueue.drivers.options`).
        self.broker_options = opts = BrokerOptions.parse(options)
        self.visibility_timeout = opts.visibility_timeout
        self.max_deliveries = opts.max_deliveries
        self.renew_interval = opts.renew_interval
        self._beating = Beating(opts)  # heartbeats: see `beats`
        self.dead_letter_max_bytes = opts.dead_letter_max_bytes
        self.message_max_bytes = opts.message_max_bytes
        self._db: Database | None = None
        self._wake = ""
        self._listeners: set[Listener] = set()
        self._mailbox: SQLiteMailbox | None = None

    @property
    def path(self) -> str | None:
        """The absolute path of the database file once open, else None."""
        return None if self._db is None else self._db.path

    async def open(self) -> None:
        """Open the file (relative paths resolve against the current directory now)."""
        if self._db is not None:
            return
        db = await Database.open(
            self._path, (*SCHEMA, *deadletters.SCHEMA, *BEATS_SCHEMA, *MAILBOX_SCHEMA)
        )
        with anyio.CancelScope(shield=True):  # the connection is ours to close: finish
            wake = await anyio.to_thread.run_sync(wake_dir, db.path, "queue")
        if self._db is not None:  # a concurrent open won
            await db.close()
            return
        self._db, self._wake = db, wake

    async def close(self) -> None:
        """Close the connection; consumers waiting for messages stop."""
        db, self._db = self._db, None
        self._mailbox = None
        listeners, self._listeners = self._listeners, set()
        with anyio.CancelScope(shield=True):
            await self._beating.stop()  # removes this consumer's row
            for listener in listeners:
                await listener.aclose()
            if db is not None:
                await db.close()

    def _database(self) -> Database:
        if self._db is None:
            raise BrokerError(f"{type(self).__name__} is not open: call `await broker.open()`")
        return self._db

    async def _run(self, func: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        return await self._database().run(func, *args)

    async def _write(
        self, func: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts, wake: str | None = None
    ) -> T:
        return await self._database().write(func, *args, wake=wake)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Insert the messages in one transaction, then wake the consumers.

        Concurrent publishes (100 `delay()` calls in flight) go in one insert and commit.
        """
        if messages:
            await self._database().append(_publish, messages, wake=self._wake)

    def blocking_publisher(self) -> BlockingPublisher | None:
        """Return a publisher on a connection of its own, for sync callers' threads."""
        db = self._database()
        return _BlockingPublisher(db.path, self._wake)

    async def consume(
        self, queues: Sequence[str], credit: Credit, *, burst: bool = False
    ) -> AsyncGenerator[Delivery, None]:
        """Claim ready messages, up to the credit, and sleep on a wake-up socket when none are."""
        queues = list(dict.fromkeys(queues))
        db = self._database()
        listener: Listener | None = None
        unyielded: deque[_Claimed] = deque()
        await self._beating.start(db.path)
        try:
            await db.write(deadletters.set_caps, queues, self.dead_letter_max_bytes)
            if not burst:  # listen before the first look, so no publish goes unnoticed
                listener = await Listener.open(self._wake)
                self._listeners.add(listener)
            while True:
                limit = await credit.wait()
                if listener is not None:
                    listener.drain()
                claim = await db.run(
                    _claim,
                    queues,
                    limit,
                    self.visibility_timeout,
                    self.max_deliveries,
                    self._beating.judge(self._wake),
                    self._beating.token(),
                    self.message_max_bytes,
                )
                if claim.oversized:
                    logger.error(
                        "Refused %d message(s) from %s: oversized (over message_max_bytes, "
                        "%d bytes); dead-lettered unread",
                        claim.oversized,
                        ", ".join(queues),
                        self.message_max_bytes,
                    )
                unyielded.extend(claim.messages)
                while unyielded:
                    yield _SQLiteDelivery(self, unyielded.popleft())
                if claim.messages or claim.buried:
                    continue
                if listener is None:  # burst
                    return
                next_at = _earliest(claim.next_at, self._beating.next_judgment(claim.oldest_beat))
                if not await self._idle(listener, next_at):
                    return
        finally:
            with anyio.CancelScope(shield=True):
                if listener is not None:
                    self._listeners.discard(listener)
                    await listener.aclose()
                await self._give_back(db, unyielded)

    async def _idle(self, listener: Listener, next_at: float | None) -> bool:
        """Sleep until a publish, `next_at` or the safety net; False once the broker closed."""
        timeout = MAX_IDLE_WAIT if next_at is None else next_at - time.time() + 0.001
        try:
            await listener.wait(min(timeout, MAX_IDLE_WAIT))
        except BrokerError:
            if self._db is None:
                return False
            raise
        return self._db is not None

    async def _give_back(self, db: Database, unyielded: deque[_Claimed]) -> None:
        if not unyielded or db.closed:
            return  # a closed database: their leases run out instead
        leases = [(message.id, message.token) for message in unyielded]
        unyielded.clear()
        try:
            await db.run(_release, leases, self._wake)
        except BrokerError:  # closed meanwhile, or locked: their leases run out instead
            logger.warning("could not give back %d claimed message(s)", len(leases), exc_info=True)

    def mailbox(self) -> Mailbox:
        """Return the mailbox in this broker's database (open the broker first)."""
        if self._mailbox is None:
            self._mailbox = SQLiteMailbox(self._database())
        return self._mailbox

    async def purge(self, queue: str) -> int:
        """Delete the queue's waiting and delayed messages (not the leased ones)."""
        return await self._run(_purge, queue)

    async def delayed(self, queue: str, limit: int = 100) -> list[Delayed]:
        """Return the messages of `queue` not due yet (never leased now), the soonest first."""
        return await self._run(_delayed, queue, limit, time.time())

    async def queue_stats(self, queue: str) -> QueueStats:
        """Count the queue's waiting, delayed, leased (running) and dead messages."""
        return await self._run(_queue_stats, queue, time.time())

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Return the queue's dead letters, oldest first."""
        return await self._run(deadletters.dead_letters, queue, limit)

    async def dead_letter_stats(self, queue: str) -> DeadLetterStats:
        """Return how many dead letters `queue` keeps, their bytes, and how many were dropped."""
        return await self._run(deadletters.stats, queue)

    async def retry_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Move dead letters back to their queue (priority 0, never delivered), then wake it."""
        return await self._write(deadletters.retry, queue, ids, wake=self._wake)

    async def purge_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (those in `ids`, else all)."""
        return await self._write(deadletters.purge, queue, ids)
