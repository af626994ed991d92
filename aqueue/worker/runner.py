"""Running one delivery: check it, run its task, store the outcome, then settle the message.

The order is what makes delivery at-least-once: the result is stored before the message is
acknowledged, so a worker that dies in between leaves a message that runs again rather than a
task that silently never finished. A result store that does not answer (Redis restarting) is
tried again with backoff until it does (`_until_stored`): the message stays with its worker,
whose heartbeat renews its lease, instead of coming back to run a second time.

A message that can never run (undecodable, oversized, naming an unknown task, or with
arguments the task does not take) is dead-lettered with a machine-readable reason after one
delivery, and its caller gets a FAILURE result saying why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Container, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

import anyio

from .. import states
from ..canvas import continuation
from ..canvas.data import InvalidWorkflow, canvas_header
from ..exceptions import (
    ConfigurationError,
    NotRegistered,
    Retry,
    SerializationError,
    WorkerLostError,
)
from ..formats import FORMATS, check_formats, packer
from ..interfaces import AppLike, RunnableTask
from ..limits import run_coroutine, run_in_thread
from ..message import DeadLetterReason, Envelope, InvalidMessage, OutgoingMessage
from ..request import Request, current_request, running_request
from ..result_meta import ResultMeta
from ..sending import priority_for
from ..signing import OVERHEAD, SignatureError, open_result, sign_result, signer_for
from .control import Suspects, tell_suspect
from .processes import ProcessDied
from .quarantine import KilledItsProcess, Quarantine, QuarantineBroken

if TYPE_CHECKING:
    from ..config import Settings
    from ..drivers.base import Broker, Delivery, ResultBackend
    from ..fixups import FixupHooks
    from ..hooks import Hooks, TaskRun
    from ..observe import Watch
    from ..options import TaskOptions
    from .processes import ProcessPool

__all__ = ["Active", "Refusal", "Runner", "WorkerApp"]

logger = logging.getLogger("aqueue.worker")


class WorkerApp(AppLike, Protocol):
    """What a worker needs of its app (`App` is one): settings, tasks that run, and hooks."""

    @property
    def tasks(self) -> Mapping[str, RunnableTask]:
        """The registered tasks, by name."""
        ...

    @property
    def fixup_hooks(self) -> FixupHooks:
        """What a framework runs around tasks (Django: close stale connections)."""
        ...

    @property
    def hooks(self) -> Hooks:
        """The user's worker and task hooks (`@app.on_worker_start`, `@app.before_task`)."""
        ...

    @property
    def broker_url(self) -> str:
        """The broker's URL (with its password: redact it before showing it)."""
        ...

    @property
    def backend_url(self) -> str | None:
        """The result store's URL, or None when results are disabled."""
        ...

    def setup_worker(self) -> None:
        """Prepare this process to run tasks (a framework's set-up, the task modules)."""
        ...


class Active(NamedTuple):
    """A task running now: its message, and when it started (a POSIX time).

    A named tuple: made once per task, at a fifth of a frozen dataclass's cost. Called, it
    builds the task's `Request`: it is what `current_request` holds while the task runs (no
    `functools.partial` more per task).
    """

    delivery: Delivery
    envelope: Envelope
    started: float
    task: RunnableTask
    runner: Runner

    def __call__(self) -> Request:
        """Return the request of this run (`self.request` in the task)."""
        return self.runner._request(self.delivery, self.envelope, self.task)


