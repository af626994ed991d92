"""What a worker does after a task of a workflow finished: the next steps, the chord count.

Called with the outcome once it is stored and before the message is acknowledged, and again
if the message is redelivered after that (the outcome is read back from the store): every
action here is safe to repeat. Continuations carry ids fixed when the workflow was sent, so a
repeated send publishes the same task ids, and a worker drops a continuation whose result is
stored already (`Runner.check`). They inherit the message's other headers (`rpc://` routes
results by them to the caller that sent the workflow).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..drivers.base import ResultBackend
from ..interfaces import AppLike
from ..message import Envelope
from ..result_meta import ResultMeta
from . import counter
from .data import from_data
from .failing import fail_workflows
from .node import launch

__all__ = ["HEADER", "admitted", "after", "discarded", "inherited"]

#: The message header that carries a task's callbacks, its chord and its parent.
HEADER = "canvas"


def inherited(envelope: Envelope) -> dict[str, Any]:
    """Return the headers a continuation of `envelope` carries on: all but `canvas`."""
    return {key: value for key, value in envelope.headers.items() if key != HEADER}


async def admitted(app: AppLike, backend: ResultBackend | None, envelope: Envelope) -> bool:
    """Whether `envelope` may run: False for a second copy of a message a chord sent.

    A chord's claimant may send its callback twice (it died after sending, and its header
    message was redelivered); each copy carries a token, and only the copy whose token first
    claims the task id runs (`ResultBackend.chord_run`; see `aqueue.canvas.counter`).
    """
    canvas = envelope.headers.get(HEADER) if envelope.headers else None
    once = canvas.get("once") if isinstance(canvas, Mapping) else None
    if once is None or backend is None or not backend.counts_chords:
        return True
    ttl = app.conf.result_expires
    return await backend.chord_run(once["chord"], envelope.id, once["token"], ttl)


async def after(
    app: AppLike,
    backend: ResultBackend | None,
    envelope: Envelope,
    value: Any = None,
    failure: ResultMeta | None = None,
) -> None:
    """Send what follows `envelope`'s task (it returned `value`, or failed with `failure`)."""
    canvas: Mapping[str, Any] = envelope.headers[HEADER]
    headers = inherited(envelope)
    links = [from_data(data) for data in canvas.get("link") or ()]
    if failure is None:
        for link in links:
            await launch(app, link, (value,), parent=envelope.id, headers=headers)
    else:
        errbacks = [from_data(data) for data in canvas.get("link_error") or ()]
        await fail_workflows(app, backend, links, failure, envelope.id, errbacks, headers)
    chord = canvas.get("chord")
    if chord is not None and backend is not None:
        await counter.record(app, backend, envelope.id, chord, failure, headers)


async def discarded(
    app: AppLike,
    backend: ResultBackend | None,
    envelope: Envelope,
    revoked: ResultMeta,
    *,
    expired: bool = False,
) -> None:
    """Fail the chord of a task that was revoked or expired before it ran.

    An expired step fails what follows it too (with the expiry, naming the step), so `get()`
    on its chain raises instead of waiting for results that would never come. A revoked chain
    stops there: its later tasks were revoked with it (their results say so), or never sent.
    """
    if expired:
        await after(app, backend, envelope, None, revoked)
        return
    chord = envelope.headers[HEADER].get("chord")
    if chord is not None and backend is not None:
        await counter.record(app, backend, envelope.id, chord, revoked, inherited(envelope))
