"""LISTEN/NOTIFY on PostgreSQL: the `django-db` store's waiters sleep until a worker commits.

A worker's batch of stores commits with `pg_notify(CHANNEL, "id,id,...")` for the tasks that
reached a ready state, in the same transaction, so a notification never precedes the row. A
waiting process keeps ONE extra connection (psycopg 3, async, autocommit) that LISTENs; its
reader wakes on each notification and looks up only the ids named in it. Every `MAX_WAIT`
seconds without one it looks up everything awaited (a safety net); if the connection breaks it
is dropped, and the reader connects again and looks up everything (stores may have committed
meanwhile), retrying with the poll's backoff while the server is away.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Mapping
from typing import Any

import anyio

from ....drivers.waiting import MAX_POLL, MIN_POLL, POLL_FRACTION
from ....exceptions import BrokerError
from ....urls import redact_text

__all__ = ["CHANNEL", "MAX_WAIT", "Listener", "notify_chunks"]

logger = logging.getLogger("aqueue.contrib.django")

CHANNEL = "aqueue_results"
#: The longest a reader waits for a notification before it looks anyway (a safety net).
MAX_WAIT = 30.0
#: PostgreSQL refuses a notification payload of 8000 bytes or more.
_MAX_PAYLOAD = 7900


def notify_chunks(task_ids: Collection[str]) -> list[str]:
    """Split ready task ids into notification payloads ("id,id,...") under the size limit."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for task_id in task_ids:
        length = len(task_id.encode()) + 1
        if current and size + length > _MAX_PAYLOAD:
            chunks.append(",".join(current))
            current, size = [], 0
        current.append(task_id)
        size += length
    if current:
        chunks.append(",".join(current))
    return chunks


def connection_params(django_params: Mapping[str, Any]) -> dict[str, Any]:
    """Keep libpq's parameters of Django's `get_connection_params()` (not its adapters)."""
    dropped = {"context", "cursor_factory", "prepare_threshold"}
    return {key: value for key, value in django_params.items() if key not in dropped}


class Listener:
    """One LISTENing connection, opened on first `prepare`, read by one reader at a time."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = dict(params)  # libpq's, from Django's settings
        self._conn: Any = None
        self._lock = anyio.Lock()
        self._closed = False

    async def prepare(self) -> None:
        """Connect and LISTEN, once (again after a failure; never after `close`)."""
        if self._conn is not None:
            return
        async with self._lock:
            if self._closed:
                raise BrokerError("the django-db result store is closed")
            if self._conn is None:
                import psycopg

                conn = await psycopg.AsyncConnection.connect(**self._params, autocommit=True)
                try:
                    await conn.execute(f"LISTEN {CHANNEL}")
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await conn.close()
                    raise
                self._conn = conn

    async def next(self, youngest: float) -> Collection[str] | None:
        """Wait for notifications; return the task ids they name (None: look at all)."""
        conn = self._conn
        if conn is None:  # dropped after a failure: connect again, then look at everything
            try:
                await self.prepare()
            except BrokerError:
                raise
            except Exception as exc:
                logger.warning(
                    "django-db: cannot LISTEN (%s); retrying", redact_text(str(exc).strip())
                )
                await anyio.sleep(min(max(youngest * POLL_FRACTION, MIN_POLL), MAX_POLL))
            return None
        ids: set[str] = set()
        try:
            notifies = conn.notifies(timeout=MAX_WAIT, stop_after=1)
            async with contextlib.aclosing(notifies):
                async for notify in notifies:
                    ids.update(notify.payload.split(","))
        except Exception as exc:  # the connection broke: look at all, connect again
            logger.warning(
                "django-db: the LISTEN connection failed (%s); reconnecting",
                redact_text(str(exc).strip()),
            )
            await self._drop()
            await anyio.sleep(MIN_POLL)
            return None
        return ids or None

    async def close(self) -> None:
        """Close the connection for good; idempotent."""
        self._closed = True
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.close()
