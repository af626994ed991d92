"""The base of every workflow: a tree of signatures that is data, frozen, then sent.

A workflow (a `Signature`, a `Chain`, a `Group` or a `Chord`) is built in the caller's process,
then *frozen*: every task in it gets its id, once, before anything is sent. The frozen tree
travels in messages as plain data (`to_data`, read back by `aqueue.canvas.data`), so every id
a worker sends a continuation with was fixed by the caller: a redelivered step sends the same
ids again, never a second, divergent workflow.

Sending walks the tree once into a `Plan` (each kind of workflow plans itself): the messages
to send, each task with its arguments (the previous result first, unless immutable) and a
`canvas` header carrying its callbacks and its chord; and the groups to save. Groups are saved
first, then every message goes out in one publish.
"""

from __future__ import annotations

import abc
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, Generic, Self, TypeVar, Unpack

from .. import current
from ..exceptions import ConfigurationError
from ..interfaces import AppLike
from ..options import SendOptions
from ..sending import Call, send_calls
from ..sync import block
from .group_result import save_group, to_sync

__all__ = [
    "CHORD_BACKENDS",
    "Plan",
    "Sendable",
    "SignatureOptions",
    "Workflow",
    "WorkflowSync",
    "launch",
]

R = TypeVar("R")
H = TypeVar("H")
S = TypeVar("S")
T = TypeVar("T")

#: What the chord refusal names: the result stores that count chords.
CHORD_BACKENDS = "redis://, sqlite://, django-db:// or memory://"


class SignatureOptions(SendOptions, total=False):
    """A workflow's call options: `apply_async`'s, and its success and failure callbacks.

    On a chain, `link_error` goes to every task, `link` to the last, `task_id` names the last
    task, and the others go to the first step; on a group, to every member; on a chord,
    `link` and `link_error` to the callback and the others to the header.
    """

    link: Workflow[Any] | Sequence[Workflow[Any]] | None
    link_error: Workflow[Any] | Sequence[Workflow[Any]] | None


class Plan:
    """What sending a workflow takes: its messages, and the groups to save first."""

    def __init__(
        self,
        app: AppLike,
        parent: str | None,
        headers: Mapping[str, Any] | None = None,
        once: str | None = None,
    ) -> None:
        self.app = app
        #: The task whose worker sends this (a continuation), else None (the caller).
        self.parent = parent
        #: The chord whose claimant sends this (its callback): each message then carries a
        #: token of its own, and runs only if its copy claims the run (`ResultBackend.chord_run`).
        self.once = once
        #: Headers every message carries (a continuation's, inherited from its parent).
        self.headers = dict(headers or {})
        self.calls: list[Call] = []
        self.groups: list[tuple[str, list[Any], list[str]]] = []
        self.chords = False

    async def send(self) -> None:
        """Save the groups, then publish every message at once."""
        if self.chords:
            backend = await self.app.result_backend()
            if backend is None or not backend.counts_chords:
                where = "no result store" if backend is None else backend.url.split("://")[0]
                raise ConfigurationError(
                    f"a chord needs a result store that counts its header ({CHORD_BACKENDS}); "
                    f"this app has {where if backend is None else where + '://'}"
                )
        for group_id, members, ids in self.groups:
            await save_group(self.app, group_id, members, ids)
        await send_calls(self.app, self.calls)


async def launch(
    app: AppLike,
    workflow: Workflow[Any],
    prev: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    parent: str | None = None,
    headers: Mapping[str, Any] | None = None,
    once: str | None = None,
) -> None:
    """Send a frozen workflow, `prev` put before its first tasks' arguments.

    `once`: the chord whose claimant sends it; each copy of a message claims its run.
    """
    plan = Plan(app, parent, headers, once)
    workflow.plan(plan, tuple(prev), kwargs or {})
    await plan.send()


