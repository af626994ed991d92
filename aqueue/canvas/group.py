"""`Group`: tasks sent together, run in parallel; their results come back as one list, in order.

`group(add.s(1, 1), add.s(2, 2))`, `group([...])` or `group(gen)`. Sent, the group's member
ids are saved in the result store under the group's id (`app.GroupResult(id)` finds them
again), then every member goes out in one publish.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar, overload

from ..interfaces import AppLike
from ..message import new_id
from .chord import Chord
from .group_result import GroupResult, SyncGroupResult
from .node import Plan, Sendable, Workflow

__all__ = ["Group", "group"]

R = TypeVar("R")
T = TypeVar("T")


class Group(Sendable[list[R], GroupResult[R], SyncGroupResult[R]]):
    """Tasks run in parallel; the result is the list of their results, in order."""

    def __init__(
        self,
        tasks: Iterable[Workflow[R]],
        *,
        group_id: str | None = None,
        app: AppLike | None = None,
    ) -> None:
        self.tasks: tuple[Workflow[R], ...] = tuple(tasks)
        for member in self.tasks:
            if not isinstance(member, Workflow):
                raise TypeError(f"a group takes signatures (add.s(...)), not {member!r}")
        first = self.tasks[0]._app if self.tasks else None
        super().__init__(app if app is not None else first)
        self.id = group_id

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(member) for member in self.tasks)}])"

    def __len__(self) -> int:
        return len(self.tasks)

    def frozen(self) -> Self:
        """Return a copy with its id and every member's ids given."""
        return type(self)(
            (member.frozen() for member in self.tasks), group_id=self.id or new_id(), app=self._app
        )

    def to_data(self) -> dict[str, Any]:
        """Return the group as plain data."""
        return {"t": "group", "id": self.id, "tasks": [member.to_data() for member in self.tasks]}

    def ids(self) -> list[str]:
        """Return every task id of every member."""
        return [task_id for member in self.tasks for task_id in member.ids()]

    def handle(self, app: AppLike) -> GroupResult[R]:
        """Return the group's result."""
        assert self.id is not None, "freeze the group first"
        return GroupResult(self.id, [member.handle(app) for member in self.tasks], app, self.ids())

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Self:
        """Return a copy whose members take `args` first."""
        return type(self)(
            (member.clone(args, kwargs) for member in self.tasks), group_id=self.id, app=self._app
        )

    def __or__(self, callback: Workflow[T]) -> Chord[T]:
        """`group | callback`: a chord."""
        return Chord(self.tasks, callback, group_id=self.id, app=self._app)

    def with_options(self, options: Mapping[str, Any]) -> Group[R]:
        """Return a copy whose every member has these options (`task_id` names one task)."""
        if "task_id" in options:
            raise TypeError("task_id names one task; a group's members each have their own")
        members = (member.with_options(options) for member in self.tasks)
        return Group(members, group_id=self.id, app=self._app)

    def plan(self, plan: Plan, prev: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Plan saving the group's members, and every member."""
        assert self.id is not None, "freeze the group first"
        members = [member.reference() for member in self.tasks]
        plan.groups.append((self.id, members, self.ids()))
        for member in self.tasks:
            member.plan(plan, prev, kwargs)

    def plan_then(
        self,
        plan: Plan,
        following: Workflow[Any],
        prev: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        """Plan the group and `following` as a chord (as Celery does)."""
        Chord(self.tasks, following, group_id=self.id, app=self._app).plan(plan, prev, kwargs)

    def reference(self) -> Any:
        """Return the group's record: its id and its members'."""
        return {"id": self.id, "members": [member.reference() for member in self.tasks]}

    def with_chord(self, info: dict[str, Any]) -> Workflow[Any]:
        """Refuse: a chord's header member must end in one task."""
        raise ValueError(f"a chord's header member must end in one task, not a group ({self!r})")

    def errbacks(self) -> Iterator[Workflow[Any]]:
        """Yield every member's `link_error` callbacks."""
        for member in self.tasks:
            yield from member.errbacks()


@overload
def group(tasks: Iterable[Workflow[R]], /) -> Group[R]: ...
@overload
def group(*tasks: Workflow[R]) -> Group[R]: ...
def group(*tasks: Any) -> Group[Any]:
    """Group signatures: `group(a, b)`, `group([a, b])` or `group(sig for ...)`."""
    if len(tasks) == 1 and not isinstance(tasks[0], Workflow):
        return Group(tasks[0])
    return Group(tasks)
