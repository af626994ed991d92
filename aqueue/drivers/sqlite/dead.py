"""The SQLite broker's dead letters: kept under a cap in bytes, listed, retried and purged.

Rows of `aqueue_dead_letters` (made by `sqlite.SCHEMA`). Triggers keep, per queue, the count
and the bytes (body, reason and detail) of its rows in `aqueue_dead_letter_totals`, whatever
deletes them, so the totals stay true; `bury` inserts dead letters, then drops the oldest of
their queue while it is over its cap (`cap`, written by each consumer as it starts; else
`DEAD_LETTER_MAX_BYTES`) or over `DEAD_LETTER_MAX_COUNT`, counting them in `dropped`. The
newest dead letter is always kept.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..base import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_COUNT, DeadLetter, DeadLetterStats
from .database import STRICT, immediate, placeholders

__all__ = [
    "SCHEMA",
    "bury",
    "bury_oversized",
    "dead_letters",
    "purge",
    "retry",
    "set_caps",
    "stats",
]

#: A dead letter's bytes (`DeadLetter.size`); length() of a BLOB reads no overflow pages.
_SIZE = "length({0}.body) + length(CAST({0}.reason AS BLOB)) + length(CAST({0}.detail AS BLOB))"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aqueue_dead_letter_totals (
        queue TEXT PRIMARY KEY,
        kept INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0,
        cap INTEGER
    )"""
    + STRICT,
    # Dead letters kept before the totals existed (an older aqueue) are counted once.
    f"""INSERT INTO aqueue_dead_letter_totals (queue, kept, bytes)
        SELECT queue, count(*), sum({_SIZE.format("d")}) FROM aqueue_dead_letters AS d
        WHERE queue NOT IN (SELECT queue FROM aqueue_dead_letter_totals) GROUP BY queue""",
    f"""CREATE TRIGGER IF NOT EXISTS aqueue_dead_letters_added
        AFTER INSERT ON aqueue_dead_letters BEGIN
            INSERT INTO aqueue_dead_letter_totals (queue, kept, bytes)
                VALUES (NEW.queue, 1, {_SIZE.format("NEW")})
                ON CONFLICT (queue) DO UPDATE SET
                    kept = kept + 1, bytes = bytes + excluded.bytes;
        END""",
    f"""CREATE TRIGGER IF NOT EXISTS aqueue_dead_letters_removed
        AFTER DELETE ON aqueue_dead_letters BEGIN
            UPDATE aqueue_dead_letter_totals
                SET kept = kept - 1, bytes = bytes - ({_SIZE.format("OLD")})
                WHERE queue = OLD.queue;
        END""",
)

_BURY = "INSERT INTO aqueue_dead_letters (queue, body, reason, detail, at) VALUES (?, ?, ?, ?, ?)"
_TOTALS = "SELECT kept, bytes, coalesce(cap, ?) FROM aqueue_dead_letter_totals WHERE queue = ?"
_OLDEST = (
    f"SELECT id, {_SIZE.format('d')} FROM aqueue_dead_letters AS d "
    "WHERE queue = ? ORDER BY id LIMIT 64"
)


def bury(conn: sqlite3.Connection, rows: Iterable[tuple[str, bytes, str, str, float]]) -> None:
    """Add dead letters (queue, body, reason, detail, at), then trim their queues."""
    rows = list(rows)
    conn.executemany(_BURY, rows)
    for queue in dict.fromkeys(row[0] for row in rows):
        _trim(conn, queue)


def bury_oversized(
    conn: sqlite3.Connection, ids: Sequence[int], max_bytes: int | None, now: float
) -> int:
    """Dead-letter messages by id as `oversized`, then trim their queues; say how many.

    Each is copied row to row, in SQL: its body is never read into Python.
    """
    marks = placeholders(len(ids))
    queues = [
        row[0]
        for row in conn.execute(
            "INSERT INTO aqueue_dead_letters (queue, body, reason, detail, at) "
            "SELECT CAST(queue AS TEXT), CAST(body AS BLOB), 'oversized', "
            "length(body) || ' bytes, over message_max_bytes (' || ? || ')', ? "
            f"FROM aqueue_messages WHERE id IN ({marks}) ORDER BY id RETURNING queue",
            (max_bytes, now, *ids),
        ).fetchall()
    ]
    conn.execute(f"DELETE FROM aqueue_messages WHERE id IN ({marks})", ids)
    conn.execute(f"DELETE FROM aqueue_runs WHERE id IN ({marks})", ids)
    for queue in dict.fromkeys(queues):
        _trim(conn, queue)
    return len(queues)


