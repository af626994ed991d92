"""`PeriodicTask`: one beat entry in the database."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from ....beat.schedules import Schedule, clocked, crontab, every
from ....exceptions import ConfigurationError

__all__ = ["PeriodicTask"]

#: Written by the beats only (`DjangoSource.sent`), never by a save of the row.
_COUNTERS = frozenset({"last_run_at", "total_run_count"})


class PeriodicTask(models.Model):
    """A task sent on a schedule: every N seconds, on a crontab line, or once at a time."""

    name: models.CharField[str, str] = models.CharField(
        max_length=200, unique=True, help_text="The entry's name."
    )
    task: models.CharField[str, str] = models.CharField(
        max_length=200, help_text="A registered task name, e.g. shop.tick."
    )
    interval_seconds: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True, help_text="Every this many seconds (or a crontab, or a time)."
    )
    crontab: models.CharField[str, str] = models.CharField(
        max_length=200, blank=True, default="", help_text='A crontab line, e.g. "0 3 * * *".'
    )
    clocked_time: models.DateTimeField[dt.datetime | None, dt.datetime | None] = (
        models.DateTimeField(null=True, blank=True, help_text="Once, at this time.")
    )
    args: models.JSONField[Any, Any] = models.JSONField(
        default=list, blank=True, help_text="Positional arguments (a list)."
    )
    kwargs: models.JSONField[Any, Any] = models.JSONField(
        default=dict, blank=True, help_text="Keyword arguments (an object)."
    )
    queue: models.CharField[str, str] = models.CharField(max_length=200, blank=True, default="")
    priority: models.PositiveSmallIntegerField[int | None, int | None] = (
        models.PositiveSmallIntegerField(null=True, blank=True)
    )
    expires_seconds: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True, help_text="Each run expires this long after it is sent."
    )
    enabled: models.BooleanField[bool, bool] = models.BooleanField(default=True)
    description: models.TextField[str, str] = models.TextField(blank=True, default="")
    last_run_at: models.DateTimeField[dt.datetime | None, dt.datetime | None] = (
        models.DateTimeField(null=True, blank=True, editable=False)
    )
    total_run_count: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(
        default=0, editable=False
    )
    date_changed: models.DateTimeField[dt.datetime, dt.datetime] = models.DateTimeField(
        auto_now=True
    )

    class Meta:  # noqa: D106 - Django's
        ordering = ("name",)
        verbose_name = "periodic task"

    def __str__(self) -> str:
        return f"{self.name}: {self.task}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; an existing row keeps the run counters the beats wrote meanwhile.

        An admin form holds the row as it was when the page opened: saving it must not undo
        the runs recorded since.
        """
        updating = self.pk is not None and not kwargs.get("force_insert")
        if updating and not kwargs.get("update_fields"):
            kwargs["update_fields"] = [
                field.name
                for field in self._meta.concrete_fields
                if not field.primary_key and field.name not in _COUNTERS
            ]
        super().save(*args, **kwargs)

    def schedule(self) -> Schedule:
        """Return the entry's schedule; a row with none, or with two, is a one-line error."""
        given = [
            self.interval_seconds is not None,
            bool(self.crontab.strip()),
            self.clocked_time is not None,
        ]
        if sum(given) != 1:
            raise ConfigurationError(
                f"periodic task {self.name!r} needs exactly one of interval_seconds, crontab "
                "and clocked_time"
            )
        if self.interval_seconds is not None:
            return every(self.interval_seconds)
        if self.clocked_time is not None:
            return clocked(self.clocked_time)
        return crontab.from_string(self.crontab)

    def options(self) -> dict[str, Any]:
        """Return the call options of each run."""
        options: dict[str, Any] = {}
        if self.queue:
            options["queue"] = self.queue
        if self.priority is not None:
            options["priority"] = self.priority
        if self.expires_seconds is not None:
            options["expires"] = self.expires_seconds
        return options

    def clean(self) -> None:
        """Check the schedule and the arguments (the admin shows the error on the form)."""
        try:
            self.schedule()
        except ConfigurationError as exc:
            raise ValidationError(str(exc)) from None
        if not isinstance(self.args, list):
            raise ValidationError("args must be a JSON list")
        if not isinstance(self.kwargs, dict):
            raise ValidationError("kwargs must be a JSON object")
