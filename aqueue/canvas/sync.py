"""Workflows and their results for sync code: `workflow.sync.delay()`, `result.sync.get()`."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..result import AsyncResult
from ..sync import SyncResult, block

if TYPE_CHECKING:
    from .group import Group
    from .group_result import GroupResult
    from .node import Workflow
    from .workflow_result import WorkflowResult

__all__ = ["GroupSync", "SyncGroupResult", "SyncWorkflowResult", "WorkflowSync"]

R = TypeVar("R")
T = TypeVar("T")


def _sync_handle(handle: Any) -> Any:
    from .group_result import GroupResult
    from .workflow_result import WorkflowResult

    if isinstance(handle, AsyncResult):
        return SyncResult(handle)
    if isinstance(handle, GroupResult):
        return SyncGroupResult(handle)
    assert isinstance(handle, WorkflowResult)
    return SyncWorkflowResult(handle)


class WorkflowSync(Generic[R]):
    """`workflow.sync`: send a signature, chain or chord from sync code."""

    def __init__(self, workflow: Workflow[R]) -> None:
        self.workflow = workflow

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return block(self.workflow.app, coroutine, "workflow.sync.delay()", "workflow.delay()")

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """Send it (`delay`); return the sync view of its result."""
        return _sync_handle(self._run(self.workflow._send(args, kwargs)))

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        """Send it (`apply_async`); return the sync view of its result."""
        return _sync_handle(self._run(self.workflow._send(args or (), kwargs)))


class GroupSync(Generic[R]):
    """`group.sync`: send a group from sync code."""

    def __init__(self, group: Group[R]) -> None:
        self.group = group

    def delay(self, *args: Any, **kwargs: Any) -> SyncGroupResult[R]:
        """Send every member; return the sync view of the group's result."""
        coroutine = self.group.delay(*args, **kwargs)
        return SyncGroupResult(
            block(self.group.app, coroutine, "group.sync.delay()", "group.delay()")
        )

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None
    ) -> SyncGroupResult[R]:
        """Send every member (`apply_async`)."""
        coroutine = self.group.apply_async(args, kwargs)
        return SyncGroupResult(
            block(self.group.app, coroutine, "group.sync.apply_async()", "group.apply_async()")
        )


class SyncGroupResult(Generic[R]):
    """A group's result for sync code: `r.get(timeout=5)`, `r.ready()`, `r.completed_count()`."""

    def __init__(self, result: GroupResult[R]) -> None:
        self.async_result = result
        self.id = result.id

    def __repr__(self) -> str:
        return f"<SyncGroupResult: {self.id}>"

    def _run(self, coroutine: Coroutine[Any, Any, T], name: str) -> T:
        return block(self.async_result.app, coroutine, f"result.{name}()", f"result.{name}()")

    @property
    def results(self) -> list[Any]:
        """The members' sync result handles, in order."""
        loaded = self._run(self.async_result.load(), "load")
        return [_sync_handle(member) for member in loaded.results]

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[R]:
        """Wait for every member; return their values in order."""
        return self._run(self.async_result.get(timeout, propagate=propagate), "get")

    def ready(self) -> bool:
        """Whether every member finished."""
        return self._run(self.async_result.ready(), "ready")

    def successful(self) -> bool:
        """Whether every member succeeded."""
        return self._run(self.async_result.successful(), "successful")

    def failed(self) -> bool:
        """Whether any member failed."""
        return self._run(self.async_result.failed(), "failed")

    def completed_count(self) -> int:
        """How many members succeeded."""
        return self._run(self.async_result.completed_count(), "completed_count")

    def revoke(self, terminate: bool = False) -> None:
        """Revoke every task of the group that has not run yet."""
        self._run(self.async_result.revoke(terminate=terminate), "revoke")


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
