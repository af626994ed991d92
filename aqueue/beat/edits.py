"""`app.beat`: the entries of the running beats, edited at runtime without a restart.

Edits are kept in the broker's mailbox settings (`beat.entry.<name>`, as the control plane keeps
rate limits), and each one is announced on the mailbox topic `beat.changed`: every beat loads
its entries again at once. Entries of `beat_schedule` are the defaults; an edit of the same
name wins (`list` says "runtime (overrides settings)"), and `reset` goes back to the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import codec
from ..exceptions import ConfigurationError
from .entries import ENTRY_PREFIX, Entry, encode_entry, make_entry
from .schedules import Schedule
from .source import CHANGED_TOPIC, DefaultSource

if TYPE_CHECKING:
    from ..interfaces import AppLike

__all__ = ["BeatControl"]


class BeatControl:
    """Add, change, enable, disable and remove periodic tasks: `await app.beat.add(...)`."""

    def __init__(self, app: AppLike) -> None:
        self.app = app
        self._source = DefaultSource(app)

    async def list(self) -> list[Entry]:
        """Return every entry (disabled ones too), each with where it comes from."""
        return list((await self._source.load()).values())

    async def get(self, name: str) -> Entry:
        """Return the entry `name`; a one-line error if there is none."""
        entries = await self._source.load()
        if name not in entries:
            known = ", ".join(entries) or "none"
            raise ConfigurationError(f"no beat entry named {name!r} (entries: {known})")
        return entries[name]

    async def add(
        self,
        name: str,
        task: str,
        schedule: Schedule | float | str | Any,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> Entry:
        """Add an entry, or replace the one of that name; running beats pick it up at once."""
        self.app.get_task(task)  # NotRegistered for a name this app does not know
        spec = {
            "task": task,
            "schedule": schedule,
            "args": tuple(args),
            "kwargs": dict(kwargs or {}),
            "options": dict(options or {}),
            "enabled": enabled,
        }
        entry = make_entry(name, spec, "runtime")
        await self._put(entry)
        return entry

    async def remove(self, name: str) -> None:
        """Remove an entry (one of the settings stays removed until `reset`)."""
        await self.get(name)
        mailbox = (await self.app.broker()).mailbox()
        if name in self._source.defaults():
            await mailbox.put(ENTRY_PREFIX + name, codec.pack({"removed": True}))
        else:
            await mailbox.delete(ENTRY_PREFIX + name)
        await self._announce()

    async def enable(self, name: str) -> Entry:
        """Send the entry's runs again (from its next due time)."""
        return await self._set_enabled(name, True)

    async def disable(self, name: str) -> Entry:
        """Stop sending the entry's runs, keeping the entry."""
        return await self._set_enabled(name, False)

    async def reset(self, name: str) -> None:
        """Drop the runtime edit of `name`: back to `beat_schedule`'s entry (or none)."""
        mailbox = (await self.app.broker()).mailbox()
        await mailbox.delete(ENTRY_PREFIX + name)
        await self._announce()

    async def _set_enabled(self, name: str, enabled: bool) -> Entry:
        entry = dataclasses.replace(await self.get(name), enabled=enabled, source="runtime")
        await self._put(entry)
        return entry

    async def _put(self, entry: Entry) -> None:
        mailbox = (await self.app.broker()).mailbox()
        await mailbox.put(ENTRY_PREFIX + entry.name, encode_entry(entry))
        await self._announce()

    async def _announce(self) -> None:
        mailbox = (await self.app.broker()).mailbox()
        await mailbox.publish(CHANGED_TOPIC, b"")
