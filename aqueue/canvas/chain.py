"""`Chain`: steps run one after another, each getting the result of the one before.

`chain(a, b, c)` or `a | b | c`. Sent, only the first step goes out; the worker that finishes a
step stores its result, then sends the next with that result first (unless it is immutable),
then acknowledges its own message. A step that fails stops the chain: every later task is
stored as failed with the failing step's error, naming the step, so `get()` raises it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar, overload

from ..interfaces import AppLike
from .node import Plan, Sendable, Workflow
from .workflow_result import SyncWorkflowResult, WorkflowResult

__all__ = ["Chain", "chain"]

R = TypeVar("R")
T = TypeVar("T")


class Chain(Sendable[R, WorkflowResult[R], SyncWorkflowResult[R]]):
    """Steps run in order; its result is its last step's."""

    def __init__(self, *steps: Workflow[Any], app: AppLike | None = None) -> None:
        flat: list[Workflow[Any]] = []
        for step in steps:
            if not isinstance(step, Workflow):
                raise TypeError(f"a chain takes signatures (add.s(...)), not {type(step).__name__}")
            flat.extend(step.steps if isinstance(step, Chain) else [step])
        if not flat:
            raise ValueError("a chain needs at least one step")
        super().__init__(app if app is not None else flat[0]._app)
        self.steps: tuple[Workflow[Any], ...] = tuple(flat)

    def __repr__(self) -> str:
        return " | ".join(repr(step) for step in self.steps)

    def frozen(self) -> Self:
        """Return a copy whose every step is frozen."""
        return type(self)(*(step.frozen() for step in self.steps), app=self._app)

    def to_data(self) -> dict[str, Any]:
        """Return the chain as plain data."""
        return {"t": "chain", "steps": [step.to_data() for step in self.steps]}

    def ids(self) -> list[str]:
        """Return every task id of every step."""
        return [task_id for step in self.steps for task_id in step.ids()]

    def handle(self, app: AppLike) -> WorkflowResult[R]:
        """Return the chain's result: its last step's, revoking every step."""
        parts = [step.handle(app) for step in self.steps]
        return WorkflowResult(app, parts[-1], self.ids(), parts)

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Self:
        """Return a copy whose first step takes `args` first."""
        first, *rest = self.steps
        return type(self)(first.clone(args, kwargs), *rest, app=self._app)

    def __or__(self, other: Workflow[T]) -> Chain[T]:
        """`chain | step`: a longer chain."""
        return Chain(*self.steps, other, app=self._app)

    def with_options(self, options: Mapping[str, Any]) -> Chain[R]:
        """Return a copy: `link_error` on every step, `link` and `task_id` on the last."""
        rest = dict(options)
        last_options: dict[str, Any] = {
            name: rest.pop(name) for name in ("link", "task_id") if name in rest
        }
        errback = rest.pop("link_error", None)
        steps = list(self.steps)
        if errback:  # frozen once: one errback for the chain, however many steps it is on
            shared = [errback] if isinstance(errback, Workflow) else list(errback)
            shared = [each.frozen() for each in shared]
            steps = [step.with_options({"link_error": shared}) for step in steps]
        if rest:
            steps[0] = steps[0].with_options(rest)
        if last_options:
            steps[-1] = steps[-1].with_options(last_options)
        return Chain(*steps, app=self._app)

    def plan(self, plan: Plan, prev: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Plan the first step, the rest riding on it as what follows."""
        first, *rest = self.steps
        if not rest:
            first.plan(plan, prev, kwargs)
            return
        following: Workflow[Any] = rest[0] if len(rest) == 1 else Chain(*rest)
        first.plan_then(plan, following, prev, kwargs)

    def plan_then(
        self,
        plan: Plan,
        following: Workflow[Any],
        prev: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        """Plan a longer chain."""
        Chain(*self.steps, following, app=self._app).plan(plan, prev, kwargs)

    def reference(self) -> Any:
        """Return its last step's reference."""
        return self.steps[-1].reference()

    def with_chord(self, info: dict[str, Any]) -> Workflow[Any]:
        """Return it with its last step recording itself in chord `info`."""
        *head, last = self.steps
        return Chain(*head, last.with_chord(info), app=self._app)

    def errbacks(self) -> Iterator[Workflow[Any]]:
        """Yield every step's `link_error` callbacks."""
        for step in self.steps:
            yield from step.errbacks()


@overload
def chain(a: Workflow[R], /) -> Chain[R]: ...
@overload
def chain(a: Workflow[Any], b: Workflow[R], /) -> Chain[R]: ...
@overload
def chain(a: Workflow[Any], b: Workflow[Any], c: Workflow[R], /) -> Chain[R]: ...
@overload
def chain(a: Workflow[Any], b: Workflow[Any], c: Workflow[Any], d: Workflow[R], /) -> Chain[R]: ...
@overload
def chain(*steps: Workflow[Any]) -> Chain[Any]: ...
def chain(*steps: Workflow[Any]) -> Chain[Any]:
    """Chain steps: each gets the result of the one before; typed as its last step's."""
    return Chain(*steps)
