"""The checker's time to recover: a task cut short twice counts for the fault that cut it last."""

from __future__ import annotations

from pathlib import Path

from .ledger import Ledger


def test_a_task_cut_short_twice_counts_for_the_second_fault(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        ledger.sent(["a", "b"])
        db = ledger.db
        db.executemany(
            "INSERT INTO attempts (id, attempt, pid, start, end, outcome) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("a", 1, 1, 9.0, None, None),  # cut short by the first kill (at 10) ...
                ("a", 2, 2, 15.0, None, None),  # ... its second run by the second (at 20)
                ("a", 3, 3, 23.0, 25.0, "ok"),
                ("b", 1, 1, 9.5, None, None),  # cut short by the first kill only
                ("b", 2, 2, 11.0, 12.0, "ok"),
            ],
        )
        ledger.fault("kill -9", "worker 0", at=10.0)
        ledger.fault("kill -9", "worker 1", at=20.0)
        report = ledger.check()
    finally:
        ledger.close()
    assert report.recovered == 2
    assert report.recovery == [2.0, 5.0]  # before: [15.0, 5.0], the first counting "a" too
    assert report.time_to_recover == 5.0
