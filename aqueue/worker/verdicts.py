"""Verdicts: a task's first deliveries wait while a redelivered copy of it is in quarantine.

A redelivered message (a suspect) may be what killed a worker, and runs in a quarantine process
(`aqueue.worker.quarantine`); once one kills its child, its task is suspected and every worker
runs that task's first deliveries in quarantine too (`worker_suspect_window`). Until then, a
first delivery of the same task ran in the worker: with the poison mix's 50 crashers sent
together (issue 19), each worker that took suspect crashers to its quarantine also took fresh
ones, ran the first in its own process and died of it before any child had: 9 to 12 worker
incarnations in 3 s, each taking its messages down with it.

Now, while a suspect of task X waits for its quarantine run or runs there, the worker holds its
first deliveries of X (outside the slots, their leases renewed, given back if it stops) until
the verdict: the suspect killed its child (X is suspected: they run in quarantine too), its run
ended, or it has lived the quarantine's grace (0.5 s) in its child (then they run here, as
before). A suspect that never reaches its run (refused, revoked, settled already) gives no
verdict: the last of them to go lets the held ones run. None waits more than `WAIT` seconds
(a quarantine child slow to start, places taken by other suspects): then it goes on as if the
suspect had lived. The price: after a worker dies, the
first deliveries of the tasks it was running wait for one quarantine run (a child start, up to
the grace) in the worker that took its messages. With `worker_suspect_window = 0` nothing is
held: a verdict could change nothing.
"""

from __future__ import annotations

import logging

import anyio

__all__ = ["WAIT", "Verdict", "Verdicts"]

logger = logging.getLogger("aqueue.worker")

#: The longest a first delivery waits for a verdict (seconds): a child start (0.3-1.2 s here)
#: and the grace, several times over.
WAIT = 5.0


class Verdict:
    """The verdict on one task's suspects in quarantine: `wait()` for it."""

    __slots__ = ("_event", "_owner", "held", "suspects", "task_name")

    def __init__(self, owner: Verdicts, task_name: str) -> None:
        self._owner = owner
        self._event = anyio.Event()
        self.task_name = task_name
        #: Its suspects that have not reached a verdict nor gone.
        self.suspects = 0
        #: First deliveries held for it so far.
        self.held = 0

    async def wait(self) -> None:
        """Wait for the verdict (a held first delivery), `WAIT` seconds at most."""
        if not self.held:
            logger.info(
                "Task %s: holding its first deliveries until a redelivered one has run in "
                "quarantine (it may be what killed a worker)",
                self.task_name,
            )
        self.held += 1
        with anyio.move_on_after(WAIT) as scope:
            await self._event.wait()
        if scope.cancelled_caught and not self._event.is_set():
            logger.warning(
                "Task %s: no verdict on its redelivered message after %g s; running its held "
                "first deliveries",
                self.task_name,
                WAIT,
            )
            self.give()

    def give(self) -> None:
        """Give the verdict: the held first deliveries go on."""
        self._owner._forget(self)
        self._event.set()

    def withdraw(self) -> None:
        """One suspect left without a run: the verdict is in if it was the last one."""
        self.suspects -= 1
        if self.suspects <= 0:
            self.give()


class Verdicts:
    """The tasks of a worker's suspects waiting for a quarantine run, each with its `Verdict`."""

    def __init__(self) -> None:
        self._pending: dict[str, Verdict] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def expect(self, task_name: str) -> Verdict:
        """Count a suspect of `task_name` on its way to quarantine; return its verdict."""
        verdict = self._pending.get(task_name)
        if verdict is None:
            verdict = self._pending[task_name] = Verdict(self, task_name)
        verdict.suspects += 1
        return verdict

    def pending(self, task_name: str) -> Verdict | None:
        """Return the verdict a first delivery of `task_name` must wait for, if any."""
        return self._pending.get(task_name)

    def given(self, task_name: str) -> None:
        """Give the verdict on `task_name`: a suspect of it lived its grace in quarantine."""
        verdict = self._pending.get(task_name)
        if verdict is not None:
            verdict.give()

    def _forget(self, verdict: Verdict) -> None:
        if self._pending.get(verdict.task_name) is verdict:
            del self._pending[verdict.task_name]