class Runner:
    """Handles deliveries for one worker: `await runner.handle(delivery)`."""

    def __init__(
        self,
        app: WorkerApp,
        broker: Broker,
        backend: ResultBackend | None,
        *,
        hostname: str,
        threads: anyio.CapacityLimiter,
        revoked: Container[str] = frozenset(),
        processes: ProcessPool | None = None,
        quarantine: Quarantine | None = None,
        suspects: Suspects | None = None,
    ) -> None:
        self.app = app
        self.broker = broker
        self.backend = backend
        self.hostname = hostname
        self.threads = threads
        self.revoked = revoked
        #: The pool that runs executor="process" tasks (None: the app has none).
        self.processes = processes
        #: Where redelivered messages run (None: alone in the worker, `isolation`).
        self.quarantine = quarantine
        #: Task names that killed a quarantine process lately (here or in another worker):
        #: their first deliveries run in quarantine too (`worker_suspect_window`).
        self.suspects = Suspects() if suspects is None else suspects
        #: The tasks running now, by id.
        self.active: dict[str, Active] = {}
        self.succeeded = 0
        self.failed = 0
        self.refused = 0
        self.retried = 0
        #: Sync tasks whose threads are still running (a cancelled one may run on, unawaited).
        self.threads_busy = 0
        conf = app.conf
        # A worker reads what accept_content lists, and always what its own app writes.
        accept = {*check_formats("accept_content", conf.accept_content)}
        accept.update(check_formats("task_serializer", conf.task_serializer))
        self.accept: tuple[str, ...] = FORMATS if accept >= set(FORMATS) else tuple(accept)
        self.pack_message = packer(conf.task_serializer)
        self.pack_result = packer(conf.result_serializer)
        #: What watches tasks run (hooks, events, metrics, traces); None when nothing does.
        self.watch: Watch | None = None

    async def handle(self, delivery: Delivery) -> None:
        """Check the delivery, run its task and settle the message (`check`, then `run`)."""
        checked = await self.check(delivery)
        if checked is not None:
            await self.run(delivery, *checked)

    def ready(
        self, delivery: Delivery, checked: tuple[Envelope, RunnableTask] | Refusal
    ) -> tuple[Envelope, RunnableTask] | None:
        """Return `checked` if it may run with no more checks; None: `check` must see it."""
        if isinstance(checked, Refusal) or delivery.suspect:
            return None
        envelope = checked[0]
        if envelope.expires is None and not envelope.headers and envelope.id not in self.revoked:
            return checked
        return None

    async def check(
        self,
        delivery: Delivery,
        checked: tuple[Envelope, RunnableTask] | Refusal | None = None,
    ) -> tuple[Envelope, RunnableTask] | None:
        """Return the envelope and task to run, or settle a message that must not run.

        `checked` is what `runnable` said of it, if it was asked already.
        """
        if checked is None:
            checked = self.runnable(delivery)
        if isinstance(checked, Refusal):
            await self._refuse(delivery, *checked)
            return None
        envelope, task = checked
        if envelope.expires is not None and time.time() > envelope.expires:
            await self.discard(delivery, envelope, task, "expired before it started")
        elif envelope.id in self.revoked:
            await self.discard(delivery, envelope, task, "revoked before it started")
        elif (
            envelope.headers
            and _may_have_run(delivery, envelope)
            and await self._ran_already(delivery, envelope, task)
        ):
            pass
        elif envelope.headers and not await continuation.admitted(self.app, self.backend, envelope):
            await delivery.ack()
            logger.warning(
                "Task %s[%s] is a second copy of what a chord sent (the first copy runs): "
                "acknowledged, not run",
                task.name,
                envelope.id,
            )
        elif not delivery.suspect or not await self._settled_suspect(delivery, envelope, task):
            return checked  # the worker says `received` if it must wait: `Watch`
        return None

    async def _ran_already(
        self, delivery: Delivery, envelope: Envelope, task: RunnableTask
    ) -> bool:
        """Redo what follows a workflow's task whose result is stored already; True if settled.

        Its message is a redelivery (the worker may have died after storing the result and
        before sending what follows; `_settled_suspect` settles it next) or a continuation sent
        again (its parent was redelivered): acknowledged here, not run.
        """
        if not self.knows_outcome(task):
            return False
        assert self.backend is not None
        stored = await self.backend.fetch(envelope.id)
        if stored is None or stored.state not in states.READY_STATES:
            return False
        await self._follow_stored(envelope, stored.state, stored.payload)
        if delivery.suspect:
            return False
        await delivery.ack()
        logger.warning(
            "Task %s[%s] of a workflow was sent again after it finished: acknowledged, not run",
            task.name,
            envelope.id,
        )
        return True

    def knows_outcome(self, task: RunnableTask) -> bool:
        """Whether any worker can learn from the result store that this task finished."""
        backend = self.backend
        return backend is not None and backend.shared and not task.ignore_result

    async def _settled_suspect(
        self, delivery: Delivery, envelope: Envelope, task: RunnableTask
    ) -> bool:
        """Settle a redelivered message that must not run again; False if it may run.

        See `aqueue.worker.isolation`: its task finished already, or it was started too often.
        """
        started = delivery.runs + 1  # its first run is never recorded
        limit = self.broker.max_deliveries
        failed_already = False
        if self.knows_outcome(task):
            assert self.backend is not None
            stored = await self.backend.fetch(envelope.id)
            if stored is not None and stored.state in states.READY_STATES:
                # A FAILURE stored by a worker that died before settling the message (for
                # instance between storing the max-deliveries failure below and dead-lettering)
                # still goes to the dead letters once the message reached its limit: acking it
                # would lose the dead letter the result speaks of.
                failed_already = stored.state == states.FAILURE and started >= limit
                if not failed_already:
                    await delivery.ack()
                    logger.warning(
                        "Task %s[%s] was redelivered after it finished (%s): acknowledged, not run",
                        task.name,
                        envelope.id,
                        stored.state,
                    )
                    return True
        if started < limit:
            return False
        await self._died_too_often(delivery, envelope, task, started, failed_already)
        return True

    async def _died_too_often(
        self,
        delivery: Delivery,
        envelope: Envelope,
        task: RunnableTask,
        started: int,
        failed_already: bool = False,
    ) -> None:
        """Fail a message started `broker_max_deliveries` times, each ending in a death.

        Its result a `WorkerLostError` (unless `failed_already` stored it), what follows it
        in a workflow failed with it; the message dead-lettered with reason `max-deliveries`.
        """
        limit = self.broker.max_deliveries
        self.failed += 1
        detail = f"the process running this task died {started} times; dead-lettered"
        if not failed_already:
            error = WorkerLostError(f"{detail} (broker_max_deliveries is {limit})")
            failure = ResultMeta.failure(task.name, error, None)
            await self._store(envelope, task, states.FAILURE, failure)
            await self._follow(envelope, None, failure)  # a workflow fails with it
        await delivery.dead_letter(DeadLetterReason.MAX_DELIVERIES, detail)
        logger.error("Task %s[%s]: %s", task.name, envelope.id, detail)
        if self.watch is not None:
            reason = DeadLetterReason.MAX_DELIVERIES.value
            self.watch.rejected(task.name, envelope.id, reason, detail)

    async def discard(
        self,
        delivery: Delivery,
        envelope: Envelope,
        task: RunnableTask,
        why: str,
        *,
        tell: bool = True,
    ) -> None:
        """Settle a task that must not run, its result saying REVOKED and why.

        `tell=False`: the watch hears of it otherwise (a terminated run: `interrupted`).
        """
        meta = ResultMeta(
            task=task.name, exc_type="TaskRevoked", exc_message=why, date_done=time.time()
        )
        await self._store(envelope, task, states.REVOKED, meta)
        canvas = envelope.headers.get(continuation.HEADER) if envelope.headers else None
        if canvas is not None:  # a chord fails with it; after an expired step, what follows
            expired = why.startswith("expired")
            await continuation.discarded(self.app, self.backend, envelope, meta, expired=expired)
        await delivery.ack()
        logger.info("Task %s[%s] %s: not run", task.name, envelope.id, why)
        if tell and self.watch is not None:
            self.watch.revoked(task.name, envelope.id, why)

    def runnable(self, delivery: Delivery) -> tuple[Envelope, RunnableTask] | Refusal:
        """Decode the message and find its task, or say why it can never run (no I/O).

        `ready` then says at once whether the common message (first delivered, no expiry, no
        workflow, not revoked) runs now; any other goes through `check`.
        """
        conf = self.app.conf
        limit = conf.message_max_bytes
        body = delivery.body
        signer = signer_for(conf)
        if len(body) > limit + (OVERHEAD if signer is not None else 0):
            detail = f"{len(body)} bytes, over message_max_bytes ({limit})"
            return Refusal(DeadLetterReason.OVERSIZED, detail)
        if signer is not None:  # before msgpack sees a byte of it
            try:
                body = signer.verify(body)
            except SignatureError as exc:
                return Refusal(DeadLetterReason(exc.reason), exc.detail)
        try:
            envelope = Envelope.decode(body, self.accept)
        except InvalidMessage as exc:
            return Refusal(DeadLetterReason.UNDECODABLE, str(exc))
        task = self.app.tasks.get(envelope.task)
        if task is None:
            error = NotRegistered(f"no task named {envelope.task!r} is registered on the worker")
            return Refusal(DeadLetterReason.UNKNOWN_TASK, str(error), envelope, error)
        try:
            task.check_arguments(envelope.args, envelope.kwargs)
        except TypeError as exc:
            return Refusal(DeadLetterReason.BAD_ARGUMENTS, f"{task.name}: {exc}", envelope, exc)
        if continuation.HEADER in envelope.headers:
            try:
                canvas_header(envelope.headers[continuation.HEADER])
            except InvalidWorkflow as error:
                detail = f"{task.name}: bad workflow header: {error}"
                return Refusal(DeadLetterReason.UNDECODABLE, detail, envelope, error)
        return envelope, task

    async def _refuse(
        self,
        delivery: Delivery,
        reason: DeadLetterReason,
        detail: str,
        envelope: Envelope | None = None,
        error: Exception | None = None,
    ) -> None:
        self.refused += 1
        name = envelope.task if envelope else "?"
        ident = envelope.id if envelope else "?"
        logger.error(
            "Refused message %s[%s] from %s: %s (%s); dead-lettered",
            name,
            ident,
            delivery.queue,
            reason.value,
            detail,
        )
        if envelope is not None and error is not None and self.backend is not None:
            meta = ResultMeta.failure(envelope.task, error, None)
            await self._store(envelope, None, states.FAILURE, meta)
            if reason is not DeadLetterReason.UNDECODABLE:  # what follows fails with it
                await self._follow_refused(envelope, meta)
        await delivery.dead_letter(reason.value, detail)
        if self.watch is not None:
            self.watch.rejected(name, ident, reason.value, detail)

    async def _follow_refused(self, envelope: Envelope, meta: ResultMeta) -> None:
        canvas = envelope.headers.get(continuation.HEADER)
        if canvas is None:
            return
        try:
            canvas_header(canvas)
        except InvalidWorkflow:
            return
        await continuation.after(self.app, self.backend, envelope, None, meta)

    async def run(self, delivery: Delivery, envelope: Envelope, task: RunnableTask) -> None:
        """Run a checked task, store its outcome, and acknowledge its message.

        Each `watch.begin` is followed by exactly one `watch.end` or `watch.interrupted`,
        whatever fails in between: a gauge of running tasks or a span left open would never
        come down or end. A run whose outcome could not be stored (or what follows it sent)
        ends in FAILURE with that error, and the dispatcher gives its message back.
        """
        informed = logger.isEnabledFor(logging.INFO)
        watch = self.watch  # hooks, events, metrics or traces: one check when all are off
        conf = self.app.conf
        run: TaskRun | None = None
        if informed or conf.task_track_started or not _observed(watch, task, envelope, delivery):
            run = await self._begin(delivery, envelope, task, informed)
        self.active[envelope.id] = entry = Active(delivery, envelope, time.time(), task, self)
        # The request is built only if the task asks for it. (mypy sees no named tuple with a
        # __call__ as callable.)
        token = current_request.set(cast("Callable[[], Request]", entry))
        started = time.perf_counter()
        error: Exception | None = None
        try:  # the task's outcome, spelled out on the way to success: no coroutine more
            try:
                if (
                    task.is_async
                    and _unlimited(task.options, conf)
                    and not delivery.suspect
                    and not self.suspects
                ):
                    value = await task.invoke(envelope.args, envelope.kwargs)
                else:
                    value = await self._execute(task, envelope, delivery)
            except Exception as exc:
                state, outcome = await self._unsuccessful(delivery, envelope, task, started, exc)
            else:
                state, outcome = states.SUCCESS, value
                self.succeeded += 1
                if informed or (self.backend is not None and not task.ignore_result):
                    await self._succeeded(envelope, task, value, started, informed)
                if envelope.headers:  # a workflow's step: no coroutine for a task that is none
                    await self._follow(envelope, value, None)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._interrupted(delivery, envelope, task, watch)
            raise
        except Exception as exc:  # its outcome could not be stored, or what follows sent
            state, outcome, error = states.FAILURE, exc, exc
        finally:
            current_request.reset(token)
            _forget(self.active, envelope.id, entry)
        if error is not None or not _observed_end(
            watch, run, task, envelope, state, outcome, started
        ):
            await _ended(watch, run, task, envelope, state, outcome, started, error)
        await delivery.ack()

    async def _begin(
        self, delivery: Delivery, envelope: Envelope, task: RunnableTask, informed: bool
    ) -> TaskRun | None:
        """Say a task starts: the log, the STARTED state, the observers and before-hooks."""
        if informed:
            logger.info("Task %s[%s] received", task.name, envelope.id)
        if self.app.conf.task_track_started:
            await self._store(envelope, task, states.STARTED, ResultMeta(task=task.name))
        watch = self.watch
        if watch is None:
            return None
        run = watch.begin(task, envelope, delivery)
        if run is not None:  # before_task hooks: interrupted if they fail or are cancelled
            await self._before_hooks(watch, run, envelope)
        return run

    async def _before_hooks(self, watch: Watch, run: TaskRun, envelope: Envelope) -> None:
        """Await the before_task hooks; tell the watch the run was interrupted if cancelled."""
        assert watch.hooks is not None
        try:
            await watch.hooks.before(run)
        except BaseException:
            watch.interrupted(run.task, envelope, envelope.id in self.revoked)
            raise

    async def _follow(self, envelope: Envelope, value: Any, failure: ResultMeta | None) -> None:
        """Send what follows a workflow's task: after its result is stored, before the ack."""
        canvas = envelope.headers.get(continuation.HEADER) if envelope.headers else None
        if canvas is not None:
            await continuation.after(self.app, self.backend, envelope, value, failure)

    async def _follow_stored(self, envelope: Envelope, state: str, payload: bytes) -> None:
        """Do again what follows a workflow's task that finished (its message came back)."""
        canvas = envelope.headers.get(continuation.HEADER)
        if canvas is None or state not in (states.SUCCESS, states.FAILURE):
            return
        meta = ResultMeta.decode(open_result(self.app.conf, payload))
        failure = meta if state == states.FAILURE else None
        await continuation.after(self.app, self.backend, envelope, meta.result, failure)

    async def _unsuccessful(
        self,
        delivery: Delivery,
        envelope: Envelope,
        task: RunnableTask,
        started: float,
        exc: Exception,
    ) -> tuple[str, Any]:
        """Record a run that raised: a retry, or a failure (its state, and its error)."""
        if isinstance(exc, KilledItsProcess):
            await self._killed_its_process(delivery, envelope, task, exc)
            return states.RETRY, exc
        if isinstance(exc, Retry):
            await self._retry(delivery, envelope, task, exc)
            return states.RETRY, exc.exc
        await self._after_async_failure(task)
        again = _autoretry(task, exc, envelope.retries)
        if again is None:
            failure = await self._failed(envelope, task, exc, time.perf_counter() - started)
            await self._follow(envelope, None, failure)
            return states.FAILURE, exc
        await self._retry(delivery, envelope, task, again)
        return states.RETRY, exc

    async def _killed_its_process(
        self, delivery: Delivery, envelope: Envelope, task: RunnableTask, exc: KilledItsProcess
    ) -> None:
        """Settle a quarantined message whose child died: that run is recorded, and counts.

        Started `broker_max_deliveries` times now, it is dead-lettered (`_died_too_often`);
        else its run is recorded (`begin`, only now: a run cut short by the worker's own death
        blames no suspect) and it goes back, to be quarantined again. Settled here: the ack
        after it is none.
        """
        # A suspect: its first run (never recorded), the recorded ones, this one. A first
        # delivery quarantined for its task's name (`suspects`): the recorded ones, this one.
        starts = delivery.runs + (2 if delivery.suspect else 1)
        limit = self.broker.max_deliveries
        window = self.app.conf.worker_suspect_window
        logger.error(
            "Task %s[%s] killed its quarantine process (start %d of at most %d): %s%s",
            task.name,
            envelope.id,
            starts,
            limit,
            exc,
            f"; the workers run {task.name} in quarantine for the next {window:.0f} s"
            if window > 0
            else "",
        )
        if starts >= limit:
            await self._died_too_often(delivery, envelope, task, starts)
        else:  # recorded, so it comes back a suspect on every broker (its next count is one
            await delivery.begin()  # too many for a first delivery: a bound, never a loop)
            await delivery.nack(delay=0.0)
        if window > 0:
            until = time.time() + window
            self.suspects.add(task.name, until)
            await tell_suspect(self.broker.mailbox(), task.name, until)

    async def _interrupted(
        self, delivery: Delivery, envelope: Envelope, task: RunnableTask, watch: Watch | None
    ) -> None:
        """Settle a cancelled run's message, then tell the watch (even if settling failed)."""
        revoked = envelope.id in self.revoked
        try:
            if revoked:  # revoke(terminate=True): it must not come back
                why = "terminated while running"  # the watch hears it as interrupted
                await self.discard(delivery, envelope, task, why, tell=False)
            else:  # a shutdown: the worker gives the message back, as it was
                logger.warning(
                    "Task %s[%s] interrupted by shutdown; returning it to the queue",
                    task.name,
                    envelope.id,
                )
                # Not a nack: no worker died, so the message must not come back as a suspect
                # (run alone, one at a time) nor have this run counted towards max_deliveries.
                try:
                    await delivery.release()
                except Exception:
                    logger.exception(
                        "Could not return the message of %s[%s]", task.name, envelope.id
                    )
        finally:
            if watch is not None:
                watch.interrupted(task, envelope, revoked)

    async def _execute(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> Any:
        conf = self.app.conf
        options = task.options
        hard = options.time_limit or conf.task_time_limit
        soft = options.soft_time_limit or conf.task_soft_time_limit
        if self.quarantine is not None and (delivery.suspect or task.name in self.suspects):
            with contextlib.suppress(QuarantineBroken):  # then here, as any task
                return await self.quarantine.run(task, envelope, soft, hard)
        if options.executor == "process":
            return await self._in_process(task, envelope, hard, soft)
        if task.is_async:
            coroutine = task.invoke(envelope.args, envelope.kwargs)
            return await run_coroutine(coroutine, soft=soft, hard=hard, name=task.name)
        call = functools.partial(self._in_thread, task, envelope)
        return await run_in_thread(call, hard=hard, limiter=self.threads, name=task.name)

    async def _in_process(
        self, task: RunnableTask, envelope: Envelope, hard: float | None, soft: float | None
    ) -> Any:
        """Run an executor="process" task in the pool; its child is killed past `hard`."""
        if self.processes is None:
            raise ConfigurationError(
                f"task {task.name} has executor='process', but this worker has no process "
                "pool; start it with `aqueue worker module:app` (or Worker(app_path=...))"
            )
        try:
            return await self.processes.run(
                task.name,
                envelope.args,
                envelope.kwargs,
                running_request(),
                hard_limit=hard,
                soft_limit=soft,
            )
        except ProcessDied as exc:
            raise WorkerLostError(str(exc)) from None

    async def _retry(
        self, delivery: Delivery, envelope: Envelope, task: RunnableTask, retry: Retry
    ) -> None:
        """Record the RETRY state, then send the task again with `retries + 1`."""
        self.retried += 1
        eta = time.time() + retry.countdown if retry.countdown > 0 else None
        again = dataclasses.replace(envelope, retries=envelope.retries + 1, eta=eta)
        body = again.encode(self.app.conf.message_max_bytes, self.pack_message)
        signer = signer_for(self.app.conf)
        message = OutgoingMessage(
            id=again.id,
            queue=delivery.queue,
            body=body if signer is None else signer.sign(body, eta),
            eta=eta,
            priority=priority_for(self.app, task, None),
        )
        if retry.exc is not None:
            text = "".join(traceback.format_exception(retry.exc))
            meta = ResultMeta.failure(task.name, retry.exc, text)
        else:
            meta = ResultMeta(task=task.name)
        # RETRY is stored first: the retried message may run (and store its outcome) before
        # this coroutine is scheduled again.
        await self._store(
            envelope, task, states.RETRY, dataclasses.replace(meta, retries=again.retries)
        )
        await self.broker.publish([message])
        logger.info(
            "Task %s[%s] retry %d in %gs: %s",
            task.name,
            envelope.id,
            again.retries,
            retry.countdown,
            _short(retry.exc),
        )

    async def _after_async_failure(self, task: RunnableTask) -> None:
        """Run the hooks for a failed coroutine task (Django: drop broken connections)."""
        hooks = self.app.fixup_hooks.async_failure_hooks
        if hooks and task.is_async:
            await self.app.fixup_hooks.after_async_failure()

    def _in_thread(self, task: RunnableTask, envelope: Envelope) -> Any:
        self.threads_busy += 1  # an int += under the GIL, from one thread at a time per task
        hooks = self.app.fixup_hooks  # e.g. Django's close_old_connections (aqueue/fixups.py)
        if hooks.thread_task_hooks:
            hooks.around_thread_task()
        try:
            return task.invoke(envelope.args, envelope.kwargs)
        finally:
            if hooks.thread_task_hooks:
                hooks.around_thread_task()
            self.threads_busy -= 1

    def _request(self, delivery: Delivery, envelope: Envelope, task: RunnableTask) -> Request:
        return Request(
            id=envelope.id,
            task=task.name,
            args=envelope.args,
            kwargs=envelope.kwargs,
            retries=envelope.retries,
            eta=envelope.eta,
            expires=envelope.expires,
            headers=envelope.headers,
            queue=delivery.queue,
            hostname=self.hostname,
            delivery_count=delivery.delivery_count,
            called_directly=False,
        )

    async def _succeeded(
        self, envelope: Envelope, task: RunnableTask, value: Any, started: float, informed: bool
    ) -> None:
        """Log and store a success (`run` counted it; it skips this when there is neither)."""
        if informed:
            runtime = time.perf_counter() - started
            logger.info(
                "Task %s[%s] succeeded in %.4fs: %s", task.name, envelope.id, runtime, _short(value)
            )
        if self.backend is not None and not task.ignore_result:  # no result to build otherwise
            meta = ResultMeta(
                task=task.name, result=value, retries=envelope.retries, date_done=time.time()
            )
            await self._store(envelope, task, states.SUCCESS, meta)

    async def _failed(
        self, envelope: Envelope, task: RunnableTask, exc: Exception, runtime: float
    ) -> ResultMeta:
        self.failed += 1
        # Cut to size once (a message of a megabyte was logged twice, then not stored).
        meta = ResultMeta.failure(task.name, exc, "".join(traceback.format_exception(exc)))
        logger.error(
            "Task %s[%s] raised unexpected in %.4fs: %s(%s)\n%s",
            task.name,
            envelope.id,
            runtime,
            type(exc).__name__,
            _short(meta.exc_message),
            (meta.traceback or "").rstrip(),
        )
        await self._store(envelope, task, states.FAILURE, meta)
        return meta

    async def _store(
        self, envelope: Envelope, task: RunnableTask | None, state: str, meta: ResultMeta
    ) -> None:
        if self.backend is None or (task is not None and task.ignore_result):
            return
        try:
            payload = meta.encode(self.pack_result)
        except SerializationError as exc:
            meta = ResultMeta.failure(meta.task, exc, None)
            state, payload = states.FAILURE, meta.encode(self.pack_result)
        limit = self.app.conf.result_max_bytes
        if len(payload) > limit:
            error = SerializationError(
                f"the result is {len(payload):,} bytes, over result_max_bytes ({limit:,})"
            )
            failure = ResultMeta.failure(meta.task, error, None)
            state, payload = states.FAILURE, failure.encode(self.pack_result)
        store = functools.partial(
            self.backend.store,
            envelope.id,
            state,
            sign_result(self.app.conf, payload),
            self.app.conf.result_expires,
            headers=envelope.headers,
        )
        await _until_stored(store, f"{meta.task}[{envelope.id}]")


#: The longest wait between two attempts to store a result while its store is unreachable.
MAX_STORE_BACKOFF = 2.0


async def _until_stored(store: Callable[[], Awaitable[None]], what: str) -> None:
    """Store a result, trying again with backoff for as long as its store is unreachable.

    Unreachable is a `ConnectionError` (a driver's `BrokerError` is one). The message stays
    with this worker meanwhile, among its running ones, so the heartbeat renews its lease; a
    shutdown cancels the wait once `shutdown_timeout` is over, and the message goes back then.
    """
    delay, failed = 0.1, False
    while True:
        try:
            await store()
        except ConnectionError as exc:
            if not failed:
                logger.warning(
                    "Could not store the result of %s (%s); trying again until it answers",
                    what,
                    exc,
                )
            failed = True
            await anyio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, MAX_STORE_BACKOFF)
            continue
        if failed:
            logger.warning("Stored the result of %s after its store came back", what)
        return


