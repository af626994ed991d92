"""What the SQLite broker and result backend share: URL parsing and an off-loop connection.

A `Database` owns one `sqlite3` connection in WAL mode and a thread of its own that runs every
call on it, one at a time, so the event loop never waits on the disk or on another process's
write lock. A call is handed over through a `queue.SimpleQueue` and its outcome comes back with
`call_soon_threadsafe`: a round trip costs about a third of `anyio.to_thread.run_sync` with a
`CapacityLimiter(1)` (no limiter checkpoints, no worker pool), which every commit pays.

Small writes (an ack, a result, a publish) go through `Database.write`, which commits them in
groups (group commit): writes that arrive while a commit is under way wait for the next one and
share its transaction, its thread hop and its wake-up notifications, and so do writes made in
the same turn of the loop. Under load that turns thousands of commits a second into a few
hundred, each carrying many writes: 100 concurrent `delay()` calls make one commit a round.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple

import anyio
import anyio.to_thread

from ...exceptions import BrokerError, ConfigurationError
from .wake import notify

__all__ = [
    "BUSY_TIMEOUT_MS",
    "STRICT",
    "Database",
    "connect",
    "immediate",
    "parse_sqlite_url",
    "placeholders",
    "sql_type",
]

T = TypeVar("T")
Item = TypeVar("Item")
Ts = TypeVarTuple("Ts")

#: How long a writer waits for another connection's write lock before giving up.
BUSY_TIMEOUT_MS = 5000

#: Appended to every CREATE TABLE: SQLite 3.37+ then refuses a value of the wrong type (a TEXT
#: priority) instead of storing it. Tables made before, or by an older SQLite, are not STRICT:
#: readers check the types of what they read all the same.
STRICT = " STRICT" if sqlite3.sqlite_version_info >= (3, 37) else ""

_SQL_TYPES = {int: "an INTEGER", float: "a REAL", str: "TEXT", bytes: "a BLOB"}


def sql_type(value: object) -> str:
    """Name the SQLite type of a value read from a row: "an INTEGER", "TEXT", "NULL"..."""
    return _SQL_TYPES.get(type(value), "NULL" if value is None else type(value).__name__)


def parse_sqlite_url(url: str) -> str:
    """Return the file path of a `sqlite:///relative.db` or `sqlite:////absolute.db` URL.

    The path is returned as written; `Database.open` resolves a relative one against the
    current directory at open time.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise ConfigurationError(f"{url!r} is not a sqlite:// URL")
    if "?" in rest or "#" in rest:
        raise ConfigurationError(
            f"{url!r}: sqlite:// URLs take no query; pass options as transport options"
        )
    if not rest.startswith("/") or rest in ("/", "//"):
        raise ConfigurationError(
            f"{url!r} names no database file; write sqlite:///aqueue.db for a file in the "
            "current directory, or sqlite:////absolute/path/aqueue.db"
        )
    path = rest[1:]
    if path in (":memory:", "/:memory:") or path.startswith("file:"):
        raise ConfigurationError(
            f"{url!r}: an in-memory SQLite database cannot be shared between a producer and "
            "its workers; use memory:// for one process, or sqlite:///aqueue.db"
        )
    return path


def placeholders(count: int) -> str:
    """Return `?, ?, ...` for an IN list of `count` values."""
    return ", ".join("?" * count)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in a `BEGIN IMMEDIATE` transaction: commit on success, else roll back.

    Inside a transaction already (a grouped write), the block simply joins it.
    """
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode (a property of the file: the first opener switches it).

    Switching takes an exclusive lock, and SQLite answers "database is locked" at once, without
    its busy handler, while another connection opens the same new file: so several processes or
    threads opening a new database at once try again, for up to `BUSY_TIMEOUT_MS` (this runs
    in a thread of the database's own, never on the event loop).
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
        time.sleep(delay)  # the lock holder gives no notice when it lets go
        delay = min(delay * 2, 0.05)


def connect(path: str, schema: Sequence[str] = ()) -> sqlite3.Connection:
    """Open a connection as `Database` does (WAL, the busy timeout), creating `schema`."""
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
        check_same_thread=False,  # used from other threads, one at a time
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        with immediate(conn):
            for statement in schema:
                conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn


#: A call for the connection's thread: the function, its arguments, and the future to settle.
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    """Run the calls in order until told to stop (None): the connection's thread."""
    while (job := jobs.get()) is not None:
        func, args, future = job
        try:
            outcome: tuple[bool, Any] = (True, func(*args))
        except BaseException as exc:
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits for it now
            future.get_loop().call_soon_threadsafe(_settle, future, outcome)
        del job, func, args, future, outcome  # hold no reference while waiting for the next


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if not future.done():  # a caller cancelled by asyncio (not anyio) went away
        ok, value = outcome
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


@dataclass(slots=True)
class _Write:
    func: Callable[..., Any]
    args: tuple[Any, ...]
    wake: str | None
    futures: list[asyncio.Future[Any]]  # its callers' (several for a joined `append`)
    joinable: bool = False  # an `append`: later appends of the same call join it

    def settle(self, ok: bool, value: Any) -> None:
        for future in self.futures:
            if not future.done():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)


