"""One delivery's way through a worker, from the broker to a slot, and back at shutdown.

    consume ──> inbox ──> slot ──> check ──> admit ──┬──> run (coroutine, in the slot)
                                                     ├──> lane (def or process task: its pool;
                                                     │         a suspect: quarantine)
                                                     └──> hold (rate limit or concurrency place)

A `Job` is what travels: the delivery, its checked envelope and task, and the admission ticket
it holds. A redelivered message (a suspect) runs in a quarantine process, its start recorded
first (`quarantine`), or, without them, alone in the worker (`isolation`); first deliveries of
its task wait for its verdict there (`verdicts`); what never started goes back to the broker
uncounted when the worker stops.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ..request import current_revocations
from .admission import Admission, Ticket
from .isolation import Isolation
from .quarantine import Quarantine, QuarantineBroken
from .runner import Refusal
from .slots import Inbox, InboxClosed, Slots
from .verdicts import Verdict, Verdicts

if TYPE_CHECKING:
    from ..drivers.base import Broker, Delivery
    from ..interfaces import RunnableTask
    from ..message import Envelope
    from .runner import Runner

__all__ = ["Dispatcher", "Held", "Job"]

logger = logging.getLogger("aqueue.worker")


@dataclass(slots=True)
class Job:
    """A delivery that passed its checks: the message, its envelope and task, its ticket."""

    delivery: Delivery
    envelope: Envelope
    task: RunnableTask
    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Held:
    """A task waiting outside the slots for its rate limit or a place."""

    cancel_scope: anyio.CancelScope
    envelope: Envelope
    until: float  # its booked start (a POSIX time); later if it also waits for a place


class Dispatcher:
    """Takes deliveries from the broker and runs each in a slot, a lane, or after a hold.

    `stopping()` says whether the worker is stopping (a job held for later then goes back);
    `finished()` runs after each task that finished in a slot (the recycle count).
    """

    def __init__(
        self,
        runner: Runner,
        slots: Slots,
        admission: Admission,
        lanes: tuple[anyio.CapacityLimiter, anyio.CapacityLimiter],
        *,
        stopping: Callable[[], bool],
        finished: Callable[[], None] | None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.runner = runner
        self.slots = slots
        self.admission = admission
        #: The budgets of def tasks (threads) and process tasks, apart from the slots.
        self.lanes = lanes
        #: Where redelivered messages run, apart from the slots (one per child); None, or
        #: broken: alone in a slot (`isolation`).
        self.quarantine = quarantine
        #: Tasks whose suspects wait for a quarantine run: their first deliveries wait too
        #: (not with `worker_suspect_window = 0`: a verdict would change nothing).
        self.verdicts = Verdicts()
        self._awaits_verdicts = quarantine is not None and runner.app.conf.worker_suspect_window > 0
        if quarantine is not None and self._awaits_verdicts:
            quarantine.on_grace = self.verdicts.given
        self.inbox: Inbox[Delivery] = Inbox()
        self.isolation = Isolation()
        #: The running deliveries, with the asyncio task running each (for terminate).
        self.running: dict[Delivery, asyncio.Task[Any]] = {}
        #: Jobs waiting outside the slots (held, or waiting for their lane).
        self.held: dict[Delivery, Held] = {}
        self._terminated: dict[Delivery, bool] = {}
        #: The suspects counted in `Slots.suspects`: taken, and their window not over yet.
        self._suspects: set[Delivery] = set()
        self._stopping = stopping
        self._finished = finished
        self._work: TaskGroup | None = None

    def leased(self) -> Iterator[Delivery]:
        """Yield the deliveries whose leases the worker renews: running, held and queued."""
        yield from list(self.running)
        yield from list(self.held)
        yield from self.inbox.queued()

    async def consume(self, broker: Broker, queues: Sequence[str], *, burst: bool) -> None:
        """Put deliveries in the inbox as slots free up (in burst mode, until none is left)."""
        slots, inbox = self.slots, self.inbox
        while True:
            taken = 0
            async for delivery in broker.consume(queues, slots, burst=burst):
                taken += 1
                alone = delivery.suspect and not self._quarantined(delivery)
                slots.take(alone)
                if alone:
                    self._suspects.add(delivery)
                if delivery.returned:  # given back unfinished: before what was taken ahead
                    inbox.put_front(delivery)
                else:
                    inbox.put(delivery)
                del delivery  # the slot has it: not kept here until the next (see `slot`)
            if not burst:
                return
            await slots.wait_idle()  # tasks may have queued more work: look once more
            if not taken:
                return

    async def slot(self, work: TaskGroup) -> None:
        """Run deliveries from the inbox, one at a time, until the inbox closes.

        `work` owns the lanes and the holds that this slot starts.
        """
        self._work = work
        inbox, slots, runner, running = self.inbox, self.slots, self.runner, self.running
        gate, unlimited, finished = self.isolation, self.admission.unlimited, self._finished
        verdicts, suspects = self.verdicts, runner.suspects
        current_revocations.set(runner.revoked)  # this slot's context, copied into threads
        me = asyncio.current_task()
        assert me is not None
        # Let go of a delivery (its body: up to message_max_bytes) before waiting for the next:
        # a slot waiting for work kept its last one alive, and a RabbitMQ worker refusing 1 MB
        # bodies held twice its slots' worth of them (issue 19, finding 8).
        delivery: Delivery | None
        runnable: tuple[Envelope, RunnableTask] | Refusal | None
        checked: tuple[Envelope, RunnableTask] | None
        while True:
            try:
                delivery = await inbox.get()
            except InboxClosed:
                return
            if delivery.suspect and not self._quarantined(delivery):
                await self._slot_suspect(delivery, me)
                delivery = None
                continue
            if slots.running >= slots.size:  # held tasks took the free slots meanwhile
                await self._wait_slot(delivery)
            slots.start()
            # `_guarded(delivery, _admit(delivery))`, spelled out for the common message (an
            # async task with no limit, ready to run, the gate open): two coroutines less.
            running[delivery] = me
            try:
                runnable = runner.runnable(delivery)
                checked = runner.ready(delivery, runnable)  # as a rule: no coroutine to check
                if (
                    checked is not None
                    and checked[1].is_async
                    and unlimited(checked[1])
                    and not verdicts  # as a rule: no suspect of any task waits for its run,
                    and not suspects  # and none is suspected
                    and (entry := gate.try_enter()) is not None
                ):
                    try:
                        await runner.run(delivery, *checked)
                    finally:
                        gate.leave(entry)
                else:
                    await self._admit(delivery, runnable)
                if finished is not None:
                    finished()
            except asyncio.CancelledError:
                if await self._cancelled(delivery, me):
                    continue
                raise
            except Exception:
                await self._not_settled(delivery)
            finally:
                del running[delivery]
                slots.release()
                delivery = runnable = checked = None

    async def _slot_suspect(self, delivery: Delivery, me: asyncio.Task[Any]) -> None:
        """Run a redelivered message in this slot, holding no more than the slots can run.

        Nothing is claimed ahead while it is in the worker (`Slots.suspects`), until its
        window of running alone is over (`_suspect_over`); the messages claimed ahead of the
        slots before it came go back unstarted now, so that it runs alone (`_run_alone`) with
        no message waiting in the inbox that its crash would take down.
        """
        slots = self.slots
        try:
            excess = slots.excess
            if excess:
                await self.give_back(self.inbox.take_last(excess))
            if slots.running >= slots.size:
                await self._wait_slot(delivery)
            slots.start()
            try:
                await self._guarded(delivery, self._admit(delivery), me)
            finally:
                slots.release()
        finally:
            self._suspect_over(delivery)

    async def _quarantine_ready(self) -> bool:
        """Whether a quarantine process is ready; False: none can start (it is broken)."""
        assert self.quarantine is not None
        try:
            await self.quarantine.ready()
        except QuarantineBroken:
            return False
        return True

    def _quarantined(self, delivery: Delivery, task: RunnableTask | None = None) -> bool:
        """Whether `delivery` runs in a quarantine process.

        A suspect does (not alone here), and a first delivery of a `task` suspected by its name
        (`Runner.suspects`).
        """
        quarantine = self.quarantine
        return (
            quarantine is not None
            and quarantine.broken is None
            and (delivery.suspect or (task is not None and task.name in self.runner.suspects))
        )

    def _suspect_over(self, delivery: Delivery) -> None:
        """Stop counting a suspect in `Slots.suspects`: its window is over, or it is gone.

        Its window ends once it has run alone for the isolation's grace period (it is still
        running, maybe), or when it ends: a crash of the worker past it blames it anyway
        (`isolation`), so the broker may hand this worker the next redelivery then, rather
        than when a long suspect finishes (issue 19: 2-5 s suspects held every orphan back).
        """
        if delivery in self._suspects:
            self._suspects.discard(delivery)
            self.slots.suspect_done()

    async def give_back(self, deliveries: list[Delivery]) -> None:
        """Give back queued messages that never started (uncounted: `Delivery.release`)."""
        slots = self.slots
        with anyio.CancelScope(shield=True):
            for delivery in deliveries:
                await release_quietly(delivery)
                slots.give_back()
                self._suspect_over(delivery)

    async def _wait_slot(self, delivery: Delivery) -> None:
        """Wait for a free slot for a queued delivery; give it back if cancelled meanwhile."""
        try:
            await self.slots.wait_slot()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await release_quietly(delivery)
            self.slots.give_back()
            raise

    async def _admit(
        self,
        delivery: Delivery,
        runnable: tuple[Envelope, RunnableTask] | Refusal | None = None,
    ) -> None:
        """Run the delivery now, or hold it outside the slots until it may start.

        `runnable` is what `Runner.runnable` said of it, if it was asked already.
        """
        runner = self.runner
        if runnable is None:
            runnable = runner.runnable(delivery)
        # Before any await: a first delivery of its task taken meanwhile waits (`verdicts`).
        verdict = self._expect_verdict(delivery, runnable)
        try:
            checked = runner.ready(delivery, runnable)  # as a rule: no coroutine to check it
            if checked is None:
                checked = await runner.check(delivery, runnable)
                if checked is None:
                    return
            if not delivery.suspect and (pending := self.verdicts.pending(checked[1].name)):
                # It keeps this slot's place (claimed, not run): nothing more is claimed for it.
                self.slots.occupy()
                self._start(self._after_verdict, delivery, checked, pending)
                return
            if await self._dispatch(delivery, *checked, verdict):
                verdict = None  # given when its quarantine run ends (or lives its grace)
        finally:
            if verdict is not None:  # the suspect goes without a quarantine run
                verdict.withdraw()

    async def _dispatch(
        self, delivery: Delivery, envelope: Envelope, task: RunnableTask, verdict: Verdict | None
    ) -> bool:
        """Run a checked delivery now, or hand it to a hold, a lane or the quarantine.

        True: the quarantine run has `verdict` to give.
        """
        runner, admission = self.runner, self.admission
        ticket = Ticket() if admission.unlimited(task) else await admission.admit(task)
        job = Job(delivery, envelope, task, ticket)
        if ticket.held and self._stopping():
            await admission.done(task, ticket)
            await nack_quietly(delivery, delay=0.0)
        elif ticket.held:
            if runner.watch is not None:  # it waits: its received and started events differ
                runner.watch.received(task, envelope, delivery)
            self.slots.hold()  # counted before this slot is freed, so burst mode waits for it
            self._start(self._hold, job)
        elif (quarantined := self._quarantined(delivery, task)) or not task.is_async:
            # a suspect: a quarantine process; a def or process task: its executor's lane
            if runner.watch is not None:
                runner.watch.received(task, envelope, delivery)
            self.slots.hold()
            if quarantined:
                self._start(self._quarantine, job, verdict)
                return True
            self._start(self._lane, job)
        else:
            await self._run(job)
        return False

    def _start(self, *call: Any) -> None:
        """Start a held job's coroutine in the worker's task group (`slot`'s `work`)."""
        work = self._work
        assert work is not None
        work.start_soon(*call)

    def _expect_verdict(
        self, delivery: Delivery, runnable: tuple[Envelope, RunnableTask] | Refusal
    ) -> Verdict | None:
        """Count a suspect on its way to quarantine: its task's first deliveries wait for it."""
        if (
            not delivery.suspect
            or not self._awaits_verdicts
            or isinstance(runnable, Refusal)
            or not self._quarantined(delivery)
            or runnable[1].name in self.runner.suspects  # quarantined by its name already
        ):
            return None
        return self.verdicts.expect(runnable[1].name)

    async def _after_verdict(
        self, delivery: Delivery, checked: tuple[Envelope, RunnableTask], verdict: Verdict
    ) -> None:
        """Hold a first delivery until the verdict on its task's suspect, then admit it.

        Then its task is suspected (it goes to quarantine) or not (it runs here, as it would
        have). It keeps the place of the slot that took it (`Slots.occupy`), so a worker holds
        no more than its concurrency; given back, uncounted, if the worker stops meanwhile.
        """
        held = Held(anyio.CancelScope(), checked[0], time.time())
        self.held[delivery] = held
        try:
            with held.cancel_scope:  # cancelled at shutdown: the message goes back
                await verdict.wait()
                del self.held[delivery]
                await self._guarded(delivery, self._admit(delivery, checked))
        finally:
            if self.held.pop(delivery, None) is not None:  # never started: give it back
                with anyio.CancelScope(shield=True):
                    await release_quietly(delivery)
            self.slots.release()

    async def _lane(self, job: Job) -> None:
        """Run a def or process task within its executor's own budget, outside the slots.

        It waits for a place in its pool (`--threads` or `--processes`) as a held task (given
        back at shutdown if it never started), then runs as a running task: blocking code
        never takes one of the slots that coroutines run in.
        """
        delivery = job.delivery
        lane = self.lanes[job.task.options.executor == "process"]
        held = Held(anyio.CancelScope(), job.envelope, time.time())
        self.held[delivery] = held
        try:
            with held.cancel_scope:  # cancelled at shutdown while it waits: it goes back
                await lane.acquire()
            if held.cancel_scope.cancelled_caught:
                return
            del self.held[delivery]
            try:
                await self._guarded(delivery, self._run(job))
            finally:
                lane.release()
        finally:
            if self.held.pop(delivery, None) is not None:  # never started: give it back
                self._returned(job)
                with anyio.CancelScope(shield=True):
                    await self.admission.done(job.task, job.ticket)
                    await nack_quietly(delivery, delay=0.0)
            self.slots.unhold()

    async def _quarantine(self, job: Job, verdict: Verdict | None) -> None:
        """Run a suspect (or a task suspected by its name) outside the slots, in quarantine.

        Its place is the quarantine's to take (`run`). Its run's end is the verdict its task's
        first deliveries may wait for (given after its settling: the task is suspected by then
        if it killed).
        """
        try:
            await self._guarded(job.delivery, self._run(job))
        finally:
            if verdict is not None:
                verdict.give()
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
        self.running[delivery] = me
        try:
            await work
            if self._finished is not None:
                self._finished()
        except asyncio.CancelledError:
            if await self._cancelled(delivery, me):
                return
            raise
        except Exception:
            await self._not_settled(delivery)
        finally:
            del self.running[delivery]

    async def _cancelled(self, delivery: Delivery, me: asyncio.Task[Any]) -> bool:
        """Settle a running delivery whose task was cancelled; True: the cancellation is over.

        A revoke(terminate=True) cancelled this task alone (the run settled it as revoked):
        it is taken back. Any other (a shutdown) gives the message back; the caller re-raises.
        """
        if self._terminated.pop(delivery, False) and me.uncancel() == 0:
            return True  # settled as revoked already
        with anyio.CancelScope(shield=True):  # a no-op if it was settled already
            await nack_quietly(delivery, delay=0.0)
        return False

    async def _not_settled(self, delivery: Delivery) -> None:
        """Give back a message whose settling failed (a broker or backend error), a little later."""
        logger.exception("Could not settle a message from %s; returning it", delivery.queue)
        with anyio.CancelScope(shield=True):
            await nack_quietly(delivery, delay=1.0)

    async def _run(self, job: Job) -> None:
        delivery = job.delivery
        try:
            if delivery.suspect:
                await self._run_alone(job)
            else:
                gate = self.isolation
                entry = gate.try_enter()  # open, as a rule: no coroutine to count a task
                if entry is None:
                    entry = await gate.enter()
                try:
                    await self.runner.run(delivery, job.envelope, job.task)
                finally:
                    gate.leave(entry)
        finally:
            if job.ticket.token is not None:
                with anyio.CancelScope(shield=True):
                    await self.admission.done(job.task, job.ticket)

    async def _run_alone(self, job: Job) -> None:
        """Run a redelivered message alone, its start recorded (see `isolation`).

        Or in a quarantine process, if the worker has them (`aqueue.worker.quarantine`).
        """
        delivery, envelope = job.delivery, job.envelope
        if self._quarantined(delivery) and await self._quarantine_ready():
            logger.warning(
                "Task %s[%s] redelivered (delivery %d, %d recorded run(s)): running it in a "
                "quarantine process",
                envelope.task,
                envelope.id,
                delivery.delivery_count,
                delivery.runs,
            )
            await self.runner.run(delivery, envelope, job.task)  # it records the run
            return
        logger.warning(
            "Task %s[%s] redelivered (delivery %d, %d recorded run(s)): running it alone",
            envelope.task,
            envelope.id,
            delivery.delivery_count,
            delivery.runs,
        )
        async with self.isolation.alone(functools.partial(self._suspect_over, delivery)):
            await delivery.begin()
            await self.runner.run(delivery, envelope, job.task)

    async def _hold(self, job: Job) -> None:
        """Wait for a held task's turn without a slot, then take one and run it."""
        delivery, task, ticket = job.delivery, job.task, job.ticket
        self.held[delivery] = scope = Held(
            anyio.CancelScope(), job.envelope, time.time() + ticket.wait
        )
        try:
            with scope.cancel_scope:  # cancelled at shutdown: the message goes back
                await self.admission.wait(task, ticket)
                await self.slots.wait_slot()  # not wait(): that one refuses at the held limit
                self.slots.occupy()
                del self.held[delivery]
                self.slots.unhold()
                try:
                    await self._guarded(delivery, self._run_held(job))
                finally:
                    self.slots.release()
        finally:
            if self.held.pop(delivery, None) is not None:  # never started: give it back
                self._returned(job)
                self.slots.unhold()
                with anyio.CancelScope(shield=True):
                    await self.admission.done(task, ticket)
                    await nack_quietly(delivery, delay=0.0)

    def _returned(self, job: Job) -> None:
        """Tell the watchers a task received (it waited) will not start here."""
        if self.runner.watch is not None:
            self.runner.watch.returned(job.task, job.envelope)

    async def _run_held(self, job: Job) -> None:
        if job.envelope.id in self.runner.revoked:
            self._returned(job)
            await self.runner.discard(job.delivery, job.envelope, job.task, "revoked while held")
        else:
            await self._run(job)

    async def drain(self, work: TaskGroup, grace: float, hard_stop: anyio.Event) -> None:
        """Give back what has not started, let running tasks finish, then cancel the rest.

        Running tasks get their grace period (`shutdown_timeout`); the slot coroutines end.
        """
        for held in list(self.held.values()):  # not started: they go back at once
            held.cancel_scope.cancel()
        slots = self.slots
        unstarted = self.inbox.take_all()  # queued (or claimed ahead): back at once
        self.inbox.close()
        await self.give_back(unstarted)
        if slots.used or slots.held:
            logger.info("Waiting up to %ss for %d running task(s)", grace, slots.used + slots.held)
            with anyio.move_on_after(grace):
                async with anyio.create_task_group() as waiters:
                    waiters.start_soon(_first_then_cancel, slots.wait_idle, waiters)
                    waiters.start_soon(_first_then_cancel, hard_stop.wait, waiters)
        if slots.used or slots.held:
            work.cancel_scope.cancel()  # running tasks' messages go back as they unwind

    def terminate(self, task_id: str) -> bool:
        """Cancel the running task `task_id` (after revoking it); False if it is not running."""
        active = self.runner.active.get(task_id)
        task = self.running.get(active.delivery) if active else None
        if active is None or task is None:
            return False
        # A native cancellation of the task running it, taken back (uncancel) once it has
        # unwound; anyio's own cancellations (a shutdown) are told apart by their count.
        self._terminated[active.delivery] = True
        task.cancel()
        return True

    def rebook(self, task_name: str) -> None:
        """Send back to the queue the held tasks of `task_name` (booked at an old rate)."""
        for held in list(self.held.values()):
            if held.envelope.task == task_name:
                held.cancel_scope.cancel()


async def _first_then_cancel(wait: Any, group: TaskGroup) -> None:
    await wait()
    group.cancel_scope.cancel()


async def release_quietly(delivery: Delivery) -> None:
    """Give a message back uncounted (`Delivery.release`); log a failure, its lease expires."""
    try:
        await delivery.release()
    except Exception:
        logger.exception("Could not return a message to %s; its lease will expire", delivery.queue)


async def nack_quietly(delivery: Delivery, delay: float) -> None:
    """Give a message back (`Delivery.nack`); log a failure, its lease expires."""
    try:
        await delivery.nack(delay=delay)
    except Exception:
        logger.exception("Could not return a message to %s; its lease will expire", delivery.queue)
