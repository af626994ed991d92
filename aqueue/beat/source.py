"""Where a beat's entries come from, and how it hears that they changed.

`beat_scheduler = "default"` reads `beat_schedule` and the edits kept in the broker's mailbox
(`DefaultSource`); `"django"` reads Django's database (`aqueue.contrib.django.beat`); another
value is `"module:Class"`, a `Source` of one's own, made with the app. Whatever the source,
each due run is claimed before it is sent, so several beats send it once.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..config import load_object
from ..exceptions import ConfigurationError
from .entries import ENTRY_PREFIX, Entry, decode_entry, entries_from_settings

if TYPE_CHECKING:
    from ..interfaces import AppLike

__all__ = ["ALIASES", "CHANGED_TOPIC", "DefaultSource", "Source", "make_source", "merge"]

logger = logging.getLogger("aqueue.beat")

#: Published on the mailbox after every runtime edit: beats load their entries again.
CHANGED_TOPIC = "beat.changed"

#: Short names of the sources aqueue ships (Celery's django-celery-beat name included).
_DJANGO = "aqueue.contrib.django.beat.source:DjangoSource"
ALIASES = {
    "django": _DJANGO,
    "django_celery_beat.schedulers:DatabaseScheduler": _DJANGO,
    "django_celery_beat.schedulers.DatabaseScheduler": _DJANGO,
}


class Source(abc.ABC):
    """The entries of the beats of one app."""

    @abc.abstractmethod
    async def load(self) -> dict[str, Entry]:
        """Return every entry, by name (disabled ones too)."""

    @abc.abstractmethod
    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """Yield an item whenever the entries may have changed (from the moment it is entered)."""

    async def sent(self, entry: Entry, due: float) -> None:  # noqa: B027 - optional
        """Record a run this beat claimed and sent (a database source counts it; no-op here)."""


class DefaultSource(Source):
    """`beat_schedule`, overridden by the edits kept in the broker (`app.beat.add` ...)."""

    def __init__(self, app: AppLike) -> None:
        self.app = app

    def defaults(self) -> dict[str, Entry]:
        """Return the entries of the settings."""
        return entries_from_settings(self.app.conf.beat_schedule)

    async def stored(self) -> dict[str, Entry | None]:
        """Return the runtime edits (None: an entry of the settings removed)."""
        mailbox = (await self.app.broker()).mailbox()
        edits: dict[str, Entry | None] = {}
        for key, raw in (await mailbox.items(ENTRY_PREFIX)).items():
            name = key[len(ENTRY_PREFIX) :]
            try:
                edits[name] = decode_entry(name, raw)
            except ConfigurationError as exc:
                logger.warning("Ignored the stored beat entry %r: %s", name, str(exc)[:200])
        return edits

    async def load(self) -> dict[str, Entry]:
        """Return the settings' entries with the runtime edits applied."""
        return merge(self.defaults(), await self.stored())

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """Subscribe to the mailbox topic that every edit publishes on."""
        return _subscribe(self.app)


@asynccontextmanager
async def _subscribe(app: AppLike) -> AsyncIterator[AsyncIterator[Any]]:
    mailbox = (await app.broker()).mailbox()
    async with mailbox.subscribe(CHANGED_TOPIC) as messages:
        yield messages


def merge(defaults: Mapping[str, Entry], stored: Mapping[str, Entry | None]) -> dict[str, Entry]:
    """Apply the runtime edits to the settings' entries; say which ones they changed."""
    merged = dict(defaults)
    for name, edit in stored.items():
        if edit is None:
            merged.pop(name, None)
        elif name in defaults:
            merged[name] = _with_source(edit, "runtime (overrides settings)")
        else:
            merged[name] = _with_source(edit, "runtime")
    return dict(sorted(merged.items()))


def _with_source(entry: Entry, source: Any) -> Entry:
    return dataclasses.replace(entry, source=source)


def make_source(app: AppLike) -> Source:
    """Build the source `beat_scheduler` names."""
    name = app.conf.beat_scheduler
    if name in ("default", "", None):
        return DefaultSource(app)
    name = ALIASES.get(name, name)
    factory = load_object(name)
    if not callable(factory):
        raise ConfigurationError(f"beat_scheduler {name!r} is not a class")
    source = factory(app)
    if not isinstance(source, Source):
        raise ConfigurationError(f"beat_scheduler {name!r} did not make an aqueue.beat.Source")
    return source
