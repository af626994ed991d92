"""The ledger: every attempt of every task in a SQLite file, and the checker that reads it.

Tables, in one WAL-mode file that the harness and every worker process write:

    sent(id, at)                      a publish the broker confirmed (publish returned)
    attempts(id, attempt, pid, start, end, outcome)
                                      one row per run of a task: written at its start, its
                                      end and outcome ("ok") at its end; a row with no end is
                                      an attempt its worker died (or was stopped) in
    faults(at, kind, detail, until)   what the harness injected, and when it was healed

The checker counts, after draining: **lost** (sent, never finished), **duplicated** (finished
more than once), **recovered** (an attempt cut short, then finished by another), and
**unexpected** (finished but never confirmed as sent: a publish that failed and landed).
`TASK_LEDGER` is the code a task module uses to write it (no aqueue import needed).
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    rowid INTEGER PRIMARY KEY, id TEXT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL,
    start REAL NOT NULL, end REAL, outcome TEXT
);
CREATE INDEX IF NOT EXISTS attempts_id ON attempts (id);
CREATE TABLE IF NOT EXISTS faults (
    at REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL, until REAL
);
"""

#: What a task module defines to write the ledger: `start(id, attempt) -> rowid`, `end(rowid)`.
TASK_LEDGER = """
import os as _os
import sqlite3 as _sqlite3
import time as _time

_LEDGER = None


def _ledger():
    global _LEDGER
    if _LEDGER is None:
        _LEDGER = _sqlite3.connect({path!r}, timeout=60.0, isolation_level=None)
        _LEDGER.execute("PRAGMA synchronous=NORMAL")
    return _LEDGER


def ledger_start(task_id, attempt):
    cursor = _ledger().execute(
        "INSERT INTO attempts (id, attempt, pid, start) VALUES (?, ?, ?, ?)",
        (task_id, attempt, _os.getpid(), _time.time()),
    )
    return cursor.lastrowid


def ledger_end(rowid, outcome="ok"):
    _ledger().execute(
        "UPDATE attempts SET end = ?, outcome = ? WHERE rowid = ?", (_time.time(), outcome, rowid)
    )
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open (and create) the ledger in WAL mode, for many writing processes."""
    db = sqlite3.connect(path, timeout=60.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


class Ledger:
    """The harness's side: record confirmed publishes and faults; count what finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = connect(path)

    def close(self) -> None:
        self.db.close()

    def sent(self, ids: list[str]) -> None:
        now = time.time()
        self.db.executemany("INSERT OR IGNORE INTO sent VALUES (?, ?)", [(i, now) for i in ids])

    def fault(self, kind: str, detail: str = "", at: float | None = None) -> int:
        cursor = self.db.execute(
            "INSERT INTO faults (at, kind, detail) VALUES (?, ?, ?)",
            (time.time() if at is None else at, kind, detail),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def healed(self, fault: int) -> None:
        self.db.execute("UPDATE faults SET until = ? WHERE rowid = ?", (time.time(), fault))

    def finished(self) -> int:
        """How many sent tasks have finished at least once (what a drain waits on)."""
        (count,) = self.db.execute(
            "SELECT count(DISTINCT a.id) FROM attempts a JOIN sent s ON s.id = a.id "
            "WHERE a.outcome = 'ok'"
        ).fetchone()
        return int(count)

    def started(self, pid: int | None = None) -> int:
        query = "SELECT count(*) FROM attempts" + (" WHERE pid = ?" if pid else "")
        (count,) = self.db.execute(query, (pid,) if pid else ()).fetchone()
        return int(count)

    def check(self) -> Report:
        return check(self.db)


@dataclass
class Report:
    """What the checker found; `ok` is the pass line every scenario shares."""

    sent: int = 0
    finished: int = 0
    lost: int = 0
    duplicated: int = 0
    recovered: int = 0
    unexpected: int = 0
    unconfirmed: int = 0  # ran, though its producer's publish failed (allowed: at-least-once)
    cut_short: int = 0  # attempts that never ended (their worker died or was stopped)
    faults: int = 0
    #: Per fault: seconds from the fault (or its healing) until every attempt it cut short
    #: had finished elsewhere; the scenario's "time to recover" is the largest.
    recovery: list[float] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)

    @property
    def time_to_recover(self) -> float:
        return max(self.recovery, default=0.0)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.unexpected == 0

    def line(self) -> str:
        return (
            f"sent {self.sent}, finished {self.finished}, lost {self.lost}, "
            f"duplicated {self.duplicated}, recovered {self.recovered}, "
            f"unexpected {self.unexpected}, unconfirmed but ran {self.unconfirmed}, "
            f"cut short {self.cut_short}, faults {self.faults}, "
            f"time to recover {self.time_to_recover:.1f} s"
        )


def check(db: sqlite3.Connection) -> Report:
    """Read the ledger: lost, duplicated, recovered, unexpected, and the recovery times."""
    report = Report()
    sent = {row[0] for row in db.execute("SELECT id FROM sent")}
    done: dict[str, int] = {}
    cut: dict[str, list[tuple[float, int]]] = {}  # id -> (start, pid) of attempts cut short
    last_end: dict[str, float] = {}
    for task_id, pid, start, end, outcome in db.execute(
        "SELECT id, pid, start, end, outcome FROM attempts ORDER BY start"
    ):
        if outcome == "ok":
            done[task_id] = done.get(task_id, 0) + 1
            last_end[task_id] = max(last_end.get(task_id, 0.0), end)
        elif end is None:
            cut.setdefault(task_id, []).append((start, pid))
    report.sent = len(sent)
    report.finished = sum(1 for task_id in done if task_id in sent)
    report.lost_ids = sorted(sent - done.keys())
    report.lost = len(report.lost_ids)
    report.duplicated = sum(1 for count in done.values() if count > 1)
    # A publish that failed for its producer may still have landed: counted apart.
    report.unconfirmed = sum(
        1 for task_id in done if task_id not in sent and task_id.startswith("unconfirmed-")
    )
    report.unexpected = sum(1 for task_id in done if task_id not in sent) - report.unconfirmed
    report.recovered = sum(1 for task_id in cut if task_id in done)
    report.cut_short = sum(len(starts) for starts in cut.values())
    faults = db.execute("SELECT at, coalesce(until, at), detail FROM faults ORDER BY at").fetchall()
    report.faults = len(faults)
    report.recovery = recovery(faults, cut, last_end)
    return report


def recovery(
    faults: list[tuple[float, float, str]],
    cut: dict[str, list[tuple[float, int]]],
    last_end: dict[str, float],
) -> list[float]:
    """Per fault: seconds from it (or its healing) until the tasks it cut short had finished.

    A task is the orphan of the fault that cut its last unfinished attempt: the fault that
    names the attempt's process (a kill: "... pid N") at or after its start, else the first
    fault healed at or after that attempt started. A task cut short twice (its second run in
    a worker killed by the next fault) counts for the second fault only; before, it counted
    for both, and the first fault's time to recover took in the whole second recovery. (Before
    the pid was looked at, a run started between two kills and cut by the second counted for
    the first: 10.2 s instead of 8.5 s in one storm run.)
    """
    ends: dict[int, list[float]] = {}
    for task_id, attempts in cut.items():
        last, pid = max(attempts)
        index = next(
            (
                i
                for i, (_, until, detail) in enumerate(faults)
                if until >= last and killed(detail) == pid
            ),
            None,
        )
        if index is None:
            index = next((i for i, (_, until, _) in enumerate(faults) if until >= last), None)
        if index is None or task_id not in last_end:
            continue
        at, until, _ = faults[index]
        if last < at - 60 or last_end[task_id] < until:
            continue  # cut short long before the fault (a stuck attempt), or finished before
        ends.setdefault(index, []).append(last_end[task_id] - until)
    return [max(ends[index]) for index in sorted(ends)]


def killed(detail: str) -> int | None:
    """The process a fault names ("worker 2 pid 1234"), or None."""
    found = re.search(r"\bpid (\d+)\b", detail)
    return int(found.group(1)) if found else None
