"""OpenTelemetry (aqueue/tracing.py): one trace from producer to worker, in the SDK's
in-memory exporter, with the messaging semantic conventions; nothing without a provider."""

from __future__ import annotations

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aqueue import App, Worker
from tests.helpers.drivers import MakeApp


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def test_one_trace_from_producer_to_worker(
    make_app: MakeApp, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = make_app(otel_tracer_provider=provider)
    tracer = provider.get_tracer("tests")

    @app.task
    async def child(x: int) -> int:
        return x * 2

    @app.task
    async def parent(x: int) -> int:
        with tracer.start_as_current_span("inside the task"):
            await child.delay(x)  # sent from inside the run: the same trace
        return x

    @app.task
    async def broken() -> None:
        raise ValueError("nope")

    with tracer.start_as_current_span("request") as root:
        sent = await parent.delay(21)
        failing = await broken.delay()
    with anyio.fail_after(20):
        await Worker(app, burst=True).run()
    assert await sent.get(timeout=5) == 21
    with pytest.raises(ValueError, match="nope"):
        await failing.get(timeout=5)

    spans = exporter.get_finished_spans()
    trace_id = root.get_span_context().trace_id
    assert {span.context.trace_id for span in spans} == {trace_id}  # one trace, every span
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    sends, processes = by_name["send default"], by_name["process default"]
    assert len(sends) == 3  # parent, broken, and child from inside parent's run
    assert len(processes) == 3
    send = next(s for s in sends if s.attributes["messaging.message.id"] == sent.id)
    assert send.kind == SpanKind.PRODUCER
    assert send.parent is not None
    assert send.parent.span_id == root.get_span_context().span_id
    run = next(s for s in processes if s.attributes["messaging.message.id"] == sent.id)
    assert run.kind == SpanKind.CONSUMER
    assert run.parent is not None
    assert run.parent.span_id == send.context.span_id
    assert run.attributes["messaging.system"] == "aqueue"
    assert run.attributes["messaging.destination.name"] == "default"
    assert run.attributes["messaging.operation.type"] == "process"
    assert run.attributes["aqueue.task.state"] == "SUCCESS"
    inside = by_name["inside the task"][0]
    assert inside.parent is not None
    assert inside.parent.span_id == run.context.span_id
    child_send = next(s for s in sends if s.attributes["aqueue.task.name"] == child.name)
    assert child_send.parent is not None
    assert child_send.parent.span_id == inside.context.span_id
    failed = next(s for s in processes if s.attributes["aqueue.task.name"] == broken.name)
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.events[0].name == "exception"


async def test_no_provider_no_spans_and_no_observer() -> None:
    app = App("untraced", broker="memory://", set_as_current=False)

    @app.task
    async def plain() -> int:
        return 1

    try:
        result = await plain.delay()
        worker = Worker(app, burst=True)
        with anyio.fail_after(10):
            await worker.run()
        assert await result.get(timeout=5) == 1
        assert worker.runner is not None
        assert worker.runner.watch is None  # nothing traced: nothing added per task
    finally:
        await app.close()
