"""The chord counter, worker side: record a header task, and act if this worker claims the chord.

After a header task's result is stored (and before its message is acknowledged), its worker
records the task id with `ResultBackend.chord_part`. The store counts each id once, so a
header task redelivered after a worker died counts once however often it runs. In the same
atomic step, the first recorder to find the chord complete (or failed) claims it: it alone is
told "fire" (or "fail"). It reads the header's results in order (`fetch_many`) and sends the
callback with the list first, or fails the callback with the header's error; then it calls
`chord_done`, after which nobody is told to act again.

Exactly once, through every crash:

- the claimant dies before sending: its header message was not acknowledged; redelivered, it
  records again, is told "fire" again (it is the claimant) and sends;
- it dies after sending and before `chord_done` (or its message is redelivered while it still
  runs): it sends again. Every message the claimant sends carries a token of its own (the
  `once` entry of its `canvas` header), and a worker runs a message only if its token is the
  first checked for its task id (`ResultBackend.chord_run`, atomic; `continuation.admitted`):
  the first copy runs, a later copy is dropped, even when both start at the same moment. A
  copy redelivered (its worker died while running it) keeps its token, and runs again, as any
  task whose worker died does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .. import states
from ..drivers.base import ResultBackend
from ..interfaces import AppLike
from ..result_meta import ResultMeta
from ..signing import open_result
from .data import from_data
from .failing import fail_workflows
from .group_result import GroupResult
from .node import launch

__all__ = ["record"]

logger = logging.getLogger("aqueue.worker")


async def record(
    app: AppLike,
    backend: ResultBackend,
    task_id: str,
    chord: dict[str, Any],
    failure: ResultMeta | None,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Record header task `task_id` of `chord` (`failure`: it failed); act if told to."""
    chord_id, size = chord["id"], chord["size"]
    ttl = app.conf.result_expires
    if not backend.counts_chords:  # a worker on another store than its producer
        logger.error(
            "Chord %s: this worker's result store cannot count chords; header task %s is not "
            "counted (give workers the result store their producers use)",
            chord_id,
            task_id,
        )
        return
    step = await backend.chord_part(chord_id, task_id, size, ttl, ok=failure is None)
    if step == "wait":
        return
    body = from_data(chord["body"])
    culprit = task_id
    if failure is None:  # "fire", or "fail" for another header task's failure: find it
        values, failed = await _header_values(app, backend, chord_id)
        if failed is None:
            await launch(app, body, (values,), parent=chord_id, headers=headers, once=chord_id)
        else:
            culprit, failure = failed
    if failure is not None:
        await fail_workflows(app, backend, [body], failure, culprit, (), headers, chord_id)
    await backend.chord_done(chord_id, ttl)


async def _header_values(
    app: AppLike, backend: ResultBackend, chord_id: str
) -> tuple[list[Any], tuple[str, ResultMeta] | None]:
    """Return the header's values in order, or the first header task that did not succeed."""
    header: GroupResult[Any] = await GroupResult(chord_id, None, app).load()
    ids = [member.id for member in header.results]
    values: list[Any] = []
    for task_id, stored in zip(ids, await backend.fetch_many(ids), strict=True):
        if stored is None:
            error = ResultMeta(
                task="?", exc_type="LookupError", exc_message="its result is not stored"
            )
            return values, (task_id, error)
        meta = ResultMeta.decode(open_result(app.conf, stored.payload))
        if stored.state != states.SUCCESS:
            return values, (task_id, _failure(meta))
        values.append(meta.result)
    return values, None


def _failure(meta: ResultMeta) -> ResultMeta:
    if meta.exc_type is None:
        return ResultMeta(task=meta.task, exc_type="TaskError", exc_message="did not succeed")
    return meta