class Workflow(abc.ABC, Generic[R]):
    """A signature, chain, group or chord: send it with `await workflow.delay()`."""

    def __init__(self, app: AppLike | None) -> None:
        self._app = app

    @property
    def app(self) -> AppLike:
        """The app it is sent through: its tasks' app, else the current one."""
        return self._app if self._app is not None else current.current_app()

    @abc.abstractmethod
    def frozen(self) -> Self:
        """Return a copy whose every task has its id (ids already given are kept)."""

    @abc.abstractmethod
    def to_data(self) -> dict[str, Any]:
        """Return the workflow as plain data (what messages carry)."""

    @abc.abstractmethod
    def ids(self) -> list[str]:
        """Return every task id in the (frozen) workflow."""

    @abc.abstractmethod
    def handle(self, app: AppLike) -> Any:
        """Return the result handle of the (frozen) workflow."""

    @abc.abstractmethod
    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Self:
        """Return a copy, with `args` put before the first task's arguments (a partial)."""

    @abc.abstractmethod
    def plan(self, plan: Plan, prev: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Add what sending the (frozen) workflow takes to `plan`."""

    @abc.abstractmethod
    def plan_then(
        self,
        plan: Plan,
        following: Workflow[Any],
        prev: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        """Plan this workflow with `following` to run after it (a chain's step)."""

    @abc.abstractmethod
    def reference(self) -> Any:
        """Return what a group record keeps of it: its result's id, or a nested group's."""

    @abc.abstractmethod
    def with_chord(self, info: dict[str, Any]) -> Workflow[Any]:
        """Return it with its last task recording itself in chord `info` once finished."""

    @abc.abstractmethod
    def errbacks(self) -> Iterator[Workflow[Any]]:
        """Yield the `link_error` callbacks of its tasks (not of their callbacks)."""

    @abc.abstractmethod
    def with_options(self, options: Mapping[str, Any]) -> Workflow[R]:
        """Return a copy with call options applied (`SignatureOptions` says where they go)."""

    async def _send(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> Any:
        app = self.app
        if app.conf.task_always_eager:
            return await self._eager(app, args, kwargs or {})
        frozen = self.frozen()
        await launch(app, frozen, tuple(args), kwargs or {})
        return frozen.handle(app)

    async def _eager(self, app: AppLike, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Run it here under `task_always_eager`: only a plain signature can be."""
        raise ConfigurationError(
            "workflows (chains, groups, chords, callbacks) are not run eagerly: unset "
            "task_always_eager, or test them with a worker (aqueue.testing.InProcessWorker)"
        )


class Sendable(Workflow[R], Generic[R, H, S]):
    """A workflow that sends itself: `delay` and `apply_async` give `H`, `.sync`'s give `S`.

    The base of `Signature`, `Chain`, `Group` and `Chord`, each naming its own result types.
    """

    async def delay(self, *args: Any, **kwargs: Any) -> H:
        """Send it; `args` go before its first tasks' own arguments, `kwargs` merge in."""
        handle: H = await self._send(args, kwargs)
        return handle

    async def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SignatureOptions],
    ) -> H:
        """Send it, `args` and `kwargs` as in `delay`, with call options (`SignatureOptions`)."""
        target = self.with_options(options) if options else self
        handle: H = await target._send(args or (), kwargs)
        return handle

    @property
    def sync(self) -> WorkflowSync[S]:
        """`delay` and `apply_async` for sync code: `add.s(2, 2).sync.delay().get()`."""
        return WorkflowSync(self)


class WorkflowSync(Generic[H]):
    """`workflow.sync`: send it from sync code; the result is the sync view of its handle."""

    def __init__(self, workflow: Workflow[Any]) -> None:
        self.workflow = workflow

    def _run(self, coroutine: Coroutine[Any, Any, T], method: str) -> T:
        call = f"workflow.sync.{method}()"
        return block(self.workflow.app, coroutine, call, f"workflow.{method}(...)")

    def delay(self, *args: Any, **kwargs: Any) -> H:
        """Send it (`delay`); return the sync view of its result."""
        sent: H = to_sync(self._run(self.workflow._send(args, kwargs), "delay"))
        return sent

    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None
    ) -> H:
        """Send it (`apply_async`); return the sync view of its result."""
        coroutine = self.workflow._send(args or (), kwargs)
        sent: H = to_sync(self._run(coroutine, "apply_async"))
        return sent
