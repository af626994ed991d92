"""Entries: a named task on a schedule, from the settings or kept in the broker.

An entry kept in the broker is a msgpack map under the mailbox setting `beat.entry.<name>`:
`{"task", "schedule": {"every": s} | {"cron": "m h dom mon dow"}, "args", "kwargs", "options",
"enabled"}`, or `{"removed": true}`, which hides an entry of the settings of that name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from .. import codec
from ..exceptions import ConfigurationError
from ..options import SendOptions
from .schedules import Schedule, parse_schedule, schedule_from_data

__all__ = ["ENTRY_PREFIX", "Entry", "decode_entry", "encode_entry", "entries_from_settings"]

ENTRY_PREFIX = "beat.entry."

#: The call options an entry may carry (`apply_async`'s, but `task_id`, `countdown`, `eta`).
ENTRY_OPTIONS = frozenset(SendOptions.__annotations__) - {"task_id", "countdown", "eta"}

Source = Literal["settings", "runtime", "runtime (overrides settings)", "built in", "django"]


@dataclasses.dataclass(frozen=True)
class Entry:
    """A task sent on a schedule."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    enabled: bool = True
    source: Source = "settings"

    def same_timing(self, other: Entry) -> bool:
        """Whether `other` is due at the same times (its cursor may be kept)."""
        return self.schedule == other.schedule and self.enabled == other.enabled


def make_entry(name: str, spec: object, source: Source = "settings") -> Entry:
    """Read one entry as Celery's `beat_schedule` writes it; bad input is a one-line error."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"beat_schedule: an entry name must be a string, not {name!r}")
    where = f"beat_schedule[{name!r}]"
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"{where} must be a dict with 'task' and 'schedule'")
    unknown = set(spec) - {"task", "schedule", "args", "kwargs", "options", "enabled"}
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    task = spec.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"{where} needs 'task', a task name")
    if "schedule" not in spec:
        raise ConfigurationError(f"{where} needs 'schedule'")
    try:
        schedule = parse_schedule(spec["schedule"])
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    args, kwargs, options = _parts(where, spec)
    return Entry(
        name,
        task,
        schedule,
        tuple(args),
        dict(kwargs),
        dict(options),
        bool(spec.get("enabled", True)),
        source,
    )


def _parts(where: str, spec: Mapping[str, Any]) -> tuple[Any, Mapping[str, Any], Mapping[str, Any]]:
    args, kwargs, options = spec.get("args", ()), spec.get("kwargs", {}), spec.get("options", {})
    if not isinstance(args, list | tuple):
        raise ConfigurationError(f"{where}: 'args' must be a list or tuple, not {args!r}")
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"{where}: 'kwargs' must be a dict, not {kwargs!r}")
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{where}: 'options' must be a dict, not {options!r}")
    bad = set(options) - ENTRY_OPTIONS
    if bad:
        allowed = ", ".join(sorted(ENTRY_OPTIONS))
        raise ConfigurationError(f"{where}: unknown option(s) {sorted(bad)}; allowed: {allowed}")
    return args, kwargs, options


def entries_from_settings(schedule: Mapping[str, Any]) -> dict[str, Entry]:
    """Read `beat_schedule`."""
    return {name: make_entry(name, spec) for name, spec in schedule.items()}


def encode_entry(entry: Entry) -> bytes:
    """Pack an entry to keep in the broker."""
    data = {
        "task": entry.task,
        "schedule": entry.schedule.to_data(),
        "args": list(entry.args),
        "kwargs": dict(entry.kwargs),
        "options": dict(entry.options),
        "enabled": entry.enabled,
    }
    return codec.pack(data, where="beat entry")


def decode_entry(name: str, raw: bytes) -> Entry | None:
    """Read an entry kept in the broker; None for a removal mark. Raises ConfigurationError."""
    try:
        data = codec.unpack(raw)
    except ValueError as exc:
        raise ConfigurationError(f"beat entry {name!r} is not readable: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"beat entry {name!r} is not a map")
    if data.get("removed"):
        return None
    spec = {**data, "schedule": schedule_from_data(data.get("schedule"))}
    return make_entry(name, spec, "runtime")
