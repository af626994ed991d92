"""Three `aqueue beat` processes on one broker, a real 1 s entry, one of them killed -9.

Every due time in the window must be sent exactly once (no duplicate), and none may be
missing (no gap longer than the interval), before and after the kill. The beats run for a few
real seconds: the 1 s schedule is the thing under test.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from aqueue import App
from tests.helpers.consuming import take_envelopes
from tests.helpers.drivers import SERVICES, driver_url, require

pytestmark = pytest.mark.slow

PROJECT = """
from aqueue import App
app = App("tasks")
app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 1.0}}

@app.task
async def tick():
    return None
"""


@pytest.fixture(params=["sqlite", *SERVICES])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    driver: str = request.param
    await require(driver)
    made = driver_url(driver, tmp_path)
    yield made
    if driver in SERVICES:
        await SERVICES[driver].cleanup(made)


async def sent_dues(url: str) -> list[float]:
    async with App("tests", broker=url, set_as_current=False) as app:
        return [e.headers["beat-due"] for e in await take_envelopes(app)]


def beat(cwd: Path, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "AQUEUE_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
    env.pop("AQUEUE_RESULT_BACKEND", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aqueue", "beat", "tasks:app", "-l", "WARNING"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("aqueue beat")  # the banner: it is running
    return proc


def test_three_beats_one_killed_send_each_second_once(url: str, tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(PROJECT)
    beats = [beat(tmp_path, url) for _ in range(3)]
    try:
        time.sleep(3.0)  # the 1 s schedule under test
        beats[0].send_signal(signal.SIGKILL)
        beats[0].wait(10)
        time.sleep(3.0)
    finally:
        for proc in beats[1:]:
            proc.send_signal(signal.SIGTERM)
        for proc in beats:
            proc.wait(30)
            if proc.stdout:
                proc.stdout.close()
    dues = anyio.run(sent_dues, url)
    assert len(dues) == len(set(dues)), "a due time was sent twice"
    dues.sort()
    assert len(dues) >= 5
    assert [b - a for a, b in itertools.pairwise(dues)] == [1.0] * (len(dues) - 1)


def test_a_worker_with_beat_sends_and_runs_the_entries(tmp_path: Path) -> None:
    """`aqueue worker -B`: the worker's embedded beat sends each run, the worker runs it."""
    (tmp_path / "tasks.py").write_text(PROJECT)
    env = {**os.environ, "AQUEUE_BROKER_URL": f"sqlite:///{tmp_path / 'aqueue.db'}"}
    env.pop("AQUEUE_RESULT_BACKEND", None)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-B", "-l", "INFO"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    ran = sent = 0
    try:
        for line in proc.stdout:  # blocks on the worker's own log lines (pytest-timeout bounds)
            sent += "Sent tick (tasks.tick)" in line
            ran += "tasks.tick[" in line and "succeeded" in line
            if ran >= 2:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc.stdout.close()
    assert ran >= 2
    assert sent >= ran
