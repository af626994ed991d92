"""Rows of the SQLite broker's messages table are not trusted: a bad one is dead-lettered.

New tables are STRICT (SQLite 3.37+), but a file made before may hold a TEXT priority or due, or
an INTEGER body: a TEXT priority made the claim's sort raise, a TEXT due `min()`, and every
worker died at start-up. A claim checks the type of each column it reads (`fault`), and a
consumer about to sleep looks for times that are not numbers (`bad_times`, an index range from
`''`: TEXT and BLOB sort after every number). A bad row is dead-lettered at once as
`undecodable`, its detail naming the row and the column.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from ...message import DeadLetterReason
from .database import placeholders, sql_type

__all__ = ["bad_times", "bury_rows", "fault"]

_BAD_TIMES = """SELECT id, 'due', due FROM aqueue_messages
    WHERE queue = ? AND lease_until IS NULL AND due >= '' LIMIT 100"""
_BAD_LEASES = """SELECT id, 'lease_until', lease_until FROM aqueue_messages
    WHERE queue = ? AND lease_until >= '' LIMIT 100"""
_BURY = "INSERT INTO aqueue_dead_letters (queue, body, reason, detail, at) VALUES (?, ?, ?, ?, ?)"
_UNDECODABLE = DeadLetterReason.UNDECODABLE.value


def bury_rows(conn: sqlite3.Connection, faults: dict[int, str], now: float) -> int:
    """Dead-letter rows by id as undecodable, each with what is wrong with it; say how many."""
    rows = conn.execute(
        f"DELETE FROM aqueue_messages WHERE id IN ({placeholders(len(faults))}) "
        "RETURNING id, queue, body",
        list(faults),
    ).fetchall()
    conn.executemany(
        _BURY,
        [
            (
                str(queue),
                body if type(body) is bytes else str(body).encode(),
                _UNDECODABLE,
                f"corrupt row {id_}: {faults[id_]}",
                now,
            )
            for id_, queue, body in rows
        ],
    )
    return len(rows)


def bad_times(conn: sqlite3.Connection, queues: Sequence[str], now: float) -> int:
    """Dead-letter rows whose due or lease time is not a number; say how many."""
    faults: dict[int, str] = {}
    for queue in queues:
        for sql in (_BAD_TIMES, _BAD_LEASES):
            for id_, column, value in conn.execute(sql, (queue,)):
                faults[id_] = f"its {column} is {sql_type(value)}, not a REAL"
    return bury_rows(conn, faults, now) if faults else 0


def fault(priority: Any, body: Any, deliveries: Any) -> str | None:
    """Say what is wrong with a claimed row's columns, if anything."""
    if type(priority) is not int:
        return f"its priority is {sql_type(priority)}, not an INTEGER"
    if type(body) is not bytes:
        return f"its body is {sql_type(body)}, not a BLOB"
    if type(deliveries) is not int:
        return f"its deliveries is {sql_type(deliveries)}, not an INTEGER"
    return None
