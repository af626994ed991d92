"""A workflow that will never run because a task before it failed: its tasks fail with that.

Every task of the workflow that was to follow gets the failing task's error as its own result
(the same type, the message naming the step that failed), so `get()` on a chain or on a
chord's callback raises it; then every `link_error` callback in the workflow (and those given)
is sent once, with the failing task's id first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .. import states
from ..drivers.base import ResultBackend
from ..interfaces import AppLike
from ..result_meta import ResultMeta
from ..signing import sign_result
from .node import Workflow, launch

__all__ = ["fail_workflows"]


async def fail_workflows(
    app: AppLike,
    backend: ResultBackend | None,
    workflows: Iterable[Workflow[Any]],
    failure: ResultMeta,
    culprit: str,
    errbacks: Iterable[Workflow[Any]] = (),
    headers: Mapping[str, Any] | None = None,
    once: str | None = None,
) -> None:
    """Fail every task of `workflows` with `failure` (task `culprit`'s); send the errbacks.

    `once`: the chord whose claimant fails them (see `launch`).
    """
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
                await backend.store(
                    task_id, states.FAILURE, payload, app.conf.result_expires, headers=headers
                )
    seen: set[str] = set()
    for errback in [*errbacks, *(e for w in workflows for e in w.errbacks())]:
        key = ",".join(errback.ids())
        if key not in seen:
            seen.add(key)
            await launch(app, errback, (culprit,), parent=culprit, headers=headers, once=once)
