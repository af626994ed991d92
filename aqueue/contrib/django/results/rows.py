"""The columns of a `TaskResult` row, read from the payload a worker stores.

The payload is what aqueue reads back; the columns are derived for people, best effort: a
payload that does not decode as a result leaves them empty. A signed payload is shown
unverified here; `get()` always verifies it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from .... import states
from ....result_meta import ResultMeta
from ....signing import payload_of

__all__ = ["Row", "describe"]


@dataclass(frozen=True, slots=True)
class Row:
    """One store: what the `TaskResult` row gets."""

    task_id: str
    state: str
    payload: bytes
    ttl: float
    task_name: str = ""
    result: str | None = None
    traceback: str | None = None
    retries: int = 0
    worker: str | None = None
    date_done: float | None = None


def describe(
    task_id: str, state: str, payload: bytes, ttl: float, worker: str | None = None
) -> Row:
    """Return the row for a store, its human columns decoded from `payload` if it can be."""
    try:
        meta = ResultMeta.decode(payload_of(payload))
    except Exception:  # not ours to judge here: `get()` reports it
        return Row(task_id, state, payload, ttl, worker=worker)
    return Row(
        task_id,
        state,
        payload,
        ttl,
        task_name=meta.task[:255] if isinstance(meta.task, str) else "",
        result=_result_text(state, meta),
        traceback=meta.traceback if isinstance(meta.traceback, str) else None,
        retries=meta.retries if isinstance(meta.retries, int) and meta.retries >= 0 else 0,
        worker=worker,
        date_done=meta.date_done if isinstance(meta.date_done, int | float) else None,
    )


def _result_text(state: str, meta: ResultMeta) -> str | None:
    if state == states.SUCCESS:
        return json.dumps(meta.result, default=_fallback, ensure_ascii=False)
    if state in (states.FAILURE, states.REVOKED, states.RETRY) and meta.exc_type:
        error = {"exc_type": meta.exc_type, "exc_message": meta.exc_message}
        return json.dumps(error, default=_fallback, ensure_ascii=False)
    return None


def _fallback(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)
