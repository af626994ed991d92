"""Periodic tasks: `aqueue beat`, schedules, entries, and their runtime edits.

- `schedules`: `every(seconds)`, `crontab(...)` (croniter) and `clocked(at)` (once), due times
  from the schedule;
- `entries`: `beat_schedule` read as Celery writes it, and entries kept in the broker;
- `source`: where a beat's entries come from (`beat_scheduler`), and their change notices;
- `edits`: `app.beat`, editing entries at runtime;
- `scheduler`: the beat loop, claiming each run so that several beats send it once;
- `clock`: the system clock, or a manual one for tests;
- `housekeeping`: the built-in expired-result cleanup.
"""

from __future__ import annotations

from .clock import Clock, ManualClock, SystemClock
from .edits import BeatControl
from .entries import Entry
from .scheduler import Beat
from .schedules import Schedule, clocked, crontab, every
from .source import DefaultSource, Source

__all__ = [
    "Beat",
    "BeatControl",
    "Clock",
    "DefaultSource",
    "Entry",
    "ManualClock",
    "Schedule",
    "Source",
    "SystemClock",
    "clocked",
    "crontab",
    "every",
]
