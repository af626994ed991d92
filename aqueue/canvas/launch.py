"""Sending a frozen workflow: the caller's `delay()`, and a worker's continuation.

The tree is walked once into a plan: the messages to send (each task with its arguments, the
previous result first unless immutable, and a `canvas` header carrying its callbacks and its
chord), and the groups to save. Groups are saved first, then every message goes out in one
publish. A chain sends its first step only, the rest riding on it as its `link`; a group in
the middle of a chain, with what follows it, is a chord (as in Celery).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..exceptions import ConfigurationError
from ..interfaces import AppLike
from ..options import ManySendOptions
from ..sending import Call, send_calls
from .chain import Chain
from .chord import Chord
from .group import Group
from .group_result import save_group
from .node import Workflow
from .signature import Signature

__all__ = ["CHORD_BACKENDS", "launch", "reference", "terminal_error"]

#: What the chord refusal names: the result stores that count chords.
CHORD_BACKENDS = "redis://, sqlite:// or memory://"

_SEND_OPTIONS = frozenset(ManySendOptions.__optional_keys__)


async def launch(
    app: AppLike,
    workflow: Workflow[Any],
    prev: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    parent: str | None = None,
) -> None:
    """Send a frozen workflow, `prev` put before its first tasks' arguments."""
    plan = _Plan(app, parent)
    plan.add(workflow, tuple(prev), kwargs or {})
    await plan.send()


def reference(workflow: Workflow[Any]) -> Any:
    """Return what a group record keeps of a member: its result's id, or a nested group."""
    if isinstance(workflow, Signature):
        return workflow.id
    if isinstance(workflow, Chain):
        return reference(workflow.steps[-1])
    if isinstance(workflow, Chord):
        return reference(workflow.body)
    assert isinstance(workflow, Group)
    return {"id": workflow.id, "members": [reference(member) for member in workflow.tasks]}


def terminal_error(workflow: Workflow[Any]) -> str | None:
    """Why `workflow` cannot be a chord header member (it must end in one task), or None."""
    if isinstance(workflow, Signature):
        return None
    if isinstance(workflow, Chain):
        return terminal_error(workflow.steps[-1])
    if isinstance(workflow, Chord):
        return terminal_error(workflow.body)
    return f"a chord's header member must end in one task, not a group ({workflow!r})"


class _Plan:
    def __init__(self, app: AppLike, parent: str | None) -> None:
        self.app = app
        self.parent = parent
        self.calls: list[Call] = []
        self.groups: list[tuple[str, list[Any], list[str]]] = []
        self.chords = False

    def add(
        self, workflow: Workflow[Any], prev: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> None:
        if isinstance(workflow, Signature):
            self._signature(workflow, prev, kwargs)
        elif isinstance(workflow, Chain):
            self._chain(workflow, prev, kwargs)
        elif isinstance(workflow, Group):
            assert workflow.id is not None
            members = [reference(member) for member in workflow.tasks]
            self.groups.append((workflow.id, members, workflow.ids()))
            for member in workflow.tasks:
                self.add(member, prev, kwargs)
        elif isinstance(workflow, Chord):
            self._chord(workflow, prev, kwargs)
        else:
            raise TypeError(f"cannot send {workflow!r}")

    def _chain(self, chain: Chain[Any], prev: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        first, *rest = chain.steps
        if not rest:
            self.add(first, prev, kwargs)
            return
        following: Workflow[Any] = rest[0] if len(rest) == 1 else Chain(*rest)
        if isinstance(first, Signature):
            self.add(first.link(following), prev, kwargs)
        elif isinstance(first, Group):
            self.add(Chord(first.tasks, following, group_id=first.id), prev, kwargs)
        else:
            assert isinstance(first, Chord)
            body: Chain[Any] = Chain(first.body, following)
            self.add(Chord(first.header, body, group_id=first.id), prev, kwargs)

    def _chord(self, chord: Chord[Any], prev: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        assert chord.id is not None
        self.chords = True
        if not chord.header:
            self.groups.append((chord.id, [], []))
            self.add(chord.body, ([],), {})
            return
        info = {"id": chord.id, "size": len(chord.header), "body": chord.body.to_data()}
        header = [_with_chord(member, info) for member in chord.header]
        self.groups.append(
            (chord.id, [reference(member) for member in header], Group(header).ids())
        )
        for member in header:
            self.add(member, prev, kwargs)

    def _signature(
        self, signature: Signature[Any], prev: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> None:
        assert signature.id is not None
        if signature.immutable:
            args, merged = signature.args, signature.kwargs
        else:
            args, merged = (*prev, *signature.args), {**signature.kwargs, **kwargs}
        options: dict[str, Any] = {
            name: value
            for name, value in signature.options.items()
            if name in _SEND_OPTIONS and value is not None
        }
        canvas: dict[str, Any] = {}
        for name in ("link", "link_error"):
            if signature.options.get(name):
                canvas[name] = [link.to_data() for link in signature.options[name]]
        if signature.chord is not None:
            task = self.app.tasks.get(signature.task)
            if task is not None and task.ignore_result:
                raise ConfigurationError(
                    f"task {signature.task} ignores its results, so it cannot be in a chord's "
                    "header (the callback gets the header's results)"
                )
            canvas["chord"] = signature.chord
        if self.parent is not None:
            canvas["parent"] = self.parent
        if canvas:
            options["headers"] = {**(options.get("headers") or {}), "canvas": canvas}
        call_options: ManySendOptions = options  # type: ignore[assignment]
        self.calls.append(Call(signature.task, args, merged, signature.id, call_options))

    async def send(self) -> None:
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


def _with_chord(member: Workflow[Any], info: dict[str, Any]) -> Workflow[Any]:
    """Return `member` whose last task records itself in chord `info` when it finishes."""
    problem = terminal_error(member)
    if problem is not None:
        raise ValueError(problem)
    if isinstance(member, Signature):
        return member._copy(chord=info)
    if isinstance(member, Chain):
        *head, last = member.steps
        return Chain(*head, _with_chord(last, info))
    assert isinstance(member, Chord)
    return Chord(member.header, _with_chord(member.body, info), group_id=member.id)
