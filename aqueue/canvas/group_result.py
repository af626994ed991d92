"""`GroupResult`: the results of a group's members, in order, found again by the group's id.

A group's member ids are saved in the result store when it is sent, as a stored result of
its own (key `group-<id>`, state SUCCESS), so `app.GroupResult(id)` finds them from any
process; `await result.load()` (or any method) reads them.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, Generic, Self, TypeVar

import anyio

from .. import states
from ..exceptions import ResultsDisabled, ResultTimeout
from ..interfaces import AppLike
from ..result import AsyncResult
from ..result_meta import ResultMeta
from ..signing import open_result, sign_result
from ..sync import SyncResult, block
from .workflow_result import SyncWorkflowResult, WorkflowResult, revoke_all

__all__ = ["GroupResult", "SyncGroupResult", "group_key", "handle_of", "save_group", "to_sync"]

R = TypeVar("R")
T = TypeVar("T")


def group_key(group_id: str) -> str:
    """Return the key a group's member ids are stored under."""
    return f"group-{group_id}"


async def save_group(app: AppLike, group_id: str, members: list[Any], ids: list[str]) -> None:
    """Store a group's members (`handle_of`'s references) and every task id under it."""
    backend = await app.result_backend()
    if backend is None or not backend.shared:
        return
    # The ids only when they are not the members' (nested groups, chains): 10,000 ids are
    # 370 KB.
    record = {"members": members, "ids": None if ids == members else ids}
    payload = ResultMeta(task="group", result=record, date_done=time.time()).encode()
    await backend.store(
        group_key(group_id),
        states.SUCCESS,
        sign_result(app.conf, payload),
        app.conf.result_expires,
    )


def handle_of(app: AppLike, reference: Any) -> Any:
    """Return the handle of a stored member: a task id, or a nested group's record."""
    if isinstance(reference, str):
        return AsyncResult(reference, app)
    members = [handle_of(app, member) for member in reference["members"]]
    return GroupResult(reference["id"], members, app)


class GroupResult(Generic[R]):
    """The results of a group: `await result.get()` is the list of its members' values."""

    def __init__(
        self,
        group_id: str,
        results: Sequence[Any] | None,
        app: AppLike,
        ids: Sequence[str] | None = None,
    ) -> None:
        self.id = group_id
        self.app = app
        self._results = list(results) if results is not None else None
        self._ids = list(ids) if ids is not None else None

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id}>"

    @property
    def results(self) -> list[Any]:
        """The members' result handles, in order (`await load()` first for a found group)."""
        if self._results is None:
            raise RuntimeError(
                f"group {self.id} is not loaded: `await result.load()` reads its members"
            )
        return self._results

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    async def load(self) -> Self:
        """Read the member ids from the result store (once); return self."""
        if self._results is not None:
            return self
        backend = await self.app.result_backend()
        if backend is None:
            raise ResultsDisabled("this app has no result backend: groups cannot be found again")
        stored = await backend.fetch(group_key(self.id))
        if stored is None:
            raise LookupError(f"no group {self.id} in the result store (never sent, or expired)")
        record = ResultMeta.decode(open_result(self.app.conf, stored.payload)).result
        self._results = [handle_of(self.app, member) for member in record["members"]]
        self._ids = list(record["ids"] or record["members"])
        return self

    async def _states(self) -> list[str | None]:
        """Each member's state: a task's (looked up all at once), a nested one's summed up.

        None for a nested group or workflow not ready yet, else SUCCESS or FAILURE.
        """
        await self.load()
        backend = await self.app.result_backend()
        tasks = [member for member in self.results if type(member) is AsyncResult]
        found: dict[str, str] = {}
        if backend is not None and backend.shared and tasks:
            stored = await backend.fetch_many([member.id for member in tasks])
            found = {m.id: s.state for m, s in zip(tasks, stored, strict=True) if s is not None}
        states_: list[str | None] = []
        for member in self.results:
            if type(member) is AsyncResult and backend is not None and backend.shared:
                states_.append(found.get(member.id, states.PENDING))
            elif await member.ready():
                states_.append(states.SUCCESS if await member.successful() else states.FAILURE)
            else:
                states_.append(None)
        return states_

    async def ready(self) -> bool:
        """Whether every member finished."""
        return all(state in states.READY_STATES for state in await self._states())

    async def successful(self) -> bool:
        """Whether every member finished and succeeded."""
        return all(state == states.SUCCESS for state in await self._states())

    async def failed(self) -> bool:
        """Whether any member failed."""
        return any(state == states.FAILURE for state in await self._states())

    async def completed_count(self) -> int:
        """How many members succeeded (the tasks' states looked up all at once)."""
        return sum(state == states.SUCCESS for state in await self._states())

    async def get(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - Celery's API is get(timeout=...)
        *,
        propagate: bool = True,
    ) -> list[R]:
        """Wait for every member; return their values in order (a failure is raised)."""
        await self.load()
        values: list[Any] = [None] * len(self.results)

        async def one(index: int, member: Any) -> None:
            values[index] = await member.get(propagate=propagate)

        try:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as tasks:
                    for index, member in enumerate(self.results):
                        tasks.start_soon(one, index, member)
        except TimeoutError:
            raise ResultTimeout(
                f"group {self.id} was not complete within {timeout} s; its tasks carry on"
            ) from None
        except BaseExceptionGroup as group:  # the first failure, as a plain exception
            raise _first(group) from None
        return values

    async def revoke(self, *, terminate: bool = False) -> None:
        """Revoke every task of the group that has not run yet."""
        await self.load()
        await revoke_all(self.app, self._ids or [], terminate=terminate)

    async def forget(self) -> None:
        """Delete the stored member ids (the members' results stay)."""
        backend = await self.app.result_backend()
        if backend is not None:
            await backend.forget(group_key(self.id))

    @property
    def sync(self) -> SyncGroupResult[R]:
        """Return the sync view of this result: `result.sync.get(timeout=5)`."""
        return SyncGroupResult(self)


def to_sync(handle: Any) -> Any:
    """Return the sync view of a workflow's result handle (of any kind)."""
    if isinstance(handle, AsyncResult):
        return SyncResult(handle)
    if isinstance(handle, GroupResult):
        return SyncGroupResult(handle)
    assert isinstance(handle, WorkflowResult)
    return SyncWorkflowResult(handle)


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
        return [to_sync(member) for member in loaded.results]

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


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