def _observed(
    watch: Watch | None, task: RunnableTask, envelope: Envelope, delivery: Delivery
) -> bool:
    """Tell plain observers (events, metrics: no hooks) a run begins; False if `_begin` must.

    With nothing watching, or only observers, no coroutine is needed to say a task starts.
    """
    if watch is None:
        return True
    if watch.hooks is not None:
        return False
    watch.begin(task, envelope, delivery)  # None: no hooks, no record of the run
    return True


def _observed_end(
    watch: Watch | None,
    run: TaskRun | None,
    task: RunnableTask,
    envelope: Envelope,
    state: str,
    outcome: Any,
    started: float,
) -> bool:
    """Tell plain observers how a run ended; False if after_task hooks must see it first."""
    if watch is None:
        return True
    if run is not None:
        return False
    watch.end(task, envelope, state, time.perf_counter() - started, outcome)
    return True


def _unlimited(options: TaskOptions, conf: Settings) -> bool:
    """Whether a task runs with no time limit (`Runner._execute` need not watch it)."""
    hard = options.time_limit or conf.task_time_limit
    return hard is None and (options.soft_time_limit or conf.task_soft_time_limit) is None


def _may_have_run(delivery: Delivery, envelope: Envelope) -> bool:
    """Whether a workflow's message may be one whose task ran: redelivered, or sent again."""
    canvas = envelope.headers.get(continuation.HEADER) if envelope.headers else None
    return isinstance(canvas, dict) and (delivery.suspect or "parent" in canvas)


