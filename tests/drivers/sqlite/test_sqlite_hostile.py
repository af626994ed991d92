"""SQLite rows are not trusted: STRICT tables for new files, and a bad row in an old file is
dead-lettered at once, saying which column is wrong, instead of killing every worker."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from aqueue import App, Worker
from aqueue.drivers import create_backend
from aqueue.drivers.sqlite.broker import SCHEMA as BROKER_SCHEMA
from aqueue.drivers.sqlite.database import STRICT
from aqueue.drivers.sqlite.mailbox import SCHEMA as MAILBOX_SCHEMA
from aqueue.drivers.sqlite.results import SCHEMA as RESULTS_SCHEMA

ALL_SCHEMA = (*BROKER_SCHEMA, *MAILBOX_SCHEMA, *RESULTS_SCHEMA)
TABLES = ["aqueue_dead_letters", "aqueue_mailbox", "aqueue_messages", "aqueue_results"]
TABLES.append("aqueue_settings")


def make_app(db: Path) -> App:
    app = App("tests", broker=f"sqlite:///{db}", set_as_current=False)

    @app.task(name="tests.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


def legacy_file(db: Path) -> None:
    """A database made by an aqueue (or a SQLite) without STRICT tables."""
    with sqlite3.connect(db) as conn:
        for statement in ALL_SCHEMA:
            conn.execute(statement.removesuffix(" STRICT"))
    conn.close()


def insert(db: Path, sql: str, *rows: tuple[object, ...]) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany(sql, rows)
    conn.close()


@pytest.mark.skipif(not STRICT, reason=f"SQLite {sqlite3.sqlite_version} has no STRICT tables")
async def test_new_tables_are_strict(tmp_path: Path) -> None:
    db = tmp_path / "aqueue.db"
    async with make_app(db) as app:
        await app.broker()  # the broker's and the mailbox's tables
    async with create_backend(f"sqlite:///{db}", {}):  # the results table
        pass
    with sqlite3.connect(db) as conn:
        sql = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        assert all(sql[name].endswith("STRICT") for name in TABLES), sql
        with pytest.raises(sqlite3.IntegrityError, match="cannot store TEXT value in INTEGER"):
            conn.execute(
                "INSERT INTO aqueue_messages (queue, priority, body, due) VALUES (?, ?, ?, ?)",
                ("default", "high", b"x", time.time()),
            )
    conn.close()


async def test_bad_rows_of_an_old_file_are_dead_lettered_at_once(tmp_path: Path) -> None:
    # Before: a TEXT priority or due killed every worker at start-up (TypeError), and an
    # INTEGER body was retried five times, then dead-lettered as max-deliveries.
    db = tmp_path / "aqueue.db"
    legacy_file(db)
    now = time.time()
    columns = "INSERT INTO aqueue_messages (id, queue, priority, body, due, lease_until, "
    insert(
        db,
        columns + "lease_token, deliveries) VALUES (?, 'default', ?, ?, ?, ?, ?, ?)",
        (11, "high", b"x", now, None, None, 0),
        (12, 0, b"x", "soon", None, None, 0),
        (13, 0, 42, now, None, None, 0),
        (14, 0, "text", now, None, None, 0),
        (15, 0, b"x", now, "later", "token", 1),
        (16, 0, b"x", now, None, None, 1.5),
    )
    app = make_app(db)
    async with app:
        good = await app.tasks["tests.add"].delay(2, 2)
        worker = Worker(app, burst=True)
        with anyio.fail_after(30):
            await worker.run()
        assert await good.get(timeout=5) == 4
        letters = await (await app.broker()).dead_letters("default")
    assert {letter.reason for letter in letters} == {"undecodable"}
    assert sorted(letter.detail for letter in letters) == [
        "corrupt row 11: its priority is TEXT, not an INTEGER",
        "corrupt row 12: its due is TEXT, not a REAL",
        "corrupt row 13: its body is an INTEGER, not a BLOB",
        "corrupt row 14: its body is TEXT, not a BLOB",
        "corrupt row 15: its lease_until is TEXT, not a REAL",
        "corrupt row 16: its deliveries is a REAL, not an INTEGER",
    ]
    assert worker.stats()["refused"] == 0  # the broker dead-lettered them; no task saw one
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM aqueue_messages").fetchone() == (0,)
    conn.close()


async def test_a_bad_result_row_is_a_clean_error_for_its_caller(tmp_path: Path) -> None:
    db = tmp_path / "aqueue.db"
    legacy_file(db)
    far = time.time() + 3600
    sql = "INSERT INTO aqueue_results (task_id, state, payload, expires) VALUES (?, ?, ?, ?)"
    rows = [("t-text", "abc"), ("t-int", 5), ("t-not-a-map", b"\x05")]
    insert(db, sql, *((task_id, "SUCCESS", payload, far) for task_id, payload in rows))
    app = make_app(db)
    async with app:
        for task_id, _ in rows:
            with pytest.raises(ValueError, match=r"\S"):  # not a hang, nor an AttributeError
                await app.AsyncResult(task_id).get(timeout=5)
        with pytest.raises(ValueError, match=r"^stored result is a msgpack int, not a map$"):
            await app.AsyncResult("t-not-a-map").get(timeout=5)


async def test_bad_dead_letter_rows_are_read_without_error(tmp_path: Path) -> None:
    db = tmp_path / "aqueue.db"
    legacy_file(db)
    sql = "INSERT INTO aqueue_dead_letters (queue, body, reason, detail, at) VALUES (?, ?, ?, ?, ?)"
    insert(db, sql, ("default", 7, 8, 9, "when"), ("default", b"b", "r", "d", 1.5))
    async with make_app(db) as app:
        letters = await (await app.broker()).dead_letters("default")
    assert [(x.body, x.reason, x.detail, x.at) for x in letters] == [
        (b"7", "8", "9", 0.0),
        (b"b", "r", "d", 1.5),
    ]
