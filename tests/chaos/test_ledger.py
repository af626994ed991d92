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


def test_a_run_cut_by_a_later_kill_counts_for_the_kill_of_its_own_worker(tmp_path: Path) -> None:
    # A storm run: "a" ran again in worker pid 2 after the first kill, started before the
    # second kill (of pid 3), and was cut by the third (of pid 2 itself).
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        ledger.sent(["a"])
        ledger.db.executemany(
            "INSERT INTO attempts (id, attempt, pid, start, end, outcome) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("a", 1, 1, 9.0, None, None),
                ("a", 2, 2, 13.0, None, None),
                ("a", 3, 4, 22.0, 26.0, "ok"),
            ],
        )
        ledger.fault("kill -9", "worker 0 pid 1", at=10.0)
        ledger.fault("kill -9", "worker 1 pid 3", at=14.0)
        ledger.fault("kill -9", "worker 2 pid 2", at=20.0)
        report = ledger.check()
    finally:
        ledger.close()
    assert report.recovery == [6.0]  # before: [12.0], from the kill of pid 3 at 14
