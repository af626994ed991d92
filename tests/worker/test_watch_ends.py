"""Every run the watch saw begin ends for it exactly once (aqueue/worker/runner.py, `_watched`).

A result store or an ack that raises, or a shutdown while a before_task hook runs, must still
bring `aqueue_tasks_running` back to 0, end the run's OpenTelemetry span, fire the after_task
hooks once and send the run's last event. The failures come from real drivers (the memory
broker and result store) whose subclasses, registered under schemes of the test's own, refuse
one call.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from aqueue import App, Worker, drivers
from aqueue.drivers.base import Credit, Delivery
from aqueue.drivers.memory.broker import MemoryBroker
from aqueue.drivers.memory.results import MemoryBackend
from aqueue.events import Event
from aqueue.hooks import TaskRun


class Refused(RuntimeError):
    """What the refusing drivers raise (no ConnectionError: the store is not retried)."""


class RefusingBackend(MemoryBackend):
    """A memory:// result store that refuses the first result it is given to store."""

    refused: list[str]

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.refused = []

    async def store(
        self,
        task_id: str,
        state: str,
        payload: bytes,
        ttl: float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        if not self.refused:
            self.refused.append(task_id)
            raise Refused("the result store refused")
        await super().store(task_id, state, payload, ttl, headers=headers)


class _RefusedAck(Delivery):
    """A memory:// delivery whose ack raises (and leaves the message unsettled)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Delivery) -> None:
        super().__init__(inner.body, inner.queue, inner.delivery_count, inner.runs)
        self._inner = inner

    async def ack(self) -> None:
        raise Refused("the broker refused the ack")

    async def nack(self, *, delay: float = 0.0) -> None:
        await self._inner.nack(delay=delay)

    async def release(self) -> None:
        await self._inner.release()

    async def dead_letter(self, reason: str, detail: str = "") -> None:
        await self._inner.dead_letter(reason, detail)


class RefusingAckBroker(MemoryBroker):
    """A memory:// broker whose deliveries cannot be acknowledged."""

    async def consume(
        self, queues: Sequence[str], credit: Credit, *, burst: bool = False
    ) -> AsyncGenerator[Delivery, None]:
        async for delivery in super().consume(queues, credit, burst=burst):
            yield _RefusedAck(delivery)


@pytest.fixture
def scheme(monkeypatch: pytest.MonkeyPatch) -> str:
    """A scheme of this test's own for the refusing drivers (unregistered after)."""
    name = f"refusing-{uuid.uuid4().hex[:8]}"
    here = __name__
    monkeypatch.setitem(drivers._BROKERS, name, (f"{here}:RefusingAckBroker", None))
    monkeypatch.setitem(drivers._BACKENDS, name, (f"{here}:RefusingBackend", None))
    return name


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def make(exporter: InMemorySpanExporter) -> AsyncIterator[Any]:
    """Apps traced into `exporter`, with hooks that record each run; closed after."""
    apps: list[App] = []
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def make(broker: str, backend: str) -> tuple[App, list[tuple[str, Any]]]:
        app = App("watch", broker=broker, backend=backend, set_as_current=False)
        app.conf.otel_tracer_provider = provider
        apps.append(app)
        seen: list[tuple[str, Any]] = []

        @app.before_task
        def before(run: TaskRun) -> None:
            seen.append(("before", run.id))

        @app.after_task
        def after(run: TaskRun) -> None:
            seen.append(("after", run.id, run.state, type(run.error).__name__))

        return app, seen

    yield make
    for app in apps:
        await app.close()
    provider.shutdown()


async def run_watched(app: App) -> tuple[Worker, list[Event]]:
    """Run a burst worker with metrics and events; return it and its events to worker-offline."""
    events: list[Event] = []
    worker = Worker(app, burst=True, send_events=True, metrics_port=0, hostname="w@watch")
    async with app.events.receive() as stream, anyio.create_task_group() as group:
        group.start_soon(worker.run)
        with anyio.fail_after(20):
            async for event in stream:
                events.append(event)
                if event.type == "worker-offline":
                    break
    return worker, events


def metrics_of(worker: Worker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert worker.metrics is not None
    found = {}
    for family in text_string_to_metric_families(worker.metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def runs(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name.startswith("process ")]


async def test_a_result_store_that_raises_still_ends_the_run(
    scheme: str, make: Any, exporter: InMemorySpanExporter
) -> None:
    app, seen = make("memory://", f"{scheme}://")

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    sent = await add.delay(1, 2)
    worker, events = await run_watched(app)

    assert seen == [("before", sent.id), ("after", sent.id, "FAILURE", "Refused")]
    got = metrics_of(worker)
    assert got[("aqueue_tasks_running", ())] == 0
    assert got[("aqueue_tasks_total", (("state", "FAILURE"), ("task", add.name)))] == 1
    (span,) = runs(exporter)
    assert span.attributes is not None
    assert span.attributes["aqueue.task.state"] == "FAILURE"
    assert span.status.status_code == StatusCode.ERROR
    mine = [(e.type, e.get("exc_type")) for e in events if e.task_id == sent.id]
    assert mine == [("task-received", None), ("task-started", None), ("task-failed", "Refused")]
    # The message went back (after a delay) to run again; the store takes it next time.
    stats = await (await app.broker()).queue_stats("default")
    assert (stats.waiting, stats.delayed) == (0, 1)


async def test_an_ack_that_raises_ends_the_run_once(
    scheme: str, make: Any, exporter: InMemorySpanExporter
) -> None:
    app, seen = make(f"{scheme}://", "memory://")

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    sent = await add.delay(2, 3)
    worker, events = await run_watched(app)

    assert await sent.get(timeout=5) == 5  # stored before the ack that failed
    assert seen == [("before", sent.id), ("after", sent.id, "SUCCESS", "NoneType")]
    got = metrics_of(worker)
    assert got[("aqueue_tasks_running", ())] == 0
    assert got[("aqueue_tasks_total", (("state", "SUCCESS"), ("task", add.name)))] == 1
    (span,) = runs(exporter)
    assert span.attributes is not None
    assert span.attributes["aqueue.task.state"] == "SUCCESS"
    mine = [e.type for e in events if e.task_id == sent.id]
    assert mine == ["task-received", "task-started", "task-succeeded"]
    stats = await (await app.broker()).queue_stats("default")
    assert (stats.waiting, stats.delayed) == (0, 1)  # not acknowledged: it comes back


async def test_a_shutdown_in_a_before_task_hook_interrupts_the_run(
    make: Any, exporter: InMemorySpanExporter
) -> None:
    app, seen = make("memory://", "memory://")
    entered = anyio.Event()

    @app.before_task
    async def stuck(run: TaskRun) -> None:
        entered.set()
        await anyio.sleep_forever()

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    sent = await add.delay(3, 4)
    worker = Worker(app, metrics_port=0, shutdown_timeout=0.0)
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        with anyio.fail_after(20):
            await entered.wait()
        worker.stop()

    assert seen == [("before", sent.id)]  # no after_task: the run never ended
    assert metrics_of(worker)[("aqueue_tasks_running", ())] == 0
    (span,) = runs(exporter)
    assert span.attributes is not None
    assert span.attributes["aqueue.task.state"] == "INTERRUPTED"
    stats = await (await app.broker()).queue_stats("default")
    assert stats.waiting == 1  # given back


async def test_a_terminated_task_is_revoked_once(make: Any, exporter: InMemorySpanExporter) -> None:
    app, seen = make("memory://", "memory://")
    entered = anyio.Event()

    @app.task
    async def stuck() -> None:
        entered.set()
        await anyio.sleep_forever()

    sent = await stuck.delay()
    worker = Worker(app, metrics_port=0, send_events=True, hostname="w@terminate")
    events: list[Event] = []
    async with app.events.receive() as stream, anyio.create_task_group() as group:
        group.start_soon(worker.run)
        with anyio.fail_after(20):
            await entered.wait()
            await app.control.revoke(sent.id, terminate=True, reply=False)
            with pytest.raises(Exception, match="revoked"):
                await sent.get(timeout=10)
            await worker.slots.wait_idle()
            worker.stop()
            async for event in stream:
                events.append(event)
                if event.type == "worker-offline":
                    break

    revoked = [e for e in events if e.task_id == sent.id and e.type == "task-revoked"]
    assert len(revoked) == 1
    assert revoked[0]["terminated"] is True
    got = metrics_of(worker)
    assert got[("aqueue_tasks_running", ())] == 0
    assert got[("aqueue_tasks_total", (("state", "REVOKED"), ("task", stuck.name)))] == 1
    (span,) = runs(exporter)
    assert span.attributes is not None
    assert span.attributes["aqueue.task.state"] == "REVOKED"
    assert seen == [("before", sent.id)]
