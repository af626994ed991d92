"""examples/django: its views through Django's test client, and `aqueue worker
proj.aqueue_app:app` (a worker process that sets Django up itself) on SQLite and Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from aqueue import App, Worker, current
from tests.helpers import service_redis
from tests.helpers.drivers import require, service_unavailable

from .conftest import EXAMPLE, REPO


@pytest.fixture
def example_app() -> Iterator[App]:
    """The example's app, current (as in a Django process, where it is the only one)."""
    from proj.aqueue_app import app

    current.add_app(app, current=True)
    yield app
    app.sync.close()


def test_views_send_and_read_results(example_app: App) -> None:
    from django.test import AsyncClient, Client
    from polls.models import Poll

    poll = Poll.objects.create(question="tea or coffee?")
    client = Client()
    try:
        voted = client.post(f"/polls/{poll.pk}/vote/")  # a sync view: task.sync.delay()
        assert voted.status_code == 202
        added = client.post("/reports/sum/", {"x": 2, "y": 3}, content_type="application/json")
        assert added.status_code == 202  # an async view, run by the sync client (as WSGI)
        added_async = async_to_sync(AsyncClient().post)(  # and by the async one (as ASGI)
            "/reports/sum/", {"x": 40, "y": 2}, content_type="application/json"
        )
        assert added_async.status_code == 202
        bad = client.post("/reports/sum/", {"x": "two"}, content_type="application/json")
        assert bad.status_code == 400
        task_ids = [reply.json()["task_id"] for reply in (voted, added, added_async)]
        pending = client.get(f"/tasks/{task_ids[0]}/").json()
        assert pending == {"task_id": task_ids[0], "state": "PENDING"}

        asyncio.run(_work(example_app))

        results = [client.get(f"/tasks/{task_id}/").json() for task_id in task_ids]
        assert [(r["state"], r["result"]) for r in results] == [
            ("SUCCESS", 1),
            ("SUCCESS", 5),
            ("SUCCESS", 42),
        ]
        poll.refresh_from_db()
        assert poll.votes == 1
    finally:
        poll.delete()


async def _work(app: App) -> None:
    try:
        await Worker(app, burst=True, app_path="proj.aqueue_app:app").run()
    finally:
        await app.close()


@pytest.fixture(params=["sqlite", "redis"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'broker.db'}"
        return
    await require("redis")
    url = service_redis.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_redis.cleanup(url)


async def test_worker_process_runs_the_example(broker: str, tmp_path: Path) -> None:
    from polls.models import Poll

    poll = await Poll.objects.acreate(question="on a worker?")
    producer = App("producer", broker=broker, set_as_current=False, task_serializer="json")
    try:
        async with producer:
            vote = await producer.send_task("polls.tasks.record_vote", [poll.pk])
            summary = await producer.send_task("polls.tasks.poll_summary", [poll.pk])
            added = await producer.send_task("reports.tasks.add", [2, 3])
            tally = await producer.send_task("polls.tasks.tally", countdown=0)
            await producer.send_task("proj.aqueue_app.debug_task")
            done = await asyncio.to_thread(_run_worker, broker)
            assert done.returncode == 0, done.stderr
            assert await vote.get(timeout=10) == 1
            info = await summary.get(timeout=10)  # ran beside the vote: before or after it
            assert info in ({"question": "on a worker?", "votes": n, "polls": 1} for n in (0, 1))
            assert await added.get(timeout=10) == 5
            assert await tally.get(timeout=10) in (0, 1)  # in a child process, with the ORM
    finally:
        await Poll.objects.filter(pk=poll.pk).adelete()
    banner = done.stdout
    for name in ("polls.tasks.record_vote", "reports.tasks.add", "proj.aqueue_app.debug_task"):
        assert f". {name}" in banner  # autodiscover_tasks() ran in the worker
    assert "Request: Request(id=" in banner  # bind=True: self.request
    assert "1 setting(s) read and ignored:\n  worker_prefetch_multiplier: prefetch" in done.stderr
    assert "AppRegistryNotReady" not in done.stderr


def _run_worker(broker: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AQUEUE_BROKER_URL": broker, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "aqueue", "worker", "proj.aqueue_app:app", "--burst"]
    try:
        return subprocess.run(
            command, cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - a hung worker
        service_unavailable(f"the worker did not finish: {exc}")
        raise
