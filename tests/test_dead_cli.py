"""`aqueue dead list|retry|purge` on SQLite, Redis and RabbitMQ (memory lives in one process)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from aqueue import App, OutgoingMessage, Worker
from aqueue.cli import main
from aqueue.message import Envelope
from tests.helpers.consuming import drain


@pytest.fixture
async def project(
    broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, App]]:
    """An app module on this test's broker, and the test's own app on the same broker."""
    if broker_url == "memory://":
        pytest.skip("a memory broker lives in one process: the CLI cannot see its dead letters")
    module = f"deadapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        f"from aqueue import App\napp = App({module!r}, broker={broker_url!r})\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    async with App("producer", broker=broker_url, set_as_current=False) as app:
        yield f"{module}:app", app


async def aqueue(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `aqueue ARGV` in-process (in a thread: it runs its own event loop)."""
    code = await anyio.to_thread.run_sync(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def refuse(app: App) -> tuple[str, str]:
    """Have a worker dead-letter two messages: an unknown task, then an undecodable body."""
    unknown = Envelope(id=uuid.uuid4().hex, task="tasks.nope").encode(1 << 20)
    broker = await app.broker()
    await broker.publish([OutgoingMessage(id="unknown", queue="default", body=unknown)])
    await broker.publish([OutgoingMessage(id="garbage", queue="default", body=b"\xc1junk")])
    with anyio.fail_after(30):
        await Worker(app, burst=True, concurrency=1).run()
    return Envelope.decode(unknown).id, "garbage"


async def test_list_shows_id_time_task_and_reason(
    project: tuple[str, App], capsys: pytest.CaptureFixture[str]
) -> None:
    path, app = project
    code, out, _ = await aqueue(capsys, "dead", "list", path)
    assert (code, out) == (0, "default: no dead letters\n")
    task_id, _ = await refuse(app)
    code, out, err = await aqueue(capsys, "dead", "list", path)
    assert (code, err) == (0, "")
    header, first, second, summary = out.splitlines()
    assert header.split() == ["ID", "TIME", "(UTC)", "TASK", "REASON"]
    letters = await (await app.broker()).dead_letters("default")
    assert first.startswith(f"{letters[0].id} ")
    assert f" tasks.nope[{task_id}] unknown-task: no task named 'tasks.nope'" in " ".join(
        first.split()
    )
    assert second.startswith(f"{letters[1].id} ")
    assert second.split()[3:5] == ["?", "undecodable:"]
    assert summary.startswith("default: 2 dead letter(s)")
    code, out, _ = await aqueue(capsys, "dead", "list", path, "--limit", "1")
    assert out.splitlines()[-1].endswith("(showing the oldest 1; --limit shows more)")


async def test_retry_one_by_id_then_all(
    project: tuple[str, App], capsys: pytest.CaptureFixture[str]
) -> None:
    path, app = project
    await refuse(app)
    broker = await app.broker()
    first, second = await broker.dead_letters("default")
    code, out, err = await aqueue(capsys, "dead", "retry", path, second.id, "no-such-id")
    assert (code, out) == (1, "default: 1 dead letter(s) sent back\n")
    assert err == "aqueue: 1 of the ids named matched no dead letter of default\n"
    (back,) = await drain(broker, ["default"])
    assert (back.body, back.delivery_count) == (b"\xc1junk", 1)
    await back.ack()
    assert [letter.id for letter in await broker.dead_letters("default")] == [first.id]
    code, out, _ = await aqueue(capsys, "dead", "retry", path, "--all")
    assert (code, out) == (0, "default: 1 dead letter(s) sent back\n")
    (back,) = await drain(broker, ["default"])
    await back.ack()
    assert await broker.dead_letters("default") == []


async def test_purge_asks_for_yes(
    project: tuple[str, App], capsys: pytest.CaptureFixture[str]
) -> None:
    path, app = project
    await refuse(app)
    broker = await app.broker()
    first, _ = await broker.dead_letters("default")
    code, out, err = await aqueue(capsys, "dead", "purge", path, "--all")  # no terminal here
    assert (code, out) == (2, "")
    assert err == "aqueue: error: nothing purged; pass --yes to purge without being asked\n"
    assert len(await broker.dead_letters("default")) == 2
    code, out, _ = await aqueue(capsys, "dead", "purge", path, first.id, "--yes")
    assert (code, out) == (0, "default: 1 dead letter(s) deleted\n")
    code, out, _ = await aqueue(capsys, "dead", "purge", path, "--all", "-y")
    assert (code, out) == (0, "default: 1 dead letter(s) deleted\n")
    assert await broker.dead_letters("default") == []
    assert await drain(broker, ["default"]) == []  # deleted, not sent back


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["retry"], "name the dead letters to retry (see `aqueue dead list`), or pass --all"),
        (["purge", "--yes"], "name the dead letters to purge (see `aqueue dead list`), or pass"),
        (["retry", "1-0", "--all"], "name dead letters to retry, or pass --all; not both"),
        (["list", "--limit", "0"], "--limit must be at least 1, not 0"),
    ],
)
async def test_bad_arguments_are_one_line(
    project: tuple[str, App], capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    path, _ = project
    action, *rest = argv
    code, out, err = await aqueue(capsys, "dead", action, path, *rest)
    assert (code, out) == (2, "")
    assert err.startswith(f"aqueue: error: {error}")
    assert err.count("\n") == 1
