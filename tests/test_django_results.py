"""django-db and django-cache results stored by a worker process and read here; expiry; admin."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from aqueue import App, states
from aqueue.beat.housekeeping import housekeeping_entries, run_housekeeping
from aqueue.result_meta import ResultMeta
from tests.helpers import service_django, service_redis
from tests.helpers.drivers import service_unavailable

service_django.configure()

from tests.djresults.aqueue_app import add, app, boom  # noqa: E402

#: (result store, broker) pairs: every store on SQLite, the cross-process ones on Redis too.
CASES = [
    ("django-db", "sqlite"),
    ("django-db://pg", "sqlite"),
    ("django-cache://files", "sqlite"),
    ("django-db://pg", "redis"),
    ("django-cache://files", "redis"),
]


@pytest.fixture(scope="module", autouse=True)
def django_databases() -> Iterator[None]:
    service_django.migrate("default")
    yield
    service_django.drop_migrated()


@pytest.fixture(params=CASES, ids=["/".join(case) for case in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    store, broker = request.param
    if store == "django-db://pg":
        if reason := service_django.pg_unreachable():
            service_unavailable(reason)
        service_django.migrate("pg")
    return store, broker


@pytest.fixture
def store_url(case: tuple[str, str]) -> str:
    return case[0]


@pytest.fixture
async def project_app(case: tuple[str, str], tmp_path: Path) -> AsyncIterator[App]:
    """The project's app, on a broker of this test's own and the store under test."""
    store, kind = case
    if kind == "redis":
        if reason := await service_redis.unreachable():
            service_unavailable(reason)
        broker = service_redis.make_url(uuid.uuid4().hex[:10])
    else:
        broker = f"sqlite:///{tmp_path / 'broker.db'}"
    app.conf.update({"broker_url": broker, "result_backend": store})
    yield app
    await app.close()
    if kind == "redis":
        await service_redis.cleanup(broker)


T = TypeVar("T")


async def orm(fn: Callable[..., T], *args: Any) -> T:
    """Run ORM code in a worker thread, closing the thread's connections after it."""

    def call() -> T:
        from django.db import connections

        try:
            return fn(*args)
        finally:
            connections.close_all()

    return await anyio.to_thread.run_sync(call)


def row(alias: str, task_id: str) -> dict[str, object]:
    from aqueue.contrib.django.models import TaskResult

    found = TaskResult.objects.using(alias).filter(task_id=task_id).values().first()
    assert found is not None, task_id
    return found


async def test_worker_results_read_here(project_app: App, store_url: str) -> None:
    ok = await add.delay(2, 3)
    bad = await boom.delay()
    got: list[int] = []

    async def waiter() -> None:  # waits across processes: NOTIFY on PostgreSQL, else a poll
        got.append(await ok.get(timeout=30))

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        log = await anyio.to_thread.run_sync(
            service_django.run_worker, project_app.conf.broker_url, store_url
        )
    assert got == [5], log
    with pytest.raises(ValueError, match="boom from the worker"):
        await bad.get(timeout=10)
    # The sync API: its own loop (the I/O thread), its own store instance.
    assert (
        await anyio.to_thread.run_sync(lambda: project_app.sync.AsyncResult(ok.id).get(timeout=10))
        == 5
    )
    assert await anyio.to_thread.run_sync(lambda: add.sync.AsyncResult(ok.id).get(timeout=10)) == 5
    if store_url.startswith("django-db"):
        alias = "pg" if store_url.endswith("pg") else "default"
        good = await orm(row, alias, ok.id)
        assert good["status"] == states.SUCCESS
        assert good["task_name"] == add.name
        assert good["result"] == "5"
        assert str(good["worker"]).startswith("aqueue@")
        assert good["date_done"] is not None
        assert good["date_created"] is not None
        failed = await orm(row, alias, bad.id)
        assert failed["status"] == states.FAILURE
        assert "ValueError" in str(failed["result"])
        assert "boom from the worker" in str(failed["traceback"])
    await ok.forget()
    await bad.forget()
    assert await ok.state() == states.PENDING


@pytest.mark.parametrize("alias", ["default", "pg"])
async def test_expired_rows_are_purged_by_the_command_and_by_housekeeping(alias: str) -> None:
    if alias == "pg":
        if reason := service_django.pg_unreachable():
            service_unavailable(reason)
        await anyio.to_thread.run_sync(service_django.migrate, "pg")
    url = "django-db" if alias == "default" else "django-db://pg"
    payload = ResultMeta(task="t", result=1).encode()
    async with App("purge", broker="memory://", backend=url, set_as_current=False) as purging:
        backend = await purging.result_backend()
        assert backend is not None
        old, live = uuid.uuid4().hex, uuid.uuid4().hex
        await backend.store(old, states.SUCCESS, payload, ttl=-1)
        await backend.store(live, states.SUCCESS, payload, ttl=60)
        out = io.StringIO()

        def purge() -> None:
            from django.core.management import call_command

            call_command("aqueue_purge_results", database=alias, stdout=out)

        await orm(purge)
        assert out.getvalue().startswith("Purged ")
        assert "Purged 0 " not in out.getvalue()
        from aqueue.contrib.django.models import TaskResult

        def ids() -> set[str]:
            return set(TaskResult.objects.using(alias).values_list("task_id", flat=True))

        remaining = await orm(ids)
        assert old not in remaining
        assert live in remaining
        # Beat's hourly housekeeping purges this store too (it keeps expired rows).
        await backend.store(old, states.SUCCESS, payload, ttl=-1)
        entries = await housekeeping_entries(purging)
        assert len(entries) == 1
        await run_housekeeping(purging, next(iter(entries.values())))
        assert old not in await orm(ids)
        await backend.forget(live)