class Database:
    """One SQLite connection whose calls all run off the event loop, one at a time."""

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stopped = False  # the thread was told to stop: no call reaches it any more
        name = f"aqueue sqlite {os.path.basename(path)}"
        threading.Thread(target=_serve, args=(self._jobs,), name=name, daemon=True).start()
        # Dropped unclosed, the thread stops; not at interpreter exit, where the sync API's
        # I/O thread may still close this database (a daemon thread, it never blocks exit).
        weakref.finalize(self, self._jobs.put, None).atexit = False
        self._pending: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None  # committing the pending writes

    @classmethod
    async def open(cls, path: str, schema: Sequence[str]) -> Database:
        """Connect to `path` (made absolute now), switch to WAL, and create `schema`."""
        path = await anyio.to_thread.run_sync(os.path.abspath, path)
        with anyio.CancelScope(shield=True):  # a connection made is a connection closed
            try:
                conn = await anyio.to_thread.run_sync(connect, path, schema)
            except sqlite3.Error as exc:
                raise BrokerError(f"cannot open SQLite database {path}: {exc}") from exc
        return cls(path, conn)

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._conn is None

    async def run(self, func: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        """Call `func(connection, *args)` in this connection's worker thread.

        A cancelled caller still waits for the call to finish (a transaction is never left
        half done); its result is returned and the cancellation lands at the next checkpoint.
        """
        future = self._submit(self._call, func, *args)
        with anyio.CancelScope(shield=True):
            result: T = await future
        return result

    def _submit(self, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue a call for the connection's thread; return the future of its outcome."""
        if self._stopped:
            raise BrokerError(f"SQLite database {self.path} is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((func, args, future))
        return future

    def _call(self, func: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        conn = self._conn
        if conn is None:
            raise BrokerError(f"SQLite database {self.path} is closed")
        try:
            return func(conn, *args)
        except sqlite3.Error as exc:
            raise BrokerError(f"SQLite database {self.path}: {exc}") from exc

    async def write(
        self, func: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts, wake: str | None = None
    ) -> T:
        """Call `func(connection, *args)` in a transaction shared with concurrent writes.

        Once it committed, every consumer listening on `wake` (a wake-up directory) is woken,
        once per group. A write that finds no commit under way starts the database's flusher
        task, which takes its first group only once the loop has run what was ready: so the
        writes of callers woken together (100 `delay()` calls whose last commit just ended)
        share one transaction, not one alone and the rest in the next. A commit is never left
        half done: a cancelled caller's write may still be committed.
        """
        future = asyncio.get_running_loop().create_future()
        self._queue(_Write(func, args, wake, [future]))
        result: T = await future
        return result

    async def append(
        self,
        func: Callable[[sqlite3.Connection, list[Item]], object],
        items: Sequence[Item],
        wake: str | None = None,
    ) -> None:
        """`write(func, items)`, joined with the appends of `func` queued meanwhile.

        The items of concurrent callers go to one call of `func` (one `executemany` of all
        the messages of 100 `delay()` calls, not 100 of one); each caller returns once that
        call committed, and fails if it failed.
        """
        future = asyncio.get_running_loop().create_future()
        pending = self._pending
        last = pending[-1] if pending else None
        if last is not None and last.joinable and last.func is func and last.wake == wake:
            last.args[0].extend(items)
            last.futures.append(future)
        else:
            self._queue(_Write(func, (list(items),), wake, [future], joinable=True))
        await future

    def _queue(self, write: _Write) -> None:
        self._pending.append(write)
        if self._flusher is None:
            loop = asyncio.get_running_loop()
            self._flusher = loop.create_task(self._flush(), name="aqueue sqlite commits")

    async def _flush(self) -> None:
        """Commit the pending writes, group after group, until none is left."""
        group: list[_Write] = []
        try:
            while self._pending:
                group, self._pending = self._pending, []
                try:
                    outcomes = await self._submit(self._commit, group)
                except Exception as exc:  # a write's function failed: the group rolled back
                    outcomes = [(False, exc)] * len(group)
                for write, (ok, value) in zip(group, outcomes, strict=True):
                    write.settle(ok, value)
                group = []
        except BaseException:  # cancelled (the loop is closing): nobody commits these now
            error = BrokerError(f"SQLite database {self.path}: the commit was cancelled")
            for write in [*group, *self._pending]:
                write.settle(False, error)
            self._pending = []
            raise
        finally:
            self._flusher = None

    def _commit(self, group: list[_Write]) -> list[tuple[bool, Any]]:
        conn = self._conn
        if conn is None:
            return [(False, BrokerError(f"SQLite database {self.path} is closed"))] * len(group)
        try:
            with immediate(conn):
                outcomes: list[tuple[bool, Any]] = [
                    (True, write.func(conn, *write.args)) for write in group
                ]
        except sqlite3.Error as exc:
            error = BrokerError(f"SQLite database {self.path}: {exc}")
            return [(False, error)] * len(group)
        for wake in {write.wake for write in group if write.wake}:
            notify(wake)
        return outcomes

    async def close(self) -> None:
        """Close the connection once the writes pending are committed; idempotent."""
        with anyio.CancelScope(shield=True):
            flusher = self._flusher
            if flusher is not None and flusher.get_loop() is asyncio.get_running_loop():
                await asyncio.gather(flusher, return_exceptions=True)
            if self._stopped:
                return
            try:
                await self._submit(self._close)
            finally:
                self._stopped = True
                self._jobs.put(None)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
