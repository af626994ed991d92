"""`WorkflowResult`: the result of a chain or chord: its last task's, revoking every task."""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, Generic, TypeVar

from ..control import Control
from ..interfaces import AppLike
from ..sync import block

__all__ = ["SyncWorkflowResult", "WorkflowResult", "revoke_all"]

R = TypeVar("R")
T = TypeVar("T")


async def revoke_all(app: AppLike, task_ids: Sequence[str], *, terminate: bool = False) -> None:
    """Revoke every task of a workflow that has not finished (finished ones keep their result)."""
    if task_ids:  # in a few commands of many ids each
        await Control(app).revoke(task_ids, terminate=terminate, reply=False)


class WorkflowResult(Generic[R]):
    """A chain's or a chord's result: `await result.get()` is its last task's value.

    `results` holds the handle of each step (a chain) or the header's `GroupResult` and the
    callback's handle (a chord). A failed step's error is raised by `get()`, naming the step.
    """

    def __init__(self, app: AppLike, last: Any, ids: Sequence[str], results: Sequence[Any]):
        self.app = app
        #: The handle of the last task (an `AsyncResult`, a `GroupResult`, or another of these).
        self.last = last
        self.ids = list(ids)
        self.results = list(results)

    def __repr__(self) -> str:
        return f"<WorkflowResult: {self.id}>"

    @property
    def id(self) -> str:
        """The id of the last task (or group)."""
        task_id: str = self.last.id
        return task_id

    async def get(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - Celery's API is get(timeout=...)
        *,
        propagate: bool = True,
    ) -> R:
        """Wait for the last task and return its value (or raise the failing step's error)."""
        value: R = await self.last.get(timeout, propagate=propagate)
        return value

    async def ready(self) -> bool:
        """Whether the last task finished (a failure stops a workflow and fails the rest)."""
        done: bool = await self.last.ready()
        return done

    async def successful(self) -> bool:
        """Whether the last task finished and succeeded."""
        done: bool = await self.last.successful()
        return done

    async def failed(self) -> bool:
        """Whether the last task finished with a failure."""
        done: bool = await self.last.failed()
        return done

    async def revoke(self, *, terminate: bool = False) -> None:
        """Revoke every task of the workflow that has not run yet."""
        await revoke_all(self.app, self.ids, terminate=terminate)

    @property
    def sync(self) -> SyncWorkflowResult[R]:
        """Return the sync view of this result: `result.sync.get(timeout=5)`."""
        return SyncWorkflowResult(self)


class SyncWorkflowResult(Generic[R]):
    """A chain's or chord's result for sync code: `r.get(timeout=5)`."""

    def __init__(self, result: WorkflowResult[R]) -> None:
        self.async_result = result
        self.id = result.id

    def __repr__(self) -> str:
        return f"<SyncWorkflowResult: {self.id}>"

    def _run(self, coroutine: Coroutine[Any, Any, T], name: str) -> T:
        return block(self.async_result.app, coroutine, f"result.{name}()", f"result.{name}()")

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the last task; return its value (or raise the failing step's error)."""
        return self._run(self.async_result.get(timeout, propagate=propagate), "get")

    def ready(self) -> bool:
        """Whether the last task finished."""
        return self._run(self.async_result.ready(), "ready")

    def revoke(self, terminate: bool = False) -> None:
        """Revoke every task of the workflow that has not run yet."""
        self._run(self.async_result.revoke(terminate=terminate), "revoke")
