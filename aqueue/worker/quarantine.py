"""Quarantine: a redelivered message runs in a child process, so only a child dies of it.

A message delivered again after its worker died (`Delivery.suspect`) may be the one that
killed it. Each suspect runs in a child process of the worker, alone there, while the worker
goes on running other tasks in its slots, claiming
ahead and taking other redeliveries as it does for first deliveries. At most
`worker_quarantine_processes` (2 by default) suspects start at once; one that has run `GRACE`
(0.5 s) frees its place and runs on in its child, so a long suspect holds back no other (up to
`OLD_FACTOR` times as many children in all; beyond `worker_quarantine_processes` idle ones,
a child exits when its task ends). The worker must know its app path, as `aqueue worker
module:app` does; one child starts with the worker, in the background, the others on demand.

- the task runs in the child as it would in the worker (`aqueue.worker.child --quarantine`):
  a coroutine task on the child's own loop, the same arguments, request, soft and hard time
  limits, retries; its outcome is stored, and its message settled, by the worker;
- if the child dies before it replies (`os._exit`, a segfault, the OOM killer), the run is
  recorded then (`Delivery.begin`, `Runner._killed_its_process`) and counts: the message goes
  back (`nack`), and once it has started `broker_max_deliveries` times it gets a
  `WorkerLostError` failure and is dead-lettered with reason `max-deliveries`, without its
  worker ever dying again.
- if the worker dies while a suspect runs here (another message killed it, or an operator),
  the child dies with it, and that run is not recorded: it was not the suspect's doing (one
  suspect a child: only its own child's death is). Recorded before the run, as it once was,
  two such deaths dead-lettered a task that kills nothing at `broker_max_deliveries = 3`
  (issue 19: crashers killing worker after worker). A suspect that kills its worker from a
  child (a signal to its parent) is still bounded: `UNSTARTED_FACTOR` times
  `broker_max_deliveries` deliveries.
- a task that killed a quarantine process is suspected for `worker_suspect_window` (60 s) by
  every worker (`aqueue.worker.control.tell_suspect`: a control command, and a setting for
  the workers that start meanwhile): its first deliveries run here too, so the next message
  of it that kills kills a child, not a worker and the tasks running in it;
- a child that cannot start (the app does not load in a fresh process) is the worker's
  trouble, not the message's: the worker makes sure a child is ready (`ready`) before the
  suspect's run starts; if none can start, the error is logged, the quarantine is
  `broken` for the worker's life, and this suspect and the later ones run alone in the worker
  (`aqueue.worker.isolation`).

Issue 19, the poison mix (50 tasks that `os._exit` among 10,000): running each suspect alone
in its worker (`aqueue.worker.isolation`, still used with 0 children or no app path) closed
the worker to every other task for up to a second a suspect, and each crasher killed a worker
twice; here the worker keeps its slots busy and a crasher kills one worker, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, NoReturn

import anyio

from ..exceptions import ConfigurationError, WorkerLostError
from ..interfaces import RunnableTask
from ..message import Envelope
from ..request import running_request
from .processes import ProcessDied, ProcessPool

__all__ = ["GRACE", "OLD_FACTOR", "KilledItsProcess", "Quarantine", "QuarantineBroken"]

#: A run that lived this long (seconds) frees its place for the next suspect: it goes on in
#: its child, which no longer counts against `worker_quarantine_processes` (as the isolation's
#: window: a crash comes early in a run, and a long suspect must not hold back the others).
GRACE = 0.5
#: The children of old runs and young ones together: at most this many times the places.
OLD_FACTOR = 4

logger = logging.getLogger("aqueue.worker")


class KilledItsProcess(Exception):
    """The task killed the quarantine process that ran it: its message goes back, counted."""


class QuarantineBroken(Exception):
    """No quarantine process can start: the task must run in the worker."""


class Quarantine:
    """Runs tasks in the children of a `--quarantine` process pool: `await q.run(...)`.

    Made in the worker's event loop (`places` is a capacity limiter).
    """

    def __init__(self, app_path: str, size: int, grace: float = GRACE) -> None:
        #: Up to `size` young runs, and the children of older ones (at most `OLD_FACTOR` times
        #: as many in all; `size` idle ones kept).
        self.pool = ProcessPool(app_path, size * OLD_FACTOR, quarantine=True, keep=size)
        #: The budget of young runs: a run frees its place once it has run `grace` seconds.
        self.places = anyio.CapacityLimiter(size)
        self.grace = grace
        #: Why no child could start (then suspects run in the worker); None while they can.
        self.broken: str | None = None
        self._proven = False  # a child started once
        self._proving = anyio.Lock()
        #: Called with a task's name when a run of it has lived `grace` seconds in its child
        #: (the dispatcher's verdicts: `aqueue.worker.verdicts`).
        self.on_grace: Callable[[str], None] | None = None

    async def ready(self) -> None:
        """Make sure a child is ready to run a suspect; `QuarantineBroken` if none can start."""
        if self.broken is not None:
            raise QuarantineBroken(self.broken)
        if self._proven:  # a child started: the app loads in one
            return
        async with self._proving:  # one child tries, the other suspects wait for it
            if self.broken is not None:
                raise QuarantineBroken(self.broken)
            if self._proven:
                return
            try:
                await self.pool.warm()
            except (ConfigurationError, WorkerLostError) as exc:
                self._break(exc)
            self._proven = True

    async def prepare(self) -> None:
        """Start a child for the first suspect (a worker starting calls it in the background).

        Suspects come in bursts, when another worker died: a child ready then saves the first
        of them a process start (0.5-1 s). One that cannot start is logged (`ready`).
        """
        with contextlib.suppress(QuarantineBroken):
            await self.ready()

    def _break(self, exc: Exception) -> NoReturn:
        self.broken = str(exc)
        logger.error(
            "No quarantine process could start (%s); redelivered messages run alone in the "
            "worker from now on",
            exc,
        )
        raise QuarantineBroken(self.broken) from None

    async def run(
        self,
        task: RunnableTask,
        envelope: Envelope,
        soft: float | None,
        hard: float | None,
    ) -> Any:
        """Run the task in a child; its result, its error, or `KilledItsProcess`.

        Nothing is recorded before the run (see the module's docstring): the caller records
        it if the child dies of it. A child that cannot start raises `QuarantineBroken`.
        """
        if self.broken is not None:
            raise QuarantineBroken(self.broken)
        token = object()
        await self.places.acquire_on_behalf_of(token)
        held = True
        timer: asyncio.TimerHandle | None = None

        def free() -> None:
            nonlocal held
            if held:
                held = False
                self.places.release_on_behalf_of(token)

        def lived() -> None:
            free()
            if self.on_grace is not None:
                self.on_grace(task.name)

        async def begin() -> None:
            nonlocal timer
            timer = asyncio.get_running_loop().call_later(self.grace, lived)

        try:
            return await self.pool.run(
                task.name,
                envelope.args,
                envelope.kwargs,
                running_request(),
                hard_limit=hard,
                soft_limit=soft,
                before=begin,
            )
        except ProcessDied as exc:
            raise KilledItsProcess(str(exc)) from None
        except (ConfigurationError, WorkerLostError) as exc:  # a child could not start
            self._break(exc)
        finally:
            if timer is not None:
                timer.cancel()
            free()
