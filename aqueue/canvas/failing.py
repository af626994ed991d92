"""A workflow that will never run because a task before it failed: its tasks fail with that.

Every task of the workflow that was to follow gets the failing task's error as its own result
(the same type, the message naming the step that failed), so `get()` on a chain or on a
chord's callback raises it; then every `link_error` callback in the workflow (and those given)
is sent once, with the failing task's id first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

from .. import states
from ..drivers.base import ResultBackend
from ..interfaces import AppLike
from ..result_meta import ResultMeta
from ..signing import sign_result
from .chain import Chain
from .chord import Chord
from .group import Group
from .launch import launch
from .node import Workflow
from .signature import Signature

__all__ = ["errbacks_of", "fail_workflows"]


async def fail_workflows(
    app: AppLike,
    backend: ResultBackend | None,
    workflows: Iterable[Workflow[Any]],
    failure: ResultMeta,
    culprit: str,
    errbacks: Iterable[Workflow[Any]] = (),
) -> None:
    """Fail every task of `workflows` with `failure` (task `culprit`'s); send the errbacks."""
    workflows = list(workflows)
    if backend is not None:
        step = f"{failure.task}[{culprit}]"
        meta = dataclasses.replace(
            failure,
            exc_message=f"step {step} failed, so this task did not run: {failure.exc_message}",
        )
        payload = sign_result(app.conf, meta.encode())
        for workflow in workflows:
            for task_id in workflow.ids():
                await backend.store(task_id, states.FAILURE, payload, app.conf.result_expires)
    seen: set[str] = set()
    for errback in [*errbacks, *(e for w in workflows for e in errbacks_of(w))]:
        key = ",".join(errback.ids())
        if key not in seen:
            seen.add(key)
            await launch(app, errback, (culprit,), parent=culprit)


def errbacks_of(workflow: Workflow[Any]) -> Iterator[Workflow[Any]]:
    """Yield the `link_error` callbacks of every task in `workflow` (not of their callbacks)."""
    if isinstance(workflow, Signature):
        yield from workflow.options.get("link_error") or ()
        for link in workflow.options.get("link") or ():
            yield from errbacks_of(link)
    elif isinstance(workflow, Chain):
        for step in workflow.steps:
            yield from errbacks_of(step)
    elif isinstance(workflow, Group):
        for member in workflow.tasks:
            yield from errbacks_of(member)
    elif isinstance(workflow, Chord):
        for member in (*workflow.header, workflow.body):
            yield from errbacks_of(member)
