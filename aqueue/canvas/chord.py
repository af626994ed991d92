"""`Chord`: a group (the header) whose list of results goes to one callback, run exactly once.

`chord(header, callback)` or `group(...) | callback`. Each header task, once its result is
stored, records its id in the chord's set in the result store, atomically
(`ResultBackend.chord_part`: one Lua call on Redis, one transaction on SQLite). The first
worker to find every id recorded claims the chord in that step, reads the header's results,
in order, and sends the callback with the list first; no task polls. A copy of the callback
sent again after a crash does not run (`aqueue.canvas.counter` says how). A failing header
task fails the chord: the callback's result becomes that error and its `link_error`
callbacks run. Only a result store that counts chords can carry one (`counts_chords`);
sending one elsewhere is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar

from ..exceptions import ConfigurationError
from ..interfaces import AppLike
from ..message import new_id
from .chain import Chain
from .group_result import GroupResult
from .node import Plan, Sendable, Workflow
from .workflow_result import SyncWorkflowResult, WorkflowResult

__all__ = ["Chord", "chord"]

R = TypeVar("R")
T = TypeVar("T")


class Chord(Sendable[R, WorkflowResult[R], SyncWorkflowResult[R]]):
    """A header of tasks and a callback that gets their results as one list."""

    def __init__(
        self,
        header: Iterable[Workflow[Any]],
        body: Workflow[R],
        *,
        group_id: str | None = None,
        app: AppLike | None = None,
    ) -> None:
        self.header: tuple[Workflow[Any], ...] = tuple(header)
        for member in (*self.header, body):
            if not isinstance(member, Workflow):
                raise TypeError(f"a chord takes signatures (add.s(...)), not {member!r}")
        super().__init__(app if app is not None else body._app)
        self.body = body
        #: The id of the header, as a group (`app.GroupResult(id)`), and of the chord's count.
        self.id = group_id

    def __repr__(self) -> str:
        return f"chord([{', '.join(repr(m) for m in self.header)}], {self.body!r})"

    def frozen(self) -> Self:
        """Return a copy with every id given."""
        return type(self)(
            (member.frozen() for member in self.header),
            self.body.frozen(),
            group_id=self.id or new_id(),
            app=self._app,
        )

    def to_data(self) -> dict[str, Any]:
        """Return the chord as plain data."""
        return {
            "t": "chord",
            "id": self.id,
            "header": [member.to_data() for member in self.header],
            "body": self.body.to_data(),
        }

    def ids(self) -> list[str]:
        """Return every task id of the header and of the callback."""
        return [task_id for member in (*self.header, self.body) for task_id in member.ids()]

    def handle(self, app: AppLike) -> WorkflowResult[R]:
        """Return the chord's result: the callback's (`results`: the header's, the callback's)."""
        assert self.id is not None, "freeze the chord first"
        header: GroupResult[Any] = GroupResult(
            self.id, [member.handle(app) for member in self.header], app
        )
        body = self.body.handle(app)
        return WorkflowResult(app, body, self.ids(), [header, body])

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Self:
        """Return a copy whose header tasks take `args` first."""
        return type(self)(
            (member.clone(args, kwargs) for member in self.header),
            self.body,
            group_id=self.id,
            app=self._app,
        )

    def __or__(self, other: Workflow[T]) -> Chain[T]:
        """`chord | step`: a chain (the step gets the callback's result)."""
        return Chain(self, other)

    def with_options(self, options: Mapping[str, Any]) -> Chord[R]:
        """Return a copy: callbacks (and `task_id`) on the callback, the rest on the header."""
        rest = dict(options)
        body_options: dict[str, Any] = {
            n: rest.pop(n) for n in ("link", "link_error", "task_id") if n in rest
        }
        header = [member.with_options(rest) for member in self.header] if rest else self.header
        body = self.body.with_options(body_options) if body_options else self.body
        return Chord(header, body, group_id=self.id, app=self._app)

    def plan(self, plan: Plan, prev: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Plan the header, each member's last task carrying the chord (its id, size, body)."""
        assert self.id is not None, "freeze the chord first"
        plan.chords = True
        if not self.header:
            plan.groups.append((self.id, [], []))
            self.body.plan(plan, ([],), {})
            return
        info = {"id": self.id, "size": len(self.header), "body": self.body.to_data()}
        header = [member.with_chord(info) for member in self.header]
        ids = [task_id for member in header for task_id in member.ids()]
        if len(set(ids)) != len(ids):  # counted once per id, the chord would never complete
            twice = sorted({task_id for task_id in ids if ids.count(task_id) > 1})
            raise ConfigurationError(
                f"a chord's header gives the task id {twice[0]!r} to more than one task; "
                "each header task needs an id of its own (drop task_id, or make them differ)"
            )
        plan.groups.append((self.id, [member.reference() for member in header], ids))
        for member in header:
            member.plan(plan, prev, kwargs)

    def plan_then(
        self,
        plan: Plan,
        following: Workflow[Any],
        prev: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        """Plan the chord with `following` after its callback."""
        body: Chain[Any] = Chain(self.body, following)
        Chord(self.header, body, group_id=self.id, app=self._app).plan(plan, prev, kwargs)

    def reference(self) -> Any:
        """Return the callback's reference."""
        return self.body.reference()

    def with_chord(self, info: dict[str, Any]) -> Workflow[Any]:
        """Return it with its callback recording itself in chord `info`."""
        return Chord(self.header, self.body.with_chord(info), group_id=self.id, app=self._app)

    def errbacks(self) -> Iterator[Workflow[Any]]:
        """Yield the `link_error` callbacks of the header and of the callback."""
        for member in (*self.header, self.body):
            yield from member.errbacks()


def chord(header: Iterable[Workflow[Any]], callback: Workflow[R]) -> Chord[R]:
    """Run `header` (a group, or any iterable of signatures), then `callback` with its results."""
    group_id = getattr(header, "id", None)
    members = getattr(header, "tasks", header)
    return Chord(members, callback, group_id=group_id)