def _trim(conn: sqlite3.Connection, queue: str) -> None:
    """Drop the oldest dead letters of `queue` while it holds too much (keeping the newest)."""
    kept, total, cap = conn.execute(_TOTALS, (DEAD_LETTER_MAX_BYTES, queue)).fetchone()
    dropped = 0
    while kept > 1 and (total > cap or kept > DEAD_LETTER_MAX_COUNT):
        batch: list[int] = []
        for id_, size in conn.execute(_OLDEST, (queue,)).fetchall():
            if kept <= 1 or (total <= cap and kept <= DEAD_LETTER_MAX_COUNT):
                break
            batch.append(id_)
            kept, total = kept - 1, total - size
        if not batch:
            break
        _delete(conn, batch)
        dropped += len(batch)
    if dropped:
        conn.execute(
            "UPDATE aqueue_dead_letter_totals SET dropped = dropped + ? WHERE queue = ?",
            (dropped, queue),
        )


def _delete(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    if ids:
        conn.execute(f"DELETE FROM aqueue_dead_letters WHERE id IN ({placeholders(len(ids))})", ids)


def set_caps(conn: sqlite3.Connection, queues: Sequence[str], cap: int) -> None:
    """Record the cap of each queue's dead letters (a consumer's, as it starts)."""
    conn.executemany(
        "INSERT INTO aqueue_dead_letter_totals (queue, cap) VALUES (?, ?) "
        "ON CONFLICT (queue) DO UPDATE SET cap = excluded.cap",
        [(queue, cap) for queue in queues],
    )


def dead_letters(conn: sqlite3.Connection, queue: str, limit: int) -> list[DeadLetter]:
    """Return the oldest dead letters of `queue`, up to `limit`."""
    rows = conn.execute(  # CAST: a row of a non-STRICT table may hold anything
        "SELECT CAST(body AS BLOB), CAST(reason AS TEXT), CAST(detail AS TEXT), at, id "
        "FROM aqueue_dead_letters WHERE queue = ? ORDER BY id LIMIT ?",
        (queue, limit),
    ).fetchall()
    return [
        DeadLetter(queue, body or b"", reason or "", detail or "", _time(at), str(id_))
        for body, reason, detail, at, id_ in rows
    ]


def _time(value: Any) -> float:
    return float(value) if type(value) in (int, float) and math.isfinite(value) else 0.0


def stats(conn: sqlite3.Connection, queue: str) -> DeadLetterStats:
    """Return how many dead letters `queue` keeps, their bytes, and how many were dropped."""
    row = conn.execute(
        "SELECT kept, bytes, dropped FROM aqueue_dead_letter_totals WHERE queue = ?", (queue,)
    ).fetchone()
    return DeadLetterStats(*(row or (0, 0, 0)))


def _select(queue: str, ids: Sequence[str] | None) -> tuple[str, list[object]]:
    if ids is None:
        return "queue = ?", [queue]
    numbers = [int(i) for i in ids if i.isdigit()]
    return f"queue = ? AND id IN ({placeholders(len(numbers))})", [queue, *numbers]


def purge(conn: sqlite3.Connection, queue: str, ids: Sequence[str] | None) -> int:
    """Delete dead letters of `queue` (those in `ids`, else all); return how many."""
    where, args = _select(queue, ids)
    return conn.execute(f"DELETE FROM aqueue_dead_letters WHERE {where}", args).rowcount


def retry(conn: sqlite3.Connection, queue: str, ids: Sequence[str] | None) -> int:
    """Move dead letters back to their queue, at priority 0, never delivered; return how many."""
    where, args = _select(queue, ids)
    with immediate(conn):
        bodies = conn.execute(
            f"DELETE FROM aqueue_dead_letters WHERE {where} RETURNING id, body", args
        ).fetchall()
        bodies.sort()
        now = time.time()
        conn.executemany(
            "INSERT INTO aqueue_messages (queue, priority, body, due) VALUES (?, 0, ?, ?)",
            [(queue, body, now) for _, body in bodies],
        )
    return len(bodies)
