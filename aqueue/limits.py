"""Time limits: `soft_time_limit` and `time_limit`, as in Celery, for coroutines and threads.

A coroutine past its soft limit gets `SoftTimeLimitExceeded` raised at the await it is stopped
at, once; it may catch it and clean up. Past the hard limit it is cancelled, and the task fails
with `TimeLimitExceeded`.

A `def` task runs in a thread, and Python cannot interrupt a thread: past its hard limit the
worker stops waiting for it, fails the task with `TimeLimitExceeded` and frees its slot, but
the thread runs on (and keeps its place in the thread pool) until the function returns. Code
that must be stoppable should be a coroutine, or check for itself how long it has run.

Nothing can cancel a coroutine that never awaits (CPU-bound code on the event loop): it runs
to its end however long that takes. A task that returns past its hard limit still fails with
`TimeLimitExceeded` (its value is dropped), so a limit is never silently exceeded (a thread
that returns while the loop is blocked is failed by the deadline's cancellation); the worker's
loop watch (aqueue/worker/loopwatch.py) says which task blocked the loop meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

import anyio

from .exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

__all__ = ["run_coroutine", "run_in_thread"]

T = TypeVar("T")


class _Interruptible:
    """Awaits a coroutine, and can raise an exception inside it at the await it waits on."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._pending: BaseException | None = None

    def interrupt(self, task: asyncio.Task[Any], error: BaseException) -> None:
        """Raise `error` in the coroutine: wake its task with a cancellation, then swap it."""
        self._pending = error
        task.cancel()

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            value = error = None
            try:
                value = yield yielded
            except asyncio.CancelledError as cancelled:
                error = self._swap(cancelled)
            except BaseException as exc:  # thrown in by the event loop: pass it on
                error = exc

    def _swap(self, cancelled: asyncio.CancelledError) -> BaseException:
        # Our own cancellation becomes the pending error; any other one (a hard limit, a
        # shutdown) still pending on the task stays a cancellation.
        pending, self._pending = self._pending, None
        task = asyncio.current_task()
        if pending is not None and task is not None and task.uncancel() == 0:
            return pending
        return cancelled


async def run_coroutine(
    coro: Coroutine[Any, Any, T], *, soft: float | None, hard: float | None, name: str
) -> T:
    """Await `coro` under a soft and a hard time limit (seconds; None for none)."""
    interruptible = _Interruptible(coro)
    timer = None
    if soft is not None:
        task = asyncio.current_task()
        assert task is not None
        error = SoftTimeLimitExceeded(f"task {name} passed its soft time limit ({soft:g}s)")
        timer = asyncio.get_running_loop().call_later(soft, interruptible.interrupt, task, error)
    try:
        with anyio.move_on_after(hard) as scope:
            result: T = await interruptible
            _check_finished_in_time(scope, hard, name)
            return result
    finally:
        if timer is not None:
            timer.cancel()
    raise TimeLimitExceeded(f"task {name} passed its time limit ({hard:g}s) and was cancelled")


async def run_in_thread(
    call: Callable[[], T], *, hard: float | None, limiter: anyio.CapacityLimiter, name: str
) -> T:
    """Run `call` in a thread of `limiter`; stop waiting (not the thread) past `hard` seconds."""
    with anyio.move_on_after(hard):
        return await anyio.to_thread.run_sync(call, limiter=limiter, abandon_on_cancel=True)
    raise TimeLimitExceeded(
        f"task {name} passed its time limit ({hard:g}s); its thread cannot be stopped and "
        "runs on until it returns"
    )


def _check_finished_in_time(scope: anyio.CancelScope, hard: float | None, name: str) -> None:
    """Fail a task that returned past its hard limit before the limit could cancel it.

    A coroutine that never awaits finishes before the deadline's cancellation is delivered:
    its value is dropped.
    """
    if hard is None:
        return
    late = anyio.current_time() - scope.deadline
    if late > 0:
        raise TimeLimitExceeded(
            f"task {name} passed its time limit ({hard:g}s) by {late:.3g}s and could not be "
            "cancelled (it did not await after its deadline); its result was dropped"
        )
