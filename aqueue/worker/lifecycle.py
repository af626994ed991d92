"""The worker: one anyio task group that consumes, runs and settles tasks.

    Worker.run
    └── task group
        ├── loop watch         warns when a task blocks the event loop (`loopwatch`)
        ├── heartbeat          renews the leases of running messages (lease-based brokers only)
        └── work task group
            ├── consume loop   takes at most as many messages as there are free slots
            │                  (plus half as many ahead, on a broker that claims ahead),
            │                  and puts them in the inbox
            └── one slot coroutine per unit of concurrency: inbox -> check -> admit -> run
                               (`dispatch`; a task's own run: `runner`)

A redelivered message runs alone, its start recorded first (`isolation`), so that a message that
kills its worker is told apart from the ones that worker merely held.

Shutdown has two phases, as in Celery: `stop()` (the first SIGTERM/SIGINT) ends the consume
loop and lets running tasks finish for up to `shutdown_timeout` seconds, then cancels the rest,
whose messages go straight back to the queue; `stop(now=True)` (a second signal) skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from ..drivers.options import VISIBILITY_TIMEOUT
from ..events.emitter import EventEmitter
from ..exceptions import BrokerError, ConfigurationError
from ..hooks import WorkerContext, current_worker
from ..logs import install_task_records
from ..metrics import WorkerMetrics
from ..observe import Observer, Watch
from ..tracing import AVAILABLE as TRACING
from ..tracing import Tracer, tracer_for
from .admission import Admission
from .control import ControlServer, Revocations, Suspects
from .dispatch import Dispatcher
from .gc_tuning import tuned_for_worker
from .loopwatch import LoopWatch, blocking_tasks
from .malloc_tuning import fix_mmap_threshold
from .processes import ProcessPool
from .quarantine import Quarantine
from .recycle import Recycle
from .runner import Runner, WorkerApp
from .runtimes import Runtimes
from .slots import Slots

if TYPE_CHECKING:
    from ..drivers.base import Broker, ResultBackend

__all__ = ["Worker"]

logger = logging.getLogger("aqueue.worker")


class Worker:
    """Consumes `queues` of `app` and runs their tasks: `await Worker(app).run()`."""

    def __init__(
        self,
        app: WorkerApp,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        threads: int | None = None,
        shutdown_timeout: float | None = None,
        burst: bool = False,
        hostname: str | None = None,
        processes: int | None = None,
        app_path: str | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        send_events: bool | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = list(queues or [conf.task_default_queue])
        self.concurrency = concurrency or conf.worker_concurrency
        self.threads = threads or conf.worker_threads
        #: The size of the pool for executor="process" tasks, and the app path its children load.
        self.processes = processes or conf.worker_processes or os.cpu_count() or 1
        self.app_path = app_path
        self.shutdown_timeout = (
            conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        )
        self.burst = burst
        #: Emit task and worker events (`-E`, `worker_send_task_events`): aqueue/events/.
        self.send_events = conf.worker_send_task_events if send_events is None else send_events
        self.events: EventEmitter | None = None
        #: Runtime percentiles per task for `inspect stats` (`worker_runtime_stats`).
        self.runtimes: Runtimes | None = None
        #: Prometheus metrics on metrics_host:metrics_port (`--metrics-port`): aqueue/metrics.py.
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.metrics: WorkerMetrics | None = None
        self.hostname = hostname or conf.worker_hostname or f"aqueue@{socket.gethostname()}"
        self.started_at: float | None = None
        #: Retire after so many tasks, or past so much resident memory (KiB): see `recycle`.
        self.recycle = Recycle(
            max_tasks_per_child or conf.worker_max_tasks_per_child,
            max_memory_per_child or conf.worker_max_memory_per_child,
        )
        #: Why the worker stopped itself on a limit (None: it did not).
        self.recycled: str | None = None
        #: What the worker's hooks open and its tasks share (`aqueue.worker_context()`).
        self.context = WorkerContext(self.hostname)
        self.runner: Runner | None = None
        #: Task ids revoked on this worker (by `app.control.revoke`), each until it expires.
        self.revoked = Revocations()
        #: Task names that killed a quarantine process lately: they run in quarantine here.
        self.suspects = Suspects()
        #: Rate limits changed at runtime (`aqueue control rate_limit`), by task name.
        self.rate_limits: dict[str, str | float | None] = {}
        self.admission: Admission | None = None
        #: What takes deliveries and runs them (made in run(), with the slots).
        self.dispatch: Dispatcher | None = None
        self._stopping = False
        self._hard = False
        # Made in run(): anyio's primitives need the running event loop.
        self._slots: Slots | None = None
        self._consume_scope: anyio.CancelScope | None = None
        self._hard_stop: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.hostname} queues={','.join(self.queues)}>"

    @property
    def slots(self) -> Slots:
        """The worker's slots (in use while it runs)."""
        if self._slots is None:
            raise RuntimeError("the worker is not running")
        return self._slots

    def stop(self, *, now: bool = False) -> None:
        """Stop consuming; running tasks get `shutdown_timeout` to finish (none if `now`)."""
        self._hard = self._hard or now or self._stopping
        self._stopping = True
        if self._hard and self._hard_stop is not None:
            self._hard_stop.set()
        if self._consume_scope is not None:
            self._consume_scope.cancel()

    async def run(self, *, task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED) -> None:
        """Work until stopped (or, in burst mode, until the queues are empty)."""
        self.app.setup_worker()  # once: a framework's set-up (Django's), the task modules
        pool = self._process_pool()  # before connecting: a missing app path fails at once
        quarantine = self._quarantine()
        install_task_records()  # log records made during a task carry its id and name
        broker = await self.app.broker()
        backend = await self.app.result_backend()
        self.runner = Runner(
            self.app,
            broker,
            backend,
            hostname=self.hostname,
            threads=anyio.CapacityLimiter(self.threads),
            revoked=self.revoked,
            processes=pool,
            quarantine=quarantine,
            suspects=self.suspects,
        )
        self.admission = _admission(broker, backend, self.rate_limits)
        remote = _control_server(self, broker)
        if remote is not None:
            await remote.load()
        self.context = WorkerContext(self.hostname)
        token = current_worker.set(self.context)  # the slots and their threads inherit it
        try:
            hooks = self.app.hooks
            await hooks.start_worker(self.context)
            try:
                await self._work_until_stopped(
                    broker, pool, quarantine, remote, task_status=task_status
                )
            finally:
                with anyio.CancelScope(shield=True):
                    await hooks.stop_worker(self.context)
        finally:
            current_worker.reset(token)
        logger.info("%s stopped.", self.hostname)

    async def _work_until_stopped(
        self,
        broker: Broker,
        pool: ProcessPool | None,
        quarantine: Quarantine | None,
        remote: ControlServer | None,
        *,
        task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self.runner is not None
        self.events = _event_emitter(self, broker) if self.send_events else None
        self.runtimes = Runtimes() if self.app.conf.worker_runtime_stats else None
        if self.metrics_port is not None:
            self.metrics = WorkerMetrics(self._slots_free)
        tracer = tracer_for(self.app.conf) if TRACING else None
        traces = Tracer(tracer) if tracer is not None else None  # aqueue/tracing.py
        observers: list[Observer] = [
            item for item in (traces, self.events, self.runtimes, self.metrics) if item is not None
        ]
        watch = Watch(self.app.hooks, observers)
        self.runner.watch = watch if watch else None
        self.started_at = time.time()
        # Claims that take a round trip go ahead of the slots: a slot that frees up finds its
        # next message waiting (Redis S2, 10 ms tasks at concurrency 500: about 1.6x).
        ahead = self.concurrency // 2 if broker.claims_ahead else 0
        self._slots = Slots(
            self.concurrency, held_limit=self.app.conf.worker_held_limit, ahead=ahead
        )
        assert self.admission is not None
        # The budgets of def tasks (threads) and process tasks, apart from the slots.
        lanes = (anyio.CapacityLimiter(self.threads), anyio.CapacityLimiter(self.processes))
        self.dispatch = dispatch = Dispatcher(
            self.runner,
            self._slots,
            self.admission,
            lanes,
            stopping=lambda: self._stopping,
            finished=self._after_task if self.recycle else None,
            quarantine=quarantine,
        )
        self._consume_scope = anyio.CancelScope()
        self._hard_stop = anyio.Event()
        if self._stopping:  # stopped before it started
            self.stop(now=self._hard)
        # The pool (children start with the first process task) closes after the tasks end.
        async with (
            pool or contextlib.nullcontext(),
            quarantine.pool if quarantine is not None else contextlib.nullcontext(),
            anyio.create_task_group() as group,
        ):
            await group.start(self._watch_loop)
            if self.events is not None:
                await group.start(self.events.run)
            if self.metrics is not None:
                assert self.metrics_port is not None
                serve = self.metrics.serve
                await group.start(serve, self.metrics_host, self.metrics_port, broker, self.queues)
            interval = _heartbeat_interval(broker, self.admission)
            if interval is not None:
                group.start_soon(self._heartbeat, interval)
            if remote is not None:
                await group.start(remote.run)
            if quarantine is not None and not self.burst:  # a child for the first suspect
                group.start_soon(quarantine.prepare)
            async with anyio.create_task_group() as work:
                for _ in range(self.concurrency):
                    work.start_soon(dispatch.slot, work)
                with self._consume_scope:
                    logger.info("%s ready.", self.hostname)
                    task_status.started(self)
                    await dispatch.consume(broker, self.queues, burst=self.burst)
                await dispatch.drain(work, self.shutdown_timeout, self._hard_stop)
            group.cancel_scope.cancel()

    def _quarantine(self) -> Quarantine | None:
        """Return the children that run redelivered messages; None: they run alone here.

        None without an app path for them to load (a `Worker` made in code, not given one) or
        with `worker_quarantine_processes = 0`. No child starts before the first suspect.
        """
        size = self.app.conf.worker_quarantine_processes
        if self.app_path is None or size == 0:
            return None
        return Quarantine(self.app_path, size)

    def _process_pool(self) -> ProcessPool | None:
        """Return a pool for the app's executor="process" tasks; None if it has none."""
        if not any(task.options.executor == "process" for task in self.app.tasks.values()):
            return None
        if self.app_path is None:
            raise ConfigurationError(
                "executor='process' needs the worker to know the app path: start it with "
                "`aqueue worker module:app` (or pass Worker(app_path='module:app'))"
            )
        return ProcessPool(self.app_path, self.processes)

    def _after_task(self) -> None:
        reason = self.recycle.after_task()
        if reason is not None and not self._stopping:
            logger.warning("%s: %s; retiring (warm shutdown)", self.hostname, reason)
            self.recycled = reason
            self.stop()

    async def _watch_loop(self, *, task_status: TaskStatus[None]) -> None:
        """Warn when the event loop is blocked (a thread of its own: aqueue/worker/loopwatch.py)."""
        assert self.runner is not None
        assert self.dispatch is not None
        describe = functools.partial(
            blocking_tasks, asyncio.get_running_loop(), self.runner.active, self.dispatch.running
        )
        watch = LoopWatch(self.app.conf.worker_loop_block_warning, describe)
        await watch.run(task_status=task_status)

    async def _heartbeat(self, interval: float) -> None:
        """Renew the leases of running messages every `interval` seconds (a named, owned loop)."""
        while True:
            await anyio.sleep(interval)
            assert self.dispatch is not None
            for delivery in list(self.dispatch.leased()):
                try:
                    await delivery.renew()
                except Exception:
                    logger.exception("Could not renew the lease of a message")
            if self.admission is not None and self.admission.holding_places:
                try:
                    await self.admission.renew()
                except Exception:
                    logger.exception("Could not renew the concurrency places of running tasks")

    def terminate(self, task_id: str) -> bool:
        """Cancel the running task `task_id` (after revoking it); False if it is not running."""
        return self.dispatch.terminate(task_id) if self.dispatch is not None else False

    def set_rate_limit(self, task_name: str, rate: str | float | None) -> str:
        """Change a task's rate limit on this worker; return its scope ("global" or "local").

        Tasks of that name held for their old booking go back to the queue, to be booked again.
        """
        self.rate_limits[task_name] = rate
        if self.dispatch is not None:  # held tasks booked at the old rate: book them again
            self.dispatch.rebook(task_name)
        return self.admission.scope if self.admission else "local"

    def active(self) -> list[dict[str, Any]]:
        """Return the tasks running now, for `inspect active`."""
        if self.runner is None:
            return []
        return [
            {
                "id": item.envelope.id,
                "name": item.envelope.task,
                "args": list(item.envelope.args),
                "kwargs": dict(item.envelope.kwargs),
                "started": item.started,
                "queue": item.delivery.queue,
                "delivery_count": item.delivery.delivery_count,
            }
            for item in self.runner.active.values()
        ]

    def held(self) -> list[dict[str, Any]]:
        """Return the tasks this worker holds for later, for `inspect scheduled`."""
        return [
            {"id": held.envelope.id, "name": held.envelope.task, "until": held.until}
            for held in (self.dispatch.held.values() if self.dispatch is not None else ())
        ]

    async def serve(self, *, task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until SIGTERM or SIGINT (a second one stops at once): what `aqueue worker` does.

        As a process of its own, it also tunes the garbage collector (`worker_tune_gc`) and
        the C allocator (`worker_malloc_mmap_threshold`, for the life of the process).
        """
        fix_mmap_threshold(self.app.conf.worker_malloc_mmap_threshold)
        with tuned_for_worker(self.app.conf.worker_tune_gc):
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_signals)
                await self.run(task_status=task_status)
                group.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self._stopping:
                    logger.warning("%s again: stopping now", name)
                    self.stop(now=True)
                else:
                    logger.warning("%s: warm shutdown (%s again to stop now)", name, name)
                    self.stop()

    def _slots_free(self) -> float:
        slots = self._slots
        return float(slots.size - slots.running) if slots is not None else 0.0

    def event_status(self) -> dict[str, Any]:
        """Return the live counters of this worker's heartbeat events."""
        runner = self.runner
        processed = runner.succeeded + runner.failed + runner.retried if runner else 0
        return {"active": self._slots.running if self._slots else 0, "processed": processed}

    def stats(self) -> dict[str, Any]:
        """Counters for `inspect stats` and tests."""
        runner = self.runner
        return {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "running": self._slots.running if self._slots else 0,
            "succeeded": runner.succeeded if runner else 0,
            "failed": runner.failed if runner else 0,
            "refused": runner.refused if runner else 0,
            "retried": runner.retried if runner else 0,
            "runtimes": self.runtimes.report() if self.runtimes is not None else None,
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "suspects": self.suspects.report(),  # tasks run in quarantine for now
        }


def _admission(
    broker: Broker, backend: ResultBackend | None, overrides: dict[str, str | float | None]
) -> Admission:
    limiter = broker.rate_limiter() or (backend.rate_limiter() if backend else None)
    semaphore = broker.semaphore() or (backend.semaphore() if backend else None)
    lease = float(broker.options.get("visibility_timeout") or VISIBILITY_TIMEOUT)
    admission = Admission(limiter, semaphore, lease=lease)
    admission.overrides = overrides
    return admission


def _heartbeat_interval(broker: Broker, admission: Admission | None) -> float | None:
    intervals = [broker.renew_interval] if broker.renew_interval else []
    if admission is not None and admission.semaphore.scope == "global":
        intervals.append(admission.lease / 3)
    return min(intervals, default=None)


def _event_emitter(worker: Worker, broker: Broker) -> EventEmitter | None:
    try:
        mailbox = broker.mailbox()
    except BrokerError:
        logger.warning("%s has no mailbox: events are off", type(broker).__name__)
        return None
    online = {"concurrency": worker.concurrency, "queues": list(worker.queues)}
    return EventEmitter(mailbox, worker.hostname, worker.event_status, online)


def _control_server(worker: Worker, broker: Broker) -> ControlServer | None:
    try:
        mailbox = broker.mailbox()
    except BrokerError:
        logger.info("%s has no mailbox: remote control is off", type(broker).__name__)
        return None
    return ControlServer(worker, mailbox)
