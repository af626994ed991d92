"""The dashboard without a browser: who may use it (Basic auth, token), CSRF on actions,
passwords kept off its pages, escaping, the board's folding of events, and its command line.
The requests go to the ASGI app in-process (httpx's ASGITransport) on the memory driver."""

from __future__ import annotations

import base64
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from aqueue import App, Worker
from aqueue.cli import main
from aqueue.dashboard import create_app
from aqueue.dashboard.board import Board
from aqueue.dashboard.context import Context
from aqueue.dashboard.guard import COOKIE
from aqueue.dashboard.pages import layout, task_row
from aqueue.events import Event
from tests.helpers.processes import spawn

BASE = "http://dashboard.test"
ADD = "tests.dashboard.test_dashboard.add"


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = App("tests", set_as_current=False, broker="memory://")

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        yield app


def client_of(app: App, **guard: Any) -> httpx.AsyncClient:
    web = create_app(app, **guard)
    web.state.dashboard.timeout = 0.05  # no worker runs here: do not wait for replies
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url=BASE)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


async def test_basic_auth_is_required_when_given(app: App) -> None:
    async with client_of(app, auth=("ops", "pw")) as client:
        refused = await client.get("/")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic ")
        wrong = base64.b64encode(b"ops:nope").decode()
        assert (
            await client.get("/", headers={"Authorization": f"Basic {wrong}"})
        ).status_code == 401
        page = await client.get("/", auth=("ops", "pw"))
        assert page.status_code == 200
        assert "Workers" in page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert "default-src 'self'" in page.headers["content-security-policy"]


async def test_a_token_opens_once_by_address_then_by_cookie_or_bearer(app: App) -> None:
    async with client_of(app, token="t0ken") as client:
        assert (await client.get("/tasks")).status_code == 401
        assert (await client.get("/tasks?token=wrong")).status_code == 401
        opened = await client.get("/tasks?token=t0ken&state=SUCCESS")
        assert opened.status_code == 303
        assert opened.headers["location"] == "/tasks?state=SUCCESS"  # the token left the address
        assert "HttpOnly" in opened.headers["set-cookie"]
        assert client.cookies.get(COOKIE) == "t0ken"
        assert (await client.get("/tasks")).status_code == 200
    async with client_of(app, token="t0ken") as client:
        bearer = await client.get("/queues", headers={"Authorization": "Bearer t0ken"})
        assert bearer.status_code == 200


async def test_actions_need_the_pages_csrf_token(app: App) -> None:
    async with client_of(app) as client:
        page = (await client.get("/")).text
        token = csrf_of(page)
        form = {"task": ADD, "rate": "5/s"}
        assert (await client.post("/rate-limit", data=form)).status_code == 403
        wrong = await client.post("/rate-limit", data={**form, "csrf": "x" * len(token)})
        assert wrong.status_code == 403
        as_json = await client.post("/rate-limit", json={**form, "csrf": token})
        assert as_json.status_code == 400  # only the pages' urlencoded forms
        done = await client.post("/rate-limit", data={**form, "csrf": token})
        assert done.status_code == 303
        assert done.headers["location"].startswith(
            "/?done=rate+limit+of+tests.dashboard.test_dashboard.add+set+to+5%2Fs"
        )
        unknown = await client.post(
            "/rate-limit", data={"task": "nope", "rate": "1/s", "csrf": token}
        )
        assert unknown.status_code == 400
        assert "nope" in unknown.text


async def test_purge_and_revoke_from_their_forms(app: App) -> None:
    waiting = await app.send_task(ADD, (1, 2))
    async with client_of(app) as client:
        page = (await client.get("/queues")).text
        assert 'action="/queues/default/purge"' in page
        assert '<td class="waiting">1</td>' in page
        purged = await client.post("/queues/default/purge", data={"csrf": csrf_of(page)})
        assert purged.status_code == 303
        assert (
            "default: 1 message(s) deleted" in (await client.get(purged.headers["location"])).text
        )
        detail = (await client.get(f"/tasks/{waiting.id}")).text
        assert f'action="/tasks/{waiting.id}/revoke"' in detail
        revoked = await client.post(f"/tasks/{waiting.id}/revoke", data={"csrf": csrf_of(detail)})
        assert revoked.status_code == 303
    assert await waiting.state() == "REVOKED"


async def test_a_broker_password_never_reaches_a_page() -> None:
    app = App("tests", set_as_current=False, broker="redis://:hunter2@127.0.0.1:1/0")
    context = Context(app)
    page = layout("Workers", "", where="/", broker=context.broker)
    assert "hunter2" not in page
    assert "redis://:***@127.0.0.1:1/0" in page


def test_task_values_are_escaped() -> None:
    board = Board()
    row = board.apply(
        Event("task-received", 1.0, "w1", "id1", "<b>name</b>", {"args": ["<script>x</script>"]})
    )
    assert row is not None
    row.result = "<img src=x onerror=alert(1)>"
    shown = task_row(row)
    assert "<b>" not in shown
    assert "<img" not in shown
    assert "&lt;img" in shown


