"""Prometheus metrics (aqueue/metrics.py): `/metrics` after N tasks, parsed with the official
client's text-format parser, counts exact, on every broker."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aqueue import App, Worker
from aqueue.drivers import _BACKENDS, register_backend
from aqueue.drivers.memory.results import MemoryBackend
from aqueue.metrics import WorkerMetrics
from tests.helpers.drivers import MakeApp

N = 7


async def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with anyio.fail_after(10):
            try:
                while True:
                    data += await stream.receive()
            except anyio.EndOfStream:
                pass
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.split("\r\n")[0], body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_count_every_outcome_exactly(make_app: MakeApp) -> None:
    app = make_app()

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def boom() -> None:
        raise ValueError("no")

    @app.task(bind=True, max_retries=1)
    async def again(self: Any) -> str:
        if self.request.retries == 0:
            self.retry(countdown=0)
        return "ok"

    results = [await add.delay(i, i) for i in range(N)]
    failures = [await boom.delay(), await boom.delay()]
    retried = await again.delay()
    unknown = await app.send_task("nobody.knows")
    revoked = await add.delay(0, 0)
    await app.control.revoke(revoked.id, reply=False)
    await add.apply_async((1, 1), countdown=3600)
    await add.apply_async((1, 1), countdown=3600)
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, metrics_port=0, concurrency=4).run)
        assert worker.metrics is not None
        assert worker.metrics.port
        for result in results:
            await result.get(timeout=10)
        for failure in [*failures, unknown]:
            with pytest.raises(Exception):  # noqa: B017, PT011 - any failure will do
                await failure.get(timeout=10)
        assert await retried.get(timeout=10) == "ok"
        with pytest.raises(Exception):  # noqa: B017, PT011 - REVOKED
            await revoked.get(timeout=10)
        with anyio.fail_after(10):  # a run that sent a retry may end after the retry did
            await worker.slots.wait_idle()
        status, body = await scrape(worker.metrics.port)
        missing, _ = await scrape(worker.metrics.port, "/other")
        worker.stop()
    assert status == "HTTP/1.1 200 OK"
    assert missing == "HTTP/1.1 404 Not Found"
    got = samples(body)

    def total(task: str, state: str) -> float:
        return got.get(("aqueue_tasks_total", (("state", state), ("task", task))), 0.0)

    assert total(add.name, "SUCCESS") == N
    assert total(boom.name, "FAILURE") == 2
    assert (total(again.name, "RETRY"), total(again.name, "SUCCESS")) == (1, 1)
    assert total("nobody.knows", "REJECTED") == 1
    assert total(add.name, "REVOKED") == 1
    runtimes = ("aqueue_task_runtime_seconds_count", (("task", add.name),))
    assert got[runtimes] == N
    assert got[("aqueue_tasks_running", ())] == 0
    assert got[("aqueue_worker_slots_free", ())] == 4
    assert got[("aqueue_queue_delayed", (("queue", "default"),))] == 2
    assert ("aqueue_queue_depth", (("queue", "default"),)) in got
    dead = ("aqueue_deliveries_dead_lettered_total", (("reason", "unknown-task"),))
    assert got[dead] == 1
    assert got[("aqueue_deliveries_redelivered_total", ())] == 0
    await (await app.broker()).purge("default")


def test_each_worker_has_a_registry_of_its_own() -> None:
    first, second = WorkerMetrics(lambda: 1.0), WorkerMetrics(lambda: 2.0)
    assert b"aqueue_worker_slots_free 1.0" in first.render()
    assert b"aqueue_worker_slots_free 2.0" in second.render()


class FlakyStore(MemoryBackend):
    """A memory result store whose first SUCCESS cannot be stored (not a connection error)."""

    failed = 0

    async def store(
        self,
        task_id: str,
        state: str,
        payload: bytes,
        ttl: float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        if state == "SUCCESS" and not FlakyStore.failed:
            FlakyStore.failed += 1
            raise RuntimeError("the store refused this result")
        await super().store(task_id, state, payload, ttl, headers=headers)


@pytest.fixture
def flaky_store() -> Iterator[str]:
    register_backend("flaky-memory", f"{__name__}:FlakyStore")
    FlakyStore.failed = 0
    yield "flaky-memory://"
    _BACKENDS.pop("flaky-memory")


async def test_a_result_that_cannot_be_stored_leaves_no_task_running(flaky_store: str) -> None:
    """The run's observers hear how it ended even when its outcome could not be stored: the
    message goes back, and the running gauge does not keep counting the run that gave it."""
    app = App("tests", broker="memory://", backend=flaky_store, set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    try:
        result = await add.delay(2, 3)
        async with anyio.create_task_group() as group:
            worker = await group.start(Worker(app, metrics_port=0, concurrency=2).run)
            assert worker.metrics is not None
            assert await result.get(timeout=10) == 5  # stored on its second delivery
            with anyio.fail_after(10):
                await worker.slots.wait_idle()
            _, body = await scrape(worker.metrics.port)
            worker.stop()
        got = samples(body)
        assert FlakyStore.failed == 1
        assert got[("aqueue_tasks_running", ())] == 0
        assert got[("aqueue_deliveries_redelivered_total", ())] == 1
    finally:
        await app.close()


def test_the_runtime_histogram_counts_each_run_in_its_buckets() -> None:
    """Buckets are cumulative and `le` (a run of exactly 0.01 s is in le="0.01"), +Inf is the
    count, the sum adds up; a task that never ran here (rejected) has no histogram."""

    class Task:
        name = "t.add"

    class Delivery:
        delivery_count = 1

    metrics = WorkerMetrics(lambda: 1.0)
    for runtime, state in [(0.001, "SUCCESS"), (0.01, "SUCCESS"), (0.3, "FAILURE"), (20, "RETRY")]:
        metrics.started(Task, None, Delivery)  # type: ignore[arg-type]
        metrics.finished(Task, None, state, runtime, None)  # type: ignore[arg-type]
    metrics.rejected("t.unknown", "id", "unknown-task", "no such task")
    got = samples(metrics.render().decode())

    def bucket(le: str) -> float:
        return got[("aqueue_task_runtime_seconds_bucket", (("le", le), ("task", "t.add")))]

    assert [bucket("0.005"), bucket("0.01"), bucket("0.25"), bucket("0.5"), bucket("+Inf")] == [
        1,
        2,
        2,
        3,
        4,
    ]
    assert got[("aqueue_task_runtime_seconds_count", (("task", "t.add"),))] == 4
    assert got[("aqueue_task_runtime_seconds_sum", (("task", "t.add"),))] == pytest.approx(20.311)
    assert got[("aqueue_tasks_total", (("state", "SUCCESS"), ("task", "t.add")))] == 2
    assert got[("aqueue_tasks_total", (("state", "REJECTED"), ("task", "t.unknown")))] == 1
    assert not any(
        name.startswith("aqueue_task_runtime") and ("task", "t.unknown") in labels
        for name, labels in got
    )
    assert got[("aqueue_tasks_running", ())] == 0
