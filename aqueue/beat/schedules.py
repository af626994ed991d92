"""Schedules: when an entry is due. Every due time comes from the schedule, never from "now".

`every(seconds)` is due at each multiple of its period since the epoch (a 1 s entry at every
whole second, a 60 s one at every whole minute), so every beat computes the same due times
without talking to the others. `crontab(...)` takes Celery's signature and is parsed by
croniter (`pip install 'aqueue-tasks[beat]'`), in the app's time zone: DST gaps and repeats
are the library's to handle.
"""

from __future__ import annotations

import abc
import datetime as dt
import importlib
import math
import zoneinfo
from typing import Any

from ..exceptions import ConfigurationError, MissingDependency

__all__ = [
    "Schedule",
    "app_timezone",
    "clocked",
    "crontab",
    "every",
    "parse_schedule",
    "schedule_from_data",
]


class Schedule(abc.ABC):
    """When an entry is due."""

    @abc.abstractmethod
    def next_after(self, when: float, tz: dt.tzinfo) -> float:
        """Return the first due time (POSIX seconds) strictly after `when`."""

    @abc.abstractmethod
    def to_data(self) -> dict[str, Any]:
        """Return the schedule as plain data, to keep in the broker."""

    @abc.abstractmethod
    def __str__(self) -> str: ...


class every(Schedule):
    """Every `seconds` seconds, on the multiples of the period since the epoch."""

    def __init__(self, seconds: float | dt.timedelta) -> None:
        if isinstance(seconds, dt.timedelta):
            seconds = seconds.total_seconds()
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ConfigurationError(f"an interval must be a number of seconds, not {seconds!r}")
        if not 0 < seconds < math.inf:
            raise ConfigurationError(f"an interval must be more than 0 seconds, not {seconds!r}")
        self.seconds = float(seconds)

    def next_after(self, when: float, tz: dt.tzinfo) -> float:
        """Return the next multiple of the period after `when`."""
        due = (math.floor(when / self.seconds) + 1) * self.seconds
        return due if due > when else due + self.seconds  # float rounding at the boundary

    def to_data(self) -> dict[str, Any]:
        """Return `{"every": seconds}`."""
        return {"every": self.seconds}

    def __str__(self) -> str:
        return f"every {self.seconds:g}s"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, every) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(("every", self.seconds))


class crontab(Schedule):
    """A cron schedule with Celery's signature: `crontab(minute=0, hour=3)`.

    Each field takes what cron does (`"*/15"`, `"1-5"`, `"mon-fri"`, a number); day_of_week
    counts from Sunday = 0.
    """

    def __init__(
        self,
        minute: str | int = "*",
        hour: str | int = "*",
        day_of_week: str | int = "*",
        day_of_month: str | int = "*",
        month_of_year: str | int = "*",
    ) -> None:
        fields = (minute, hour, day_of_month, month_of_year, day_of_week)
        self.expression = " ".join(str(field).replace(" ", "") for field in fields)
        _check_cron(self.expression)

    @classmethod
    def from_string(cls, expression: str) -> crontab:
        """Parse `"m h dom mon dow"`, the five fields of a crontab line."""
        fields = expression.split()
        if len(fields) != 5:
            raise ConfigurationError(
                f"malformed crontab {expression!r}: cron takes five fields, minute hour "
                "day-of-month month day-of-week"
            )
        minute, hour, dom, month, dow = fields
        return cls(minute, hour, day_of_week=dow, day_of_month=dom, month_of_year=month)

    def next_after(self, when: float, tz: dt.tzinfo) -> float:
        """Return the next matching minute after `when`, in `tz` (croniter does the work)."""
        croniter = _croniter()
        start = dt.datetime.fromtimestamp(when, tz)
        following: dt.datetime = croniter(self.expression, start).get_next(dt.datetime)
        return following.timestamp()

    def to_data(self) -> dict[str, Any]:
        """Return `{"cron": "m h dom mon dow"}`."""
        return {"cron": self.expression}

    def __str__(self) -> str:
        return f"crontab {self.expression!r}"

    def __repr__(self) -> str:
        return f"<crontab: {self.expression}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and other.expression == self.expression

    def __hash__(self) -> int:
        return hash(("cron", self.expression))


class clocked(Schedule):
    """Once, at a time (django-celery-beat's clocked schedule): due then, never again.

    A naive datetime is in the machine's local time, as Python reads it.
    """

    def __init__(self, at: dt.datetime | float) -> None:
        when = at.timestamp() if isinstance(at, dt.datetime) else float(at)
        if not math.isfinite(when):
            raise ConfigurationError(f"a clocked schedule needs a time, not {at!r}")
        self.at = when

    def next_after(self, when: float, tz: dt.tzinfo) -> float:
        """Return its time if it is after `when`; infinity once it has passed."""
        return self.at if self.at > when else math.inf

    def to_data(self) -> dict[str, Any]:
        """Return `{"at": timestamp}`."""
        return {"at": self.at}

    def __str__(self) -> str:
        return "once at " + dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, clocked) and other.at == self.at

    def __hash__(self) -> int:
        return hash(("clocked", self.at))


def _croniter() -> Any:
    try:  # untyped (no stubs): imported by name
        module = importlib.import_module("croniter")
    except ImportError:
        raise MissingDependency(
            "crontab schedules need croniter: pip install 'aqueue-tasks[beat]'"
        ) from None
    return module.croniter


def _check_cron(expression: str) -> None:
    if not _croniter().is_valid(expression):
        raise ConfigurationError(f"malformed crontab {expression!r}")


def parse_schedule(value: object) -> Schedule:
    """Read a schedule as Celery's settings write it: seconds, timedelta, crontab or string."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str):
        try:
            return every(float(value))
        except ValueError:
            return crontab.from_string(value)
    if isinstance(value, int | float | dt.timedelta) and not isinstance(value, bool):
        return every(value)
    raise ConfigurationError(
        f"a schedule is seconds, a timedelta, a crontab(...) or a cron string, not {value!r}"
    )


def schedule_from_data(data: object) -> Schedule:
    """Read a schedule kept in the broker (`to_data`'s output)."""
    if isinstance(data, dict):
        if "every" in data:
            return every(data["every"])
        if isinstance(data.get("cron"), str):
            return crontab.from_string(data["cron"])
        if isinstance(data.get("at"), int | float) and not isinstance(data.get("at"), bool):
            return clocked(data["at"])
    raise ConfigurationError(f"not a stored schedule: {data!r}")


def app_timezone(timezone: str | None, enable_utc: bool) -> dt.tzinfo:
    """Return the time zone of crontab schedules under the `timezone` and `enable_utc` settings."""
    if timezone:
        return zoneinfo.ZoneInfo(timezone)
    if enable_utc:
        return dt.UTC
    try:  # DST-aware local time (croniter brings dateutil)
        tz = importlib.import_module("dateutil.tz")
    except ImportError:  # pragma: no cover - croniter depends on it
        return dt.datetime.now().astimezone().tzinfo or dt.UTC
    local: dt.tzinfo = tz.tzlocal()
    return local
