"""Quarantine: a redelivered message runs in a child process, so only a child dies of it.

A message delivered again after its worker died (`Delivery.suspect`) may be the one that
killed it. With `worker_quarantine_processes` children (2 by default; the worker must know its
app path, as `aqueue worker module:app` does), each suspect runs in one of them, alone there,
its start recorded first (`Delivery.begin`), while the worker goes on running other tasks in
its slots, claiming ahead and taking other redeliveries as it does for first deliveries:

- the task runs in the child as it would in the worker (`aqueue.worker.child --quarantine`):
  a coroutine task on the child's own loop, the same arguments, request, soft and hard time
  limits, retries; its outcome is stored, and its message settled, by the worker;
- if the child dies before it replies (`os._exit`, a segfault, the OOM killer), the run it
  recorded counts: the message goes back (`nack`), and once it has started
  `broker_max_deliveries` times it gets a `WorkerLostError` failure and is dead-lettered with
  reason `max-deliveries` (`Runner._settled_suspect`), without its worker ever dying again.
  A child that could not start is the worker's trouble, not the message's: it raises a
  plain `WorkerLostError`, a failure of the task like any other.

Issue 19, the poison mix (50 tasks that `os._exit` among 10,000): running each suspect alone
in its worker (`aqueue.worker.isolation`, still used with 0 children or no app path) closed
the worker to every other task for up to a second a suspect, and each crasher killed a worker
twice; here the worker keeps its slots busy and a crasher kills one worker, once.
"""

from __future__ import annotations

from typing import Any

from ..interfaces import RunnableTask
from ..message import Envelope
from ..request import running_request
from .processes import ProcessDied, ProcessPool

__all__ = ["KilledItsProcess", "Quarantine"]


class KilledItsProcess(Exception):
    """The task killed the quarantine process that ran it: its message goes back, counted."""


class Quarantine:
    """Runs tasks in the children of a `--quarantine` process pool: `await q.run(...)`."""

    def __init__(self, pool: ProcessPool) -> None:
        self.pool = pool

    @property
    def size(self) -> int:
        """How many suspects may run at once (one per child)."""
        return self.pool.size

    async def run(
        self, task: RunnableTask, envelope: Envelope, soft: float | None, hard: float | None
    ) -> Any:
        """Run the task in a child; its result, its error, or `KilledItsProcess`."""
        try:
            return await self.pool.run(
                task.name,
                envelope.args,
                envelope.kwargs,
                running_request(),
                hard_limit=hard,
                soft_limit=soft,
            )
        except ProcessDied as exc:
            raise KilledItsProcess(str(exc)) from None
