"""What a worker does after a task of a workflow finished: the next steps, the chord count.

Called with the outcome once it is stored and before the message is acknowledged, and again
if the message is redelivered after that (the outcome is read back from the store): every
action here is safe to repeat. Continuations carry ids fixed when the workflow was sent, so a
repeated send publishes the same task ids, and a worker drops a continuation whose result is
stored already (`Runner.check`).
"""

from __future__ import annotations

from typing import Any

from ..drivers.base import ResultBackend
from ..interfaces import AppLike
from ..result_meta import ResultMeta
from . import counter
from .data import from_data
from .failing import fail_workflows
from .node import launch

__all__ = ["HEADER", "after", "discarded"]

#: The message header that carries a task's callbacks, its chord and its parent.
HEADER = "canvas"


async def after(
    app: AppLike,
    backend: ResultBackend | None,
    task_id: str,
    canvas: dict[str, Any],
    value: Any = None,
    failure: ResultMeta | None = None,
) -> None:
    """Send what follows task `task_id` (it succeeded with `value`, or failed with `failure`)."""
    links = [from_data(data) for data in canvas.get("link") or ()]
    if failure is None:
        for link in links:
            await launch(app, link, (value,), parent=task_id)
    else:
        errbacks = [from_data(data) for data in canvas.get("link_error") or ()]
        await fail_workflows(app, backend, links, failure, task_id, errbacks)
    chord = canvas.get("chord")
    if chord is not None and backend is not None:
        await counter.record(app, backend, task_id, chord, failure)


async def discarded(
    app: AppLike,
    backend: ResultBackend | None,
    task_id: str,
    canvas: dict[str, Any],
    revoked: ResultMeta,
) -> None:
    """Fail the chord of a task that was revoked or expired before it ran.

    (A revoked chain stops there: its later tasks were revoked with it, or never get sent.)
    """
    chord = canvas.get("chord")
    if chord is not None and backend is not None:
        await counter.record(app, backend, task_id, chord, revoked)