def test_admin_lists_filters_and_searches_results() -> None:
    from django.contrib.auth.models import User
    from django.test import Client
    from django.utils import timezone

    from aqueue.contrib.django.models import TaskResult

    name = f"admin-{uuid.uuid4().hex[:8]}"
    user = User.objects.create_superuser(name, f"{name}@example.com", "pw")
    shown = TaskResult.objects.create(
        task_id=uuid.uuid4().hex,
        task_name="proj.tasks.add",
        status=states.SUCCESS,
        result="5",
        expires=timezone.now() + timezone.timedelta(hours=1),
        payload=b"",
    )
    try:
        client = Client()
        client.force_login(user)
        page = client.get("/admin/aqueue/taskresult/")
        assert page.status_code == 200
        assert shown.task_id in page.content.decode()
        filtered = client.get("/admin/aqueue/taskresult/", {"status__exact": states.FAILURE})
        assert filtered.status_code == 200
        assert shown.task_id not in filtered.content.decode()
        by_task = client.get("/admin/aqueue/taskresult/", {"task_name": "proj.tasks.add"})
        assert by_task.status_code == 200
        assert shown.task_id in by_task.content.decode()
        found = client.get("/admin/aqueue/taskresult/", {"q": shown.task_id})
        assert found.status_code == 200
        assert shown.task_id in found.content.decode()
        detail = client.get(f"/admin/aqueue/taskresult/{shown.pk}/change/")
        assert detail.status_code == 200
    finally:
        shown.delete()
        user.delete()


async def test_concurrent_stores_go_as_one_write() -> None:
    from aqueue.contrib.django.results.batching import Batcher

    batches: list[list[int]] = []
    first_in = anyio.Event()
    release = anyio.Event()

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            first_in.set()
            await release.wait()
        return [10 * item for item in items]  # one result per item, in order

    batcher: Batcher[int, int] = Batcher(flush)
    results: dict[int, int] = {}

    async def submit(item: int) -> None:
        results[item] = await batcher.submit(item)

    async with anyio.create_task_group() as group:
        group.start_soon(submit, 0)
        await first_in.wait()
        for item in range(1, 50):
            group.start_soon(submit, item)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert batches == [[0], list(range(1, 50))]
    assert results == {item: 10 * item for item in range(50)}  # each caller gets its own


def test_an_unconfigured_django_is_a_one_line_error() -> None:
    import subprocess
    import sys

    code = (
        "import anyio\n"
        "from aqueue.drivers import create_backend\n"
        "anyio.run(create_backend('django-db', {}).open)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode != 0
    assert (
        "ConfigurationError: django-db:// stores results through Django, which is not "
        "configured: set DJANGO_SETTINGS_MODULE" in done.stderr
    )


def terminate_listeners() -> int:
    """Kill the server side of every LISTEN connection of the test database; return how many."""
    import psycopg

    name = os.environ["AQUEUE_DJANGO_PG_DB"]  # this run's database: other runs' are left alone
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query = 'LISTEN aqueue_results' AND datname = %s",
            [name],
        ).fetchall()
    return len(rows)


async def test_a_broken_listen_connection_is_replaced() -> None:
    from aqueue.drivers import create_backend

    if reason := service_django.pg_unreachable():
        service_unavailable(reason)
    await anyio.to_thread.run_sync(service_django.migrate, "pg")
    task_id = uuid.uuid4().hex
    got: list[bytes] = []
    async with (
        create_backend("django-db://pg", {}) as waiting,
        create_backend("django-db://pg", {}) as storing,
    ):

        async def waiter() -> None:
            got.append((await waiting.wait(task_id)).payload)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert await anyio.to_thread.run_sync(terminate_listeners) >= 1
                await storing.store(task_id, states.SUCCESS, b"after the break", 60)
        assert got == [b"after the break"]
        await storing.forget(task_id)


def test_rows_show_results_for_people_and_skip_what_does_not_decode() -> None:
    import datetime as dt
    import json

    from aqueue.contrib.django.results.rows import describe
    from aqueue.signing import MAGIC

    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    meta = ResultMeta(task="proj.t", result={"when": when, "raw": b"\xffx"}, retries=2)
    shown = describe("id", states.SUCCESS, meta.encode(), 60, "aqueue@host")
    assert json.loads(shown.result or "") == {"when": when.isoformat(), "raw": "\\xffx"}
    assert (shown.task_name, shown.retries, shown.worker) == ("proj.t", 2, "aqueue@host")
    garbage = describe("id", states.SUCCESS, MAGIC + b"\x00" * 10, 60)
    assert (garbage.result, garbage.task_name, garbage.payload) == (None, "", MAGIC + b"\x00" * 10)
