"""The chaos scenarios at CI size: one fault of each kind, a few hundred tasks, on Redis.

Each test runs its own `redis-server` (append-only file), its own worker processes and ledger
in tmp_path, and checks the scenario's pass line; the report is in the assertion message.
benchmarks/chaos.py runs the same scenarios at full size.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tests.conftest import service_unavailable

from . import scenarios
from .harness import Outcome

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


@pytest.fixture(autouse=True)
def _redis_server() -> None:
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not on PATH")
    if importlib.util.find_spec("redis") is None:
        service_unavailable("redis-py is not installed")


def check(outcome: Outcome) -> None:
    assert outcome.passed, (
        f"{outcome.scenario}: {outcome.report.line()}; {outcome.notes}; "
        f"pass line: {outcome.pass_line}; lost ids: {outcome.report.lost_ids[:10]}"
    )


async def test_kill_9_storm(tmp_path: Path) -> None:
    outcome = await scenarios.kill_storm(tmp_path, tasks=300, workers=3, kills=2)
    check(outcome)
    assert outcome.report.recovered > 0  # the kills did cut tasks short


async def test_killed_right_after_a_claim(tmp_path: Path) -> None:
    check(await scenarios.kill_after_claim(tmp_path, kills=8, others=20))


async def test_redis_restart_appendfsync_always(tmp_path: Path) -> None:
    check(await scenarios.redis_restarts(tmp_path, tasks=300, restarts=1, fsync="always"))


async def test_a_partition_longer_than_the_lease(tmp_path: Path) -> None:
    outcome = await scenarios.partitions(tmp_path, tasks=200, count=1, length=6.0, lease=3.0)
    check(outcome)
    assert "BrokerError" in outcome.notes["producer error"][0]


async def test_sigterm_then_double_sigterm(tmp_path: Path) -> None:
    outcome = await scenarios.sigterm(tmp_path, tasks=60, terms=1, grace=1.0)
    check(outcome)


async def test_poison_mix(tmp_path: Path) -> None:
    # Three crashers: a crasher that killed a worker while another one's failure was stored
    # but not yet dead-lettered used to lose that dead letter (see the chaos report).
    check(await scenarios.poison(tmp_path, good=200, each=2, crashers=3))
