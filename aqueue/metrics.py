"""Prometheus metrics of a worker: `aqueue worker --metrics-port 9100` serves `/metrics`.

Built on the official `prometheus-client` (`pip install "aqueue-tasks[metrics]"`), in a
registry of the worker's own:

    aqueue_tasks_total{task,state}           SUCCESS, FAILURE, RETRY, REVOKED, REJECTED
    aqueue_task_runtime_seconds{task}        a histogram of the runs' runtimes
    aqueue_tasks_running                     tasks running now
    aqueue_worker_slots_free                 free slots (concurrency minus running)
    aqueue_queue_depth{queue}                waiting messages, sampled every QUEUE_SAMPLE s
    aqueue_queue_delayed{queue}              delayed messages, sampled alike
    aqueue_queue_dead_letters{queue}         dead letters kept, sampled alike
    aqueue_deliveries_redelivered_total      messages delivered more than once
    aqueue_deliveries_dead_lettered_total{reason}

The worker counts from its runner (an observer, aqueue/observe.py): the process-pool
children's tasks are counted by the worker that sent them there, so one worker is one
endpoint. Several worker processes on a host each need a port of their own (or a port each
through `--metrics-port 0`, which picks a free one and logs it).

The endpoint is a small HTTP server on the worker's event loop (owned by its task group, no
thread), answering `GET /metrics` (anything else: 404).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import SocketStream, TaskStatus

from .exceptions import MissingDependency

if TYPE_CHECKING:
    from .drivers.base import Broker, Delivery
    from .interfaces import RunnableTask
    from .message import Envelope

__all__ = ["QUEUE_SAMPLE", "WorkerMetrics"]

logger = logging.getLogger("aqueue.worker")

#: Seconds between two samples of the worker's queues (a named, owned loop).
QUEUE_SAMPLE = 15.0


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MissingDependency(
            'worker metrics need prometheus-client: pip install "aqueue-tasks[metrics]"'
        ) from None
    return prometheus_client


class WorkerMetrics:
    """A worker's metrics: an observer of its tasks, and the `/metrics` endpoint."""

    def __init__(self, slots_free: Callable[[], float], *, sample: float = QUEUE_SAMPLE) -> None:
        client = _client()
        self._client = client
        self.registry = registry = client.CollectorRegistry(auto_describe=True)
        self.tasks = client.Counter(
            "aqueue_tasks", "Tasks ended, by task and state", ["task", "state"], registry=registry
        )
        self.runtime = client.Histogram(
            "aqueue_task_runtime_seconds", "Task runtimes", ["task"], registry=registry
        )
        self.running = client.Gauge("aqueue_tasks_running", "Tasks running now", registry=registry)
        free = client.Gauge("aqueue_worker_slots_free", "Free slots", registry=registry)
        free.set_function(slots_free)
        self.depth = client.Gauge(
            "aqueue_queue_depth", "Waiting messages (sampled)", ["queue"], registry=registry
        )
        self.delayed = client.Gauge(
            "aqueue_queue_delayed", "Delayed messages (sampled)", ["queue"], registry=registry
        )
        self.dead = client.Gauge(
            "aqueue_queue_dead_letters", "Dead letters kept (sampled)", ["queue"], registry=registry
        )
        self.redelivered = client.Counter(
            "aqueue_deliveries_redelivered", "Messages delivered again", registry=registry
        )
        self.dead_lettered = client.Counter(
            "aqueue_deliveries_dead_lettered",
            "Messages dead-lettered, by reason",
            ["reason"],
            registry=registry,
        )
        self.sample = sample
        #: The bound port once serving (for --metrics-port 0).
        self.port: int | None = None
        # The label children of each task, made once: labels() takes a lock and a lookup.
        self._children: dict[str, tuple[Any, Any, Any, Any]] = {}

    def _of(self, name: str) -> tuple[Any, Any, Any, Any]:
        children = self._children.get(name)
        if children is None:
            tasks = self.tasks
            children = self._children[name] = (
                tasks.labels(name, "SUCCESS"),
                tasks.labels(name, "FAILURE"),
                tasks.labels(name, "RETRY"),
                self.runtime.labels(name),
            )
        return children

    # -- the Observer protocol (aqueue/observe.py) ---------------------------------------------

    def received(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Nothing to count before it starts."""

    def started(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Count a running task, and a redelivery."""
        self.running.inc()
        if delivery.delivery_count > 1:
            self.redelivered.inc()

    def finished(
        self, task: RunnableTask, envelope: Envelope, state: str, runtime: float, outcome: Any
    ) -> None:
        """Count the task by its state, and its runtime."""
        success, failure, retry, runtimes = self._of(task.name)
        (success if state == "SUCCESS" else failure if state == "FAILURE" else retry).inc()
        runtimes.observe(runtime)
        self.running.dec()

    def interrupted(self, task: RunnableTask, envelope: Envelope, revoked: bool) -> None:
        """Count a terminated task as REVOKED (a shutdown's task comes back: not counted)."""
        self.running.dec()
        if revoked:
            self.tasks.labels(task.name, "REVOKED").inc()

    def returned(self, task: RunnableTask, envelope: Envelope) -> None:
        """Nothing to note: it never started."""

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Count a task settled without running as REVOKED."""
        self.tasks.labels(task_name, "REVOKED").inc()

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Count a dead-lettered message as REJECTED, and by reason."""
        self.tasks.labels(task_name, "REJECTED").inc()
        self.dead_lettered.labels(reason).inc()

    # -- serving -------------------------------------------------------------------------------

    def render(self) -> bytes:
        """Return the metrics in Prometheus' text format."""
        data: bytes = self._client.generate_latest(self.registry)
        return data

    async def serve(
        self,
        host: str,
        port: int,
        broker: Broker,
        queues: Sequence[str],
        *,
        task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve `/metrics` on host:port and sample the queues, until cancelled."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener, anyio.create_task_group() as group:
            self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
            logger.info("Metrics on http://%s:%d/metrics", host, self.port)
            await self.sample_queues(broker, queues)  # the first sample before any task
            group.start_soon(self._sample_queues, broker, queues)
            task_status.started(self.port)
            await listener.serve(self._answer, task_group=group)

    async def _sample_queues(self, broker: Broker, queues: Sequence[str]) -> None:
        """Sample the depth of the worker's queues every `sample` seconds (a named loop)."""
        while True:
            await anyio.sleep(self.sample)
            await self.sample_queues(broker, queues)

    async def sample_queues(self, broker: Broker, queues: Sequence[str]) -> None:
        """Set the queue gauges from the broker's counts now."""
        for queue in queues:
            try:
                stats = await broker.queue_stats(queue)
            except Exception as exc:
                logger.debug("Could not sample queue %s: %s", queue, exc)
                continue
            self.depth.labels(queue).set(stats.waiting)
            self.delayed.labels(queue).set(stats.delayed)
            self.dead.labels(queue).set(stats.dead)

    async def _answer(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(10):
                    request = await _read_head(stream)
                    line = request.split(b"\r\n", 1)[0].split()
                    path = line[1].split(b"?")[0] if len(line) >= 2 else b""
                    if line[0:1] in ([b"GET"], [b"HEAD"]) and path == b"/metrics":
                        body = self.render()
                        head = (
                            "HTTP/1.1 200 OK\r\n"
                            f"Content-Type: {self._client.CONTENT_TYPE_LATEST}\r\n"
                            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                        )
                        await stream.send(head.encode() + (body if line[0] == b"GET" else b""))
                    else:
                        await stream.send(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                            b"Connection: close\r\n\r\n"
                        )
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return


async def _read_head(stream: SocketStream) -> bytes:
    """Read an HTTP request's head (up to 16 KiB)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 16384:
        data += await stream.receive()
    return data
