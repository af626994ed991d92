"""Logging that fits in: a project's own handlers survive `aqueue worker`, JSON lines, a log
file, and task ids on the records a task logs (aqueue/logs.py)."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from aqueue import App, Worker
from aqueue.logs import JsonFormatter, install_task_records
from tests.helpers.processes import child_env

MODULE = """
    import json
    import logging

    from aqueue import App

    {setup}

    app = App("logs", set_as_current=False{settings})
    log = logging.getLogger(__name__)


    @app.task
    async def greet(name):
        log.warning("hello %s", name)
        return name


    @app.task
    def greet_in_thread(name):
        log.warning("hi %s", name)
        return name
"""

USER_HANDLER = """
class Mine(logging.Formatter):
    def format(self, record):
        return json.dumps({"mine": True, "msg": record.getMessage(), "task_id": record.task_id})

handler = logging.FileHandler("mine.log")
handler.setFormatter(Mine())
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
"""


async def run_worker(tmp_path: Path, *args: str) -> tuple[list[str], str]:
    """Send greet("a") and greet_in_thread("b"), drain them with `aqueue worker --burst`."""
    async with App("caller", broker=f"sqlite:///{tmp_path / 'aqueue.db'}") as caller:
        ids = [
            (await caller.send_task("logmod.greet", ["a"])).id,
            (await caller.send_task("logmod.greet_in_thread", ["b"])).id,
        ]
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "aqueue", "worker", "logmod:app", "--burst", *args],
            cwd=tmp_path,
            env=child_env(),
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    return ids, done.stderr.decode()


def write(tmp_path: Path, setup: str = "", settings: str = "") -> None:
    source = textwrap.dedent(MODULE).format(setup=setup, settings=settings)
    (tmp_path / "logmod.py").write_text(source)


async def test_a_json_handler_of_the_app_survives_aqueue_worker(tmp_path: Path) -> None:
    write(tmp_path, setup=USER_HANDLER)
    ids, stderr = await run_worker(tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "mine.log").read_text().splitlines()]
    mine = {line["msg"]: line["task_id"] for line in lines}
    assert mine["hello a"] == ids[0]  # the task's own logger's record carries its id
    assert mine["hi b"] == ids[1]  # from a thread too
    assert all(line["mine"] for line in lines)
    assert "hello a" not in stderr  # nothing replaced or doubled the project's handler


async def test_hijack_off_leaves_logging_alone(tmp_path: Path) -> None:
    write(tmp_path, settings=", worker_hijack_root_logger=False")
    _, stderr = await run_worker(tmp_path, "-l", "INFO")
    assert "ready." not in stderr  # no INFO handler was installed: only Python's last resort
    assert "hello a" in stderr  # (which prints warnings as they are)


async def test_log_format_json_to_a_log_file(tmp_path: Path) -> None:
    write(tmp_path)
    ids, stderr = await run_worker(
        tmp_path, "-l", "INFO", "--log-format", "json", "--logfile", "worker.log"
    )
    assert "hello a" not in stderr
    lines = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()]
    by_message = {line["message"]: line for line in lines}
    hello = by_message["hello a"]
    assert (hello["task_id"], hello["task_name"], hello["level"]) == (
        ids[0],
        "logmod.greet",
        "WARNING",
    )
    assert by_message["hi b"]["task_id"] == ids[1]
    assert any(line["message"].endswith("ready.") and line["task_id"] is None for line in lines)


async def test_text_lines_name_the_task(tmp_path: Path) -> None:
    write(tmp_path)
    ids, stderr = await run_worker(tmp_path)
    assert f"logmod.greet[{ids[0]}]: hello a" in stderr


async def test_records_during_a_task_carry_its_id_in_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    install_task_records()
    app = App("records", broker="memory://", set_as_current=False)
    log = logging.getLogger("tests.records")

    @app.task
    async def speak() -> None:
        log.warning("inside", extra={"order": 7})

    try:
        result = await speak.delay()
        with anyio.fail_after(10):
            await Worker(app, burst=True).run()
        await result.get(timeout=5)
    finally:
        await app.close()
    record = next(r for r in caplog.records if r.getMessage() == "inside")
    assert (record.task_id, record.task_name) == (result.id, speak.name)  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(record))
    assert (line["task_id"], line["order"]) == (result.id, 7)
    outside = logging.getLogger("tests.records").makeRecord("x", 30, "f", 1, "m", (), None)
    assert outside.task_id is None  # type: ignore[attr-defined]
