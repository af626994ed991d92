"""Django's Tasks framework on aqueue: `@task` enqueued here, run by a worker process."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, Worker
from tests.helpers import service_django

service_django.configure()

from aqueue.contrib.django import TaskBackend  # noqa: E402
from aqueue.contrib.django.tasks_backend import (  # noqa: E402
    TaskResultDoesNotExist,
    TaskResultStatus,
    aqueue_name,
    aqueue_priority,
    task_enqueued,
    task_finished,
    task_started,
)
from tests.djresults import djtasks, unimported  # noqa: E402
from tests.djresults.aqueue_app import app  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def django_databases() -> None:
    service_django.migrate("default")


@pytest.fixture
async def project_app(tmp_path: Path) -> AsyncIterator[App]:
    app.conf.update(
        {"broker_url": f"sqlite:///{tmp_path / 'broker.db'}", "result_backend": "django-db"}
    )
    yield app
    await app.close()


def test_the_backend_declares_what_it_supports() -> None:
    backend = djtasks.multiply.get_backend()
    assert isinstance(backend, TaskBackend)
    assert backend.app is app
    assert backend.supports_defer
    assert backend.supports_async_task
    assert backend.supports_priority
    app.conf.update({"result_backend": "django-db"})
    assert backend.supports_get_result
    app.conf.update({"result_backend": False})
    assert not backend.supports_get_result
    app.conf.update({"result_backend": "django-db"})
    assert aqueue_name(djtasks.multiply) == "django:tests.djresults.djtasks.multiply"
    assert [aqueue_priority(p) for p in (-100, 0, 1, 50, 100)] == [None, None, 1, 5, 9]
    assert aqueue_name(djtasks.multiply) in app.tasks  # registered when its module was imported


async def test_tasks_run_on_a_worker_and_their_results_read_back(project_app: App) -> None:
    product = await anyio.to_thread.run_sync(djtasks.multiply.enqueue, 6, 7)  # a sync view
    assert product.status == TaskResultStatus.READY
    assert product.args == [6, 7]
    awaited = await djtasks.amultiply.aenqueue(3, 4)
    contextual = await djtasks.attempt.aenqueue("label")
    failing = await djtasks.fails.aenqueue("no good")
    other = await djtasks.elsewhere_queue.aenqueue()
    stray = await unimported.stray.aenqueue()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    deferred = await djtasks.multiply.using(run_after=later).aenqueue(1, 1)
    before = await djtasks.multiply.aget_result(product.id)
    assert before.status == TaskResultStatus.READY
    assert before.enqueued_at is not None
    assert before.started_at is None

    log = await anyio.to_thread.run_sync(
        service_django.run_worker, project_app.conf.broker_url, "django-db", "-Q", "default,other"
    )

    await anyio.to_thread.run_sync(product.refresh)  # sync, as a view would
    assert product.status == TaskResultStatus.SUCCESSFUL, log
    assert product.return_value == 42
    assert product.finished_at is not None
    await awaited.arefresh()
    assert awaited.return_value == 12
    got = await djtasks.attempt.aget_result(contextual.id)
    assert got.return_value == {"attempt": 1, "label": "label", "id": contextual.id}
    assert len(got.worker_ids) == 1
    assert got.worker_ids[0].startswith("aqueue@")
    assert got.started_at is not None
    assert got.last_attempted_at is not None
    await failing.arefresh()
    assert failing.status == TaskResultStatus.FAILED
    assert [error.exception_class_path for error in failing.errors] == ["builtins.ValueError"]
    assert failing.errors[0].exception_class is ValueError
    assert "no good" in failing.errors[0].traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = failing.return_value
    await other.arefresh()
    assert other.return_value == "other"

    # A task of a module the worker never imported: dead-lettered, never run.
    opened = project_app.connected()  # open since the sends above (App.connection() on main
    assert opened is not None  # is being renamed App.broker(): this reads either)
    broker = opened[0]
    letters = await broker.dead_letters("default")
    assert [letter.reason for letter in letters if stray.id.encode() in letter.body] == [
        "unknown-task"
    ]
    await stray.arefresh()
    assert stray.status == TaskResultStatus.FAILED  # the worker stored why it refused it
    assert [error.exception_class_path for error in stray.errors] == [
        "aqueue.exceptions.NotRegistered"
    ]

    # run_after is the message's eta: a burst worker leaves a task that is not due yet.
    await deferred.arefresh()
    assert deferred.status == TaskResultStatus.READY

    with pytest.raises(TaskResultDoesNotExist):
        await djtasks.multiply.aget_result("no-such-id")


async def test_signals_from_an_in_process_worker(project_app: App) -> None:
    seen: list[tuple[str, str, str]] = []

    def receiver(name: str) -> Any:
        def receive(sender: type, task_result: Any, **kwargs: Any) -> None:
            assert sender is TaskBackend
            seen.append((name, task_result.id, str(task_result.status)))

        return receive

    receivers = {
        signal: receiver(name)
        for signal, name in (
            (task_enqueued, "enqueued"),
            (task_started, "started"),
            (task_finished, "finished"),
        )
    }
    for signal, receive in receivers.items():
        signal.connect(receive, weak=False)
    try:
        awaited = await djtasks.amultiply.aenqueue(2, 5)  # on the worker's event loop
        threaded = await djtasks.multiply.aenqueue(3, 3)  # in a worker thread
        failing = await djtasks.fails.aenqueue("nope")
        await Worker(project_app, burst=True, app_path="tests.djresults.aqueue_app:app").run()
    finally:
        for signal, receive in receivers.items():
            signal.disconnect(receive)
    for result in (awaited, threaded):
        assert [(name, status) for name, id_, status in seen if id_ == result.id] == [
            ("enqueued", "READY"),
            ("started", "RUNNING"),
            ("finished", "SUCCESSFUL"),
        ]
    assert [(name, status) for name, id_, status in seen if id_ == failing.id] == [
        ("enqueued", "READY"),
        ("started", "RUNNING"),
        ("finished", "FAILED"),
    ]
    await awaited.arefresh()
    assert awaited.return_value == 10
    await threaded.arefresh()
    assert threaded.return_value == 9