def test_the_board_folds_events_and_keeps_the_newest() -> None:
    board = Board(limit=2)
    board.apply(Event("task-received", 100.0, "w1", "a", "t.add", {"queue": "q", "args": [1]}))
    board.apply(Event("task-started", 100.5, "w1", "a", "t.add", {"queue": "q"}))
    board.apply(Event("task-succeeded", 101.0, "w1", "a", "t.add", {"runtime": 0.5, "result": "2"}))
    board.apply(Event("task-received", 101.0, "w1", "b", "t.boom", {"queue": "q"}))
    board.apply(
        Event("task-failed", 101.5, "w1", "b", "t.boom", {"exc_type": "E", "exc_message": "m"})
    )
    board.apply(Event("worker-heartbeat", 102.0, "w1", fields={"loadavg": [0.5, 0.4, 0.3]}))
    a, b = board.tasks["a"], board.tasks["b"]
    assert (a.state, a.runtime, a.result, a.args, a.started) == ("SUCCESS", 0.5, "2", [1], 100.5)
    assert (b.state, b.error) == ("FAILURE", "E: m")
    assert [row.id for row in board.matching(state="FAILURE")] == ["b"]
    assert [row.id for row in board.matching(name="add")] == ["a"]
    assert board.rates("q", now=110.0) == (2.0, 2.0)
    assert board.rates("q", now=200.0) == (0.0, 0.0)  # out of the minute's window
    assert board.workers["w1"]["loadavg"] == [0.5, 0.4, 0.3]
    board.apply(Event("task-received", 103.0, "w1", "c", "t.add", {"queue": "q"}))
    assert list(board.tasks) == ["b", "c"]  # the oldest went


def test_the_command_refuses_bad_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["dashboard", "tests.dashboard.test_dashboard:nothing", "--auth", "nopassword"]) == 2
    )
    assert capsys.readouterr().err.strip() == (
        "aqueue: error: --auth takes USER:PASSWORD, both non-empty"
    )


async def test_a_dead_letter_is_retried_from_its_queue_page(app: App) -> None:
    unknown = await app.send_task("nobody.knows", (1,))  # only registered tasks run
    await Worker(app, burst=True).run()  # dead-letters it
    async with client_of(app) as client:
        page = (await client.get("/queues/default")).text
        found = re.search(r'data-letter="([^"]+)"', page)
        assert found is not None, page
        assert f"nobody.knows[{unknown.id}]" in page
        retried = await client.post(
            "/queues/default/dead/retry", data={"csrf": csrf_of(page), "id": found.group(1)}
        )
        assert retried.status_code == 303
        after = (await client.get(retried.headers["location"])).text
        assert "default: 1 dead letter(s) sent back" in after
        assert "No dead letters" in after
    stats = await (await app.broker()).queue_stats("default")
    assert (stats.waiting, stats.dead) == (1, 0)


async def test_the_command_serves_the_dashboard_behind_its_token(tmp_path: Path) -> None:
    (tmp_path / "dash_app.py").write_text(
        "from aqueue import App\napp = App('dash_app', broker='memory://')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AQUEUE_DASHBOARD_TOKEN": "t0k"}
    command = [sys.executable, "-m", "aqueue", "dashboard", "dash_app:app", "--port", "0"]
    lines = spawn(command, env=env, cwd=tmp_path)
    try:
        await lines.wait_line("aqueue dashboard on http://127.0.0.1:")
        url = lines.output.split("aqueue dashboard on ")[-1].split()[0]
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/tasks")).status_code == 401
            page = await client.get("/tasks", headers={"Authorization": "Bearer t0k"})
            assert page.status_code == 200
            assert "memory://" in page.text
    finally:
        assert lines.stop(signal.SIGINT) in (0, -signal.SIGINT)


async def test_terminate_from_the_task_page_cancels_a_running_task(app: App) -> None:
    running, cancelled = anyio.Event(), anyio.Event()

    @app.task
    async def hang() -> None:
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, hostname="w1@terminate").run)
        result = await hang.delay()
        with anyio.fail_after(10):
            await running.wait()
            async with client_of(app) as client:
                page = (await client.get(f"/tasks/{result.id}")).text
                assert 'name="terminate" value="1"' in page
                done = await client.post(
                    f"/tasks/{result.id}/revoke", data={"csrf": csrf_of(page), "terminate": "1"}
                )
                assert done.status_code == 303
                assert "terminated" in done.headers["location"]
            await cancelled.wait()
        worker.stop()
    assert await result.state() == "REVOKED"


async def test_odd_queue_names_and_task_ids_make_working_links(app: App) -> None:
    odd = await app.send_task(ADD, (1, 2), queue="slow lane", task_id="id <1>&?#")
    async with client_of(app) as client:
        task = await client.get("/tasks/id%20%3C1%3E%26%3F%23")
        assert task.status_code == 200
        assert "id &lt;1&gt;&amp;?#" in task.text
        assert 'action="/tasks/id%20%3C1%3E%26%3F%23/revoke"' in task.text
        page = (await client.get("/queues/slow%20lane")).text
        assert 'action="/queues/slow%20lane/purge"' in page
        purged = await client.post("/queues/slow%20lane/purge", data={"csrf": csrf_of(page)})
        assert purged.status_code == 303
        assert (
            "slow lane: 1 message(s) deleted" in (await client.get(purged.headers["location"])).text
        )
    assert odd.id == "id <1>&?#"
