"""OpenTelemetry traces from producer to worker, when `opentelemetry-api` is installed.

`pip install "aqueue-tasks[otel]"`, then configure a tracer provider as usual (the SDK, an
exporter). `delay()` / `apply_async()` / `send_task()` open a PRODUCER span ("send QUEUE")
around the publish and put its trace context in the message headers (W3C `traceparent`, by the
globally configured propagator); the worker continues that trace with a CONSUMER span
("process QUEUE") around each run, the task's own spans and the tasks it sends nested in it.
Attributes follow the messaging semantic conventions: `messaging.system` ("aqueue"),
`messaging.destination.name` (the queue), `messaging.message.id` (the task id),
`messaging.operation.type` ("send", "process"), plus `aqueue.task.name` and, on the consumer
span, `aqueue.task.state`; a failure sets the span's status to ERROR with the exception.

Which provider: the setting `otel_tracer_provider` if given, else the global one once it is
configured (`trace.set_tracer_provider`). Without the package, or with no provider configured
(the API's default proxy), nothing is traced and nothing is done: the worker does not even
add the tracing observer, so a worker pays for tracing only when traces are wanted. The
import is tried once, when this module is first imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from ._version import __version__

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the otel extra is in the test extra
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .drivers.base import Delivery
    from .interfaces import RunnableTask
    from .message import Envelope, OutgoingMessage

__all__ = ["AVAILABLE", "Tracer", "describe_send", "producer_span", "tracer_for"]

#: Whether opentelemetry-api is installed.
AVAILABLE = trace is not None
SYSTEM = "aqueue"


#: Whether the environment names a tracer provider for the API to load (read at import).
_PROVIDER_IN_ENVIRONMENT = AVAILABLE and "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def tracer_for(conf: Any) -> Any:
    """Return the OpenTelemetry tracer to use, or None when nothing is to be traced.

    Every `delay()` asks: with no provider configured, the answer costs an attribute read
    (the API's `get_tracer_provider` looks the environment up each time: 5 µs).
    """
    if trace is None:
        return None
    provider = conf.otel_tracer_provider
    if provider is None:
        if getattr(trace, "_TRACER_PROVIDER", 0) is None and not _PROVIDER_IN_ENVIRONMENT:
            return None  # none set (`set_tracer_provider` sets it), none to load
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None  # nobody configured tracing: do nothing at all
    return provider.get_tracer("aqueue", __version__)


@contextlib.contextmanager
def producer_span(tracer: Any, task_name: str, headers: MutableMapping[str, Any]) -> Iterator[Any]:
    """Open a PRODUCER span for a publish and put its context in `headers`; yield the span.

    The caller names the destination once it knows it (`describe_send`).
    """
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "aqueue.task.name": task_name,
    }
    with tracer.start_as_current_span(
        "send", kind=trace.SpanKind.PRODUCER, attributes=attributes
    ) as span:
        propagate.inject(headers)
        yield span


def describe_send(span: Any, messages: Sequence[OutgoingMessage]) -> None:
    """Name a producer span after its destination, with its message id (or batch size)."""
    if not messages:
        return
    queue = messages[0].queue
    span.update_name(f"send {queue}")
    span.set_attribute("messaging.destination.name", queue)
    if len(messages) == 1:
        span.set_attribute("messaging.message.id", messages[0].id)
    else:
        span.set_attribute("messaging.batch.message_count", len(messages))


class Tracer:
    """The worker's CONSUMER span per run: an observer of its tasks (aqueue/observe.py)."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        #: The span and context token of each running task, by its envelope (see events).
        self._open: dict[int, tuple[Any, Any]] = {}

    def received(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Nothing to trace yet."""

    def started(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Open the consumer span, a child of the producer's, and make it current."""
        queue = delivery.queue
        parent = propagate.extract(envelope.headers)
        span = self.tracer.start_span(
            f"process {queue}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.destination.name": queue,
                "messaging.message.id": envelope.id,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "aqueue.task.name": task.name,
                "aqueue.task.retries": envelope.retries,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._open[id(envelope)] = (span, token)

    def finished(
        self, task: RunnableTask, envelope: Envelope, state: str, runtime: float, outcome: Any
    ) -> None:
        """End the span with the task's state (ERROR status for a failure)."""
        opened = self._open.pop(id(envelope), None)
        if opened is None:
            return
        span, token = opened
        span.set_attribute("aqueue.task.state", state)
        if state != "SUCCESS" and isinstance(outcome, BaseException):
            span.record_exception(outcome)
            if state == "FAILURE":
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(outcome)[:200]))
        span.end()
        otel_context.detach(token)

    def interrupted(self, task: RunnableTask, envelope: Envelope, revoked: bool) -> None:
        """End the span of a cancelled task."""
        opened = self._open.pop(id(envelope), None)
        if opened is not None:
            span, token = opened
            span.set_attribute("aqueue.task.state", "REVOKED" if revoked else "INTERRUPTED")
            span.end()
            otel_context.detach(token)

    def returned(self, task: RunnableTask, envelope: Envelope) -> None:
        """Nothing to note: it never started."""

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Nothing to trace."""

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Nothing to trace."""