class Refusal(NamedTuple):
    """Why a message can never run: `Runner._refuse`'s arguments after the delivery."""

    reason: DeadLetterReason
    detail: str
    envelope: Envelope | None = None
    error: Exception | None = None


def _forget(active: dict[str, Active], task_id: str, entry: Active) -> None:
    """Take a run off the running tasks, unless a retry of the same id runs there now."""
    if active.get(task_id) is entry:
        del active[task_id]


async def _ended(
    watch: Watch | None,
    run: TaskRun | None,
    task: RunnableTask,
    envelope: Envelope,
    state: str,
    outcome: Any,
    started: float,
    error: Exception | None,
) -> None:
    """Tell the observers how a run ended; raise `error` if its outcome was not settled."""
    if watch is not None:
        await _watched(watch, run, task, envelope, state, outcome, started)
    if error is not None:
        raise error  # the dispatcher gives the message back


async def _watched(
    watch: Watch,
    run: TaskRun | None,
    task: RunnableTask,
    envelope: Envelope,
    state: str,
    outcome: Any,
    started: float,
) -> None:
    """Tell the observers how a run ended, after the after_task hooks (if any) saw it."""
    runtime = time.perf_counter() - started
    if run is not None:
        run.runtime, run.state = runtime, state
        if state == states.SUCCESS:
            run.result = outcome
        else:
            run.error = outcome
        assert watch.hooks is not None
        try:
            await watch.hooks.after(run)
        finally:
            watch.end(task, envelope, state, runtime, outcome)
    else:
        watch.end(task, envelope, state, runtime, outcome)


def _autoretry(task: RunnableTask, exc: Exception, retries: int) -> Retry | None:
    """Return the retry `autoretry_for` asks for, or None when the failure stands."""
    if not task.options.autoretry_for or not isinstance(exc, task.options.autoretry_for):
        return None
    try:
        task.retry(exc=exc, countdown=task.backoff(retries))
    except Retry as retry:
        return retry
    except Exception:  # out of retries: the task fails with exc
        return None


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
