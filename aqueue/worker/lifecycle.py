"""The worker: one anyio task group that consumes, runs and settles tasks.

    Worker.run
    └── task group
        ├── loop watch         warns when a task blocks the event loop (aqueue/worker/loopwatch.py)
        ├── heartbeat          renews the leases of running messages (lease-based brokers only)
        └── work task group
            ├── consume loop   takes at most as many messages as there are free slots
            │                  (plus half as many ahead, on a broker that claims ahead),
            │                  and puts them in the inbox
            └── one slot coroutine per unit of concurrency: inbox -> Runner.handle

A redelivered message runs alone, its start recorded first (`aqueue.worker.isolation`), so that a
message that kills its worker is told apart from the ones that worker merely held.

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
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..drivers.options import VISIBILITY_TIMEOUT
from ..events.emitter import EventEmitter
from ..exceptions import BrokerError, ConfigurationError
from ..hooks import WorkerContext, current_worker
from ..logs import install_task_records
from ..metrics import WorkerMetrics
from ..observe import Observer, Watch
from ..request import current_revocations
from ..tracing import AVAILABLE as TRACING
from ..tracing import Tracer, tracer_for
from .admission import Admission, Ticket
from .gc_tuning import tuned_for_worker
from .isolation import Isolation
from .loopwatch import LoopWatch, blocking_tasks
from .processes import ProcessPool
from .recycle import Recycle
from .remote import RemoteControl, Revocations
from .runner import Runner, WorkerApp
from .runtimes import Runtimes
from .slots import Inbox, InboxClosed, Slots

if TYPE_CHECKING:
    from ..drivers.base import Broker, Delivery, ResultBackend
    from ..interfaces import RunnableTask
    from ..message import Envelope

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
        #: The running deliveries, with the asyncio task running each (for terminate).
        self._running: dict[Delivery, asyncio.Task[Any]] = {}
        self._terminated: dict[Delivery, bool] = {}
        #: Task ids revoked on this worker (by `app.control.revoke`), each until it expires.
        self.revoked = Revocations()
        #: Rate limits changed at runtime (`aqueue control rate_limit`), by task name.
        self.rate_limits: dict[str, str | float | None] = {}
        self.admission: Admission | None = None
        self._held: dict[Delivery, Held] = {}
        self._work: TaskGroup | None = None
        self._stopping = False
        self._hard = False
        # Made in run(): anyio's primitives need the running event loop.
        self._slots: Slots | None = None
        self._inbox: Inbox[Delivery] = Inbox()
        self._isolation = Isolation()
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
        )
        self.admission = _admission(broker, backend, self.rate_limits)
        remote = _remote_control(self, broker)
        if remote is not None:
            await remote.load()
        self.context = WorkerContext(self.hostname)
        token = current_worker.set(self.context)  # the slots and their threads inherit it
        try:
            hooks = self.app.hooks
            await hooks.start_worker(self.context)
            try:
                await self._work_until_stopped(broker, pool, remote, task_status=task_status)
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
        remote: RemoteControl | None,
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
        # The budgets of def tasks (threads) and process tasks, apart from the slots.
        self._lanes = (anyio.CapacityLimiter(self.threads), anyio.CapacityLimiter(self.processes))
        self._inbox = Inbox()
        self._isolation = Isolation()
        self._consume_scope = anyio.CancelScope()
        self._hard_stop = anyio.Event()
        if self._stopping:  # stopped before it started
            self.stop(now=self._hard)
        # The pool (children start with the first process task) closes after the tasks end.
        async with pool or contextlib.nullcontext(), anyio.create_task_group() as group:
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
            async with anyio.create_task_group() as work:
                self._work = work
                for _ in range(self.concurrency):
                    work.start_soon(self._slot, self.runner)
                with self._consume_scope:
                    logger.info("%s ready.", self.hostname)
                    task_status.started(self)
                    await self._consume(broker)
                await self._drain(work)
            group.cancel_scope.cancel()

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

    async def _consume(self, broker: Broker) -> None:
        slots, inbox = self.slots, self._inbox
        while True:
            taken = 0
            async for delivery in broker.consume(self.queues, slots, burst=self.burst):
                taken += 1
                slots.take(delivery.suspect)
                inbox.put(delivery)
            if not self.burst:
                return
            await slots.wait_idle()  # tasks may have queued more work: look once more
            if not taken:
                return

    async def _slot(self, runner: Runner) -> None:
        """Run deliveries from the inbox, one at a time, until the inbox closes."""
        inbox, slots = self._inbox, self.slots
        current_revocations.set(self.revoked)  # this slot's context, copied into its threads
        me = asyncio.current_task()
        assert me is not None
        while True:
            try:
                delivery = await inbox.get()
            except InboxClosed:
                return
            if delivery.suspect:
                await self._slot_suspect(runner, delivery, me)
                continue
            if slots.running >= slots.size:  # held tasks took the free slots meanwhile
                await self._wait_slot(delivery)
            slots.start()
            try:
                await self._guarded(delivery, self._admit(runner, delivery), me)
            finally:
                slots.release()

    async def _slot_suspect(
        self, runner: Runner, delivery: Delivery, me: asyncio.Task[Any]
    ) -> None:
        """Run a redelivered message in this slot, holding no more than the slots can run.

        Nothing is claimed ahead while it is in the worker (`Slots.suspects`); the messages
        claimed ahead of the slots before it came go back unstarted now, so that it runs alone
        (`_run_alone`) with no message waiting in the inbox that its crash would take down.
        """
        slots = self.slots
        try:
            excess = slots.excess
            if excess:
                await self._give_back(self._inbox.take_last(excess))
            if slots.running >= slots.size:
                await self._wait_slot(delivery)
            slots.start()
            try:
                await self._guarded(delivery, self._admit(runner, delivery), me)
            finally:
                slots.release()
        finally:
            slots.suspect_done()

    async def _give_back(self, deliveries: list[Delivery]) -> None:
        """Give back queued messages that never started (uncounted: `Delivery.release`)."""
        slots = self.slots
        with anyio.CancelScope(shield=True):
            for delivery in deliveries:
                await _release_quietly(delivery)
                slots.give_back()
                if delivery.suspect:
                    slots.suspect_done()

    async def _wait_slot(self, delivery: Delivery) -> None:
        """Wait for a free slot for a queued delivery; give it back if cancelled meanwhile."""
        try:
            await self.slots.wait_slot()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _release_quietly(delivery)
            self.slots.give_back()
            raise

    async def _admit(self, runner: Runner, delivery: Delivery) -> None:
        """Run the delivery now, or hold it outside the slots until it may start."""
        checked = await runner.check(delivery)
        if checked is None:
            return
        admission = self.admission
        assert admission is not None
        assert self._work is not None
        ticket = Ticket() if admission.unlimited(checked[1]) else await admission.admit(checked[1])
        if ticket.held and self._stopping:
            await admission.done(checked[1], ticket)
            await _nack_quietly(delivery, delay=0.0)
        elif ticket.held:
            if runner.watch is not None:  # it waits: its received and started events differ
                runner.watch.received(checked[1], checked[0], delivery)
            self.slots.hold()  # counted before this slot is freed, so burst mode waits for it
            self._work.start_soon(self._hold, runner, delivery, checked, ticket)
        elif not checked[1].is_async:  # a def or process task: its executor's lane, not a slot
            if runner.watch is not None:
                runner.watch.received(checked[1], checked[0], delivery)
            self.slots.hold()
            self._work.start_soon(self._lane, runner, delivery, checked, ticket)
        else:
            await self._run(runner, delivery, checked, ticket)

    async def _lane(
        self,
        runner: Runner,
        delivery: Delivery,
        checked: tuple[Envelope, RunnableTask],
        ticket: Ticket,
    ) -> None:
        """Run a def or process task within its executor's own budget, outside the slots.

        It waits for a place in its pool (`--threads` or `--processes`) as a held task (given
        back at shutdown if it never started), then runs as a running task: blocking code
        never takes one of the slots that coroutines run in.
        """
        envelope, task = checked
        lane = self._lanes[task.options.executor == "process"]
        held = Held(anyio.CancelScope(), envelope, time.time())
        self._held[delivery] = held
        try:
            with held.cancel_scope:  # cancelled at shutdown while it waits: it goes back
                await lane.acquire()
            if held.cancel_scope.cancelled_caught:
                return
            del self._held[delivery]
            try:
                await self._guarded(delivery, self._run(runner, delivery, checked, ticket))
            finally:
                lane.release()
        finally:
            if self._held.pop(delivery, None) is not None:  # never started: give it back
                with anyio.CancelScope(shield=True):
                    if self.admission is not None:
                        await self.admission.done(task, ticket)
                    await _nack_quietly(delivery, delay=0.0)
            self.slots.unhold()

    async def _guarded(
        self, delivery: Delivery, work: Awaitable[None], me: asyncio.Task[Any] | None = None
    ) -> None:
        """Run `work` for a delivery as a running task, and settle whatever goes wrong.

        A revoke(terminate=True) cancels this task alone, and is taken back (uncancel) once it
        unwound; any other cancellation (a shutdown) gives the message back and goes on; a
        broker or backend failure while settling gives it back a little later.
        """
        me = me or asyncio.current_task()
        assert me is not None
        self._running[delivery] = me
        try:
            await work
            if self.recycle:
                self._after_task()
        except asyncio.CancelledError:
            if self._terminated.pop(delivery, False) and me.uncancel() == 0:
                return  # settled as revoked already
            with anyio.CancelScope(shield=True):  # a no-op if it was settled already
                await _nack_quietly(delivery, delay=0.0)
            raise
        except Exception:
            logger.exception("Could not settle a message from %s; returning it", delivery.queue)
            with anyio.CancelScope(shield=True):
                await _nack_quietly(delivery, delay=1.0)
        finally:
            del self._running[delivery]

    def _after_task(self) -> None:
        reason = self.recycle.after_task()
        if reason is not None and not self._stopping:
            logger.warning("%s: %s; retiring (warm shutdown)", self.hostname, reason)
            self.recycled = reason
            self.stop()

    async def _run(
        self,
        runner: Runner,
        delivery: Delivery,
        checked: tuple[Envelope, RunnableTask],
        ticket: Ticket,
    ) -> None:
        assert self.admission is not None
        try:
            if delivery.suspect:
                await self._run_alone(runner, delivery, checked)
            else:
                gate = self._isolation
                await gate.enter()
                try:
                    await runner.run(delivery, *checked)
                finally:
                    gate.leave()
        finally:
            if ticket.token is not None:
                with anyio.CancelScope(shield=True):
                    await self.admission.done(checked[1], ticket)

    async def _run_alone(
        self, runner: Runner, delivery: Delivery, checked: tuple[Envelope, RunnableTask]
    ) -> None:
        """Run a redelivered message alone, its start recorded (see `aqueue.worker.isolation`)."""
        envelope = checked[0]
        logger.warning(
            "Task %s[%s] redelivered (delivery %d, %d recorded run(s)): running it alone",
            envelope.task,
            envelope.id,
            delivery.delivery_count,
            delivery.runs,
        )
        async with self._isolation.alone():
            await delivery.begin()
            await runner.run(delivery, *checked)

    async def _hold(
        self,
        runner: Runner,
        delivery: Delivery,
        checked: tuple[Envelope, RunnableTask],
        ticket: Ticket,
    ) -> None:
        """Wait for a held task's turn without a slot, then take one and run it."""
        assert self.admission is not None
        envelope, task = checked
        self._held[delivery] = scope = Held(
            anyio.CancelScope(), envelope, time.time() + ticket.wait
        )
        try:
            with scope.cancel_scope:  # cancelled at shutdown: the message goes back
                await self.admission.wait(task, ticket)
                await self.slots.wait_slot()  # not wait(): that one refuses at the held limit
                self.slots.occupy()
                del self._held[delivery]
                self.slots.unhold()
                try:
                    await self._guarded(delivery, self._run_held(runner, delivery, checked, ticket))
                finally:
                    self.slots.release()
        finally:
            if self._held.pop(delivery, None) is not None:  # never started: give it back
                self.slots.unhold()
                with anyio.CancelScope(shield=True):
                    await self.admission.done(task, ticket)
                    await _nack_quietly(delivery, delay=0.0)

    async def _run_held(
        self,
        runner: Runner,
        delivery: Delivery,
        checked: tuple[Envelope, RunnableTask],
        ticket: Ticket,
    ) -> None:
        envelope, task = checked
        if envelope.id in self.revoked:
            await runner.discard(delivery, envelope, task, "revoked while held")
        else:
            await self._run(runner, delivery, checked, ticket)

    async def _drain(self, work: TaskGroup) -> None:
        """Give back what has not started, let running tasks finish, then cancel the rest.

        Running tasks get their grace period (`shutdown_timeout`); the slot coroutines end.
        """
        for held in list(self._held.values()):  # not started: they go back at once
            held.cancel_scope.cancel()
        slots = self.slots
        unstarted = self._inbox.take_all()  # queued (or claimed ahead): back at once
        self._inbox.close()
        await self._give_back(unstarted)
        if slots.used or slots.held:
            logger.info(
                "Waiting up to %ss for %d running task(s)",
                self.shutdown_timeout,
                slots.used + slots.held,
            )
            with anyio.move_on_after(self.shutdown_timeout):
                async with anyio.create_task_group() as waiters:
                    waiters.start_soon(_first_then_cancel, slots.wait_idle, waiters)
                    assert self._hard_stop is not None
                    waiters.start_soon(_first_then_cancel, self._hard_stop.wait, waiters)
        if slots.used or slots.held:
            work.cancel_scope.cancel()  # running tasks' messages go back as they unwind

    async def _watch_loop(self, *, task_status: TaskStatus[None]) -> None:
        """Warn when the event loop is blocked (a thread of its own: aqueue/worker/loopwatch.py)."""
        assert self.runner is not None
        describe = functools.partial(
            blocking_tasks, asyncio.get_running_loop(), self.runner.active, self._running
        )
        watch = LoopWatch(self.app.conf.worker_loop_block_warning, describe)
        await watch.run(task_status=task_status)

    async def _heartbeat(self, interval: float) -> None:
        """Renew the leases of running messages every `interval` seconds (a named, owned loop)."""
        while True:
            await anyio.sleep(interval)
            for delivery in [*self._running, *self._held, *self._inbox.queued()]:
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
        active = self.runner.active.get(task_id) if self.runner else None
        task = self._running.get(active.delivery) if active else None
        if active is None or task is None:
            return False
        # A native cancellation of the task running it, taken back (uncancel) once it has
        # unwound; anyio's own cancellations (a shutdown) are told apart by their count.
        self._terminated[active.delivery] = True
        task.cancel()
        return True

    def set_rate_limit(self, task_name: str, rate: str | float | None) -> str:
        """Change a task's rate limit on this worker; return its scope ("global" or "local").

        Tasks of that name held for their old booking go back to the queue, to be booked again.
        """
        self.rate_limits[task_name] = rate
        for held in list(self._held.values()):  # booked at the old rate: book them again
            if held.envelope.task == task_name:
                held.cancel_scope.cancel()
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
            for held in self._held.values()
        ]

    async def serve(self, *, task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until SIGTERM or SIGINT (a second one stops at once): what `aqueue worker` does.

        As a process of its own, it also tunes the garbage collector (`worker_tune_gc`).
        """
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
        }


@dataclass(frozen=True, slots=True)
class Held:
    """A task waiting outside the slots for its rate limit or a place."""

    cancel_scope: anyio.CancelScope
    envelope: Envelope
    until: float  # its booked start (a POSIX time); later if it also waits for a place


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


def _remote_control(worker: Worker, broker: Broker) -> RemoteControl | None:
    try:
        mailbox = broker.mailbox()
    except BrokerError:
        logger.info("%s has no mailbox: remote control is off", type(broker).__name__)
        return None
    return RemoteControl(worker, mailbox)


async def _first_then_cancel(wait: Any, group: TaskGroup) -> None:
    await wait()
    group.cancel_scope.cancel()


async def _release_quietly(delivery: Delivery) -> None:
    try:
        await delivery.release()
    except Exception:
        logger.exception("Could not return a message to %s; its lease will expire", delivery.queue)


async def _nack_quietly(delivery: Delivery, delay: float) -> None:
    try:
        await delivery.nack(delay=delay)
    except Exception:
        logger.exception("Could not return a message to %s; its lease will expire", delivery.queue)
