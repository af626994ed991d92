"""The database scheduler's `Source`: the beat's entries are the `PeriodicTask` rows."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final

import anyio

from ....beat.entries import Entry
from ....beat.source import DefaultSource, Source
from ....exceptions import ConfigurationError

if TYPE_CHECKING:
    from ....interfaces import AppLike

__all__ = ["DjangoSource"]

logger = logging.getLogger("aqueue.beat")

#: What `Entry.source` says of these entries (`aqueue beat APP list`).
SOURCE: Final = "django"


class DjangoSource(Source):
    """Entries from the database; change notices through the broker, as runtime edits."""

    def __init__(self, app: AppLike) -> None:
        self.app = app
        self._notices = DefaultSource(app)  # its change notices are the ones the signals send

    async def load(self) -> dict[str, Entry]:
        """Read every row (in a thread: the ORM blocks); a bad row is skipped with a warning."""
        return await anyio.to_thread.run_sync(_load)

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """Subscribe to the beat's change notice on the broker, which saving a row publishes."""
        return self._notices.changes()

    async def sent(self, entry: Entry, due: float) -> None:
        """Record the run on its row (last run, total runs)."""
        await anyio.to_thread.run_sync(_record, entry.name, due)


def _load() -> dict[str, Entry]:
    from django.db import close_old_connections

    from .models import PeriodicTask

    close_old_connections()  # a long-lived beat: stale connections go, as per request
    entries: dict[str, Entry] = {}
    for row in PeriodicTask.objects.all():
        try:
            entries[row.name] = Entry(
                name=row.name,
                task=row.task,
                schedule=row.schedule(),
                args=tuple(row.args or ()),
                kwargs=dict(row.kwargs or {}),
                options=row.options(),
                enabled=row.enabled,
                source=SOURCE,
            )
        except (ConfigurationError, TypeError, ValueError) as exc:
            logger.warning("Skipped the periodic task %r: %s", row.name, str(exc)[:200])
    return entries


def _record(name: str, due: float) -> None:
    from django.db.models import F

    from .models import PeriodicTask

    PeriodicTask.objects.filter(name=name).update(  # an update: no signal, no reload
        last_run_at=dt.datetime.fromtimestamp(due, dt.UTC),
        total_run_count=F("total_run_count") + 1,
    )
