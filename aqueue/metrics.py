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
from bisect import bisect_left
from collections.abc import Callable, Sequence
from math import inf
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
        #: Per task name: its runs ended by state, and its runtimes (`_PerTask`). Plain
        #: numbers, read by `_TaskCollector` at each scrape: prometheus-client's own Counter
        #: and Histogram take a lock per update (one per bucket), a fifth of a task's cost.
        self._per_task: dict[str, _PerTask] = {}
        self.running = 0
        self.redelivered = 0
        registry.register(_TaskCollector(client, self))
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
        self.dead_lettered = client.Counter(
            "aqueue_deliveries_dead_lettered",
            "Messages dead-lettered, by reason",
            ["reason"],
            registry=registry,
        )
        self.sample = sample
        #: The bound port once serving (for --metrics-port 0).
        self.port: int | None = None

    def _of(self, name: str) -> _PerTask:
        counts = self._per_task.get(name)
        if counts is None:
            counts = self._per_task[name] = _PerTask()
        return counts

    # -- the Observer protocol (aqueue/observe.py) ---------------------------------------------

    def received(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Nothing to count before it starts."""

    def started(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Count a running task, and a redelivery."""
        self.running += 1
        if delivery.delivery_count > 1:
            self.redelivered += 1

    def finished(
        self, task: RunnableTask, envelope: Envelope, state: str, runtime: float, outcome: Any
    ) -> None:
        """Count the task by its state, and its runtime."""
        counts = self._per_task.get(task.name) or self._of(task.name)
        counts.ended[state] = counts.ended.get(state, 0) + 1
        counts.buckets[bisect_left(BUCKETS, runtime)] += 1  # le: the first bound >= runtime
        counts.runtime += runtime
        self.running -= 1

    def interrupted(self, task: RunnableTask, envelope: Envelope, revoked: bool) -> None:
        """Count a terminated task as REVOKED (a shutdown's task comes back: not counted)."""
        self.running -= 1
        if revoked:
            self._count(task.name, "REVOKED")

    def returned(self, task: RunnableTask, envelope: Envelope) -> None:
        """Nothing to note: it never started."""

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Count a task settled without running as REVOKED."""
        self._count(task_name, "REVOKED")

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Count a dead-lettered message as REJECTED, and by reason."""
        self._count(task_name, "REJECTED")
        self.dead_lettered.labels(reason).inc()

    def _count(self, task_name: str, state: str) -> None:
        ended = self._of(task_name).ended
        ended[state] = ended.get(state, 0) + 1

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


#: The runtime histogram's upper bounds, in seconds: prometheus-client's default buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, inf)


class _PerTask:
    """One task name's counts: runs ended by state, runtimes by bucket, and their sum."""

    __slots__ = ("buckets", "ended", "runtime")

    def __init__(self) -> None:
        self.ended: dict[str, int] = {}
        self.buckets = [0] * len(BUCKETS)
        self.runtime = 0.0


class _TaskCollector:
    """Reads a worker's per-task numbers at each scrape, as prometheus-client's families.

    The endpoint answers on the worker's event loop, the thread that counts: nothing to lock.
    """

    def __init__(self, client: Any, metrics: WorkerMetrics) -> None:
        self._client = client
        self._metrics = metrics

    def collect(self) -> list[Any]:
        core, spell = self._client.metrics_core, self._client.utils.floatToGoString
        metrics = self._metrics
        tasks = core.CounterMetricFamily(
            "aqueue_tasks", "Tasks ended, by task and state", labels=["task", "state"]
        )
        runtimes = core.HistogramMetricFamily(
            "aqueue_task_runtime_seconds", "Task runtimes", labels=["task"]
        )
        for name, counts in list(metrics._per_task.items()):
            for state, count in list(counts.ended.items()):
                tasks.add_metric([name, state], count)
            if not any(counts.buckets):  # never ran here (rejected, revoked): no runtimes
                continue
            cumulative, buckets = 0, []
            for bound, count in zip(BUCKETS, list(counts.buckets), strict=True):
                cumulative += count
                buckets.append((spell(bound), cumulative))
            runtimes.add_metric([name], buckets, counts.runtime)
        running = core.GaugeMetricFamily(
            "aqueue_tasks_running", "Tasks running now", value=metrics.running
        )
        redelivered = core.CounterMetricFamily(
            "aqueue_deliveries_redelivered",
            "Messages delivered again",
            value=metrics.redelivered,
        )
        return [tasks, runtimes, running, redelivered]


async def _read_head(stream: SocketStream) -> bytes:
    """Read an HTTP request's head (up to 16 KiB)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 16384:
        data += await stream.receive()
    return data
