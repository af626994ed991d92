"""The mailbox of `sqlite://`: topics and settings in the database, wake-ups by socket.

A published message is a row, kept for `RETENTION` seconds; subscribers note the last row id
when they start, and on every wake-up read the rows of their topic past it. Settings are rows
of a key-value table with an optional expiry time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..base import Mailbox
from .database import STRICT, Database
from .wake import Listener, wake_dir

__all__ = ["SCHEMA", "SQLiteMailbox"]

#: How long a published message stays readable: longer than any subscriber's catch-up.
RETENTION = 60.0
#: The longest a subscriber sleeps before it looks again, wake-up or not (a safety net).
MAX_IDLE_WAIT = 30.0

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aqueue_mailbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        data BLOB NOT NULL,
        at REAL NOT NULL
    )"""
    + STRICT,
    "CREATE INDEX IF NOT EXISTS aqueue_mailbox_topic ON aqueue_mailbox (topic, id)",
    """CREATE TABLE IF NOT EXISTS aqueue_settings (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        expires REAL
    )"""
    + STRICT,
)


def _publish(conn: sqlite3.Connection, topic: str, data: bytes) -> None:
    now = time.time()
    conn.execute("DELETE FROM aqueue_mailbox WHERE at < ?", (now - RETENTION,))
    conn.execute(
        "INSERT INTO aqueue_mailbox (topic, data, at) VALUES (?, ?, ?)", (topic, data, now)
    )


def _last_id(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM aqueue_mailbox").fetchone()
    return int(row[0])


def _since(conn: sqlite3.Connection, topic: str, after: int) -> list[tuple[int, bytes]]:
    return conn.execute(
        "SELECT id, CAST(data AS BLOB) FROM aqueue_mailbox WHERE topic = ? AND id > ? ORDER BY id",
        (topic, after),
    ).fetchall()


def _put(conn: sqlite3.Connection, key: str, value: bytes, expires: float | None) -> None:
    conn.execute(
        "INSERT INTO aqueue_settings (key, value, expires) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
        (key, value, expires),
    )


def _items(conn: sqlite3.Connection, prefix: str) -> dict[str, bytes]:
    now = time.time()
    conn.execute("DELETE FROM aqueue_settings WHERE expires <= ?", (now,))
    rows = conn.execute(
        "SELECT CAST(key AS TEXT), CAST(value AS BLOB) FROM aqueue_settings "
        "WHERE substr(key, 1, ?) = ?",
        (len(prefix), prefix),
    ).fetchall()
    return dict(rows)


def _delete(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM aqueue_settings WHERE key = ?", (key,))


def _claim(conn: sqlite3.Connection, key: str, ttl: float) -> bool:
    now = time.time()
    conn.execute("DELETE FROM aqueue_settings WHERE key = ? AND expires <= ?", (key, now))
    cursor = conn.execute(
        "INSERT INTO aqueue_settings (key, value, expires) VALUES (?, X'', ?) "
        "ON CONFLICT (key) DO NOTHING",
        (key, now + ttl),
    )
    return cursor.rowcount == 1


class SQLiteMailbox(Mailbox):
    """Topics and settings in the broker's database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._wake = wake_dir(db.path, "mailbox")

    async def publish(self, topic: str, data: bytes) -> None:
        """Store the message and wake the subscribers."""
        await self._db.write(_publish, topic, data, wake=self._wake)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Read the topic's new rows on every wake-up, from the moment this is entered."""
        listener = await Listener.open(self._wake)
        try:
            after = await self._db.run(_last_id)
            yield self._messages(listener, topic, after)
        finally:
            await listener.aclose()

    async def _messages(self, listener: Listener, topic: str, after: int) -> AsyncIterator[bytes]:
        while True:
            listener.drain()
            rows = await self._db.run(_since, topic, after)
            for row_id, data in rows:
                after = row_id
                yield data
            if not rows:
                await listener.wait(MAX_IDLE_WAIT)

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a setting."""
        expires = None if ttl is None else time.time() + ttl
        await self._db.write(_put, key, value, expires)

    async def items(self, prefix: str) -> dict[str, bytes]:
        """Return the live settings under `prefix`."""
        return await self._db.run(_items, prefix)

    async def delete(self, key: str) -> None:
        """Remove a setting."""
        await self._db.write(_delete, key)

    async def claim(self, key: str, ttl: float) -> bool:
        """Insert the settings row `key` unless a live one exists (the primary key decides)."""
        return await self._db.write(_claim, key, ttl)
