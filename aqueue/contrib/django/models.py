"""`TaskResult`: one row per task of the `django-db` result store.

aqueue reads back `payload` alone (the bytes the worker stored, signed if the app signs
results); the other columns are written beside it for people: the admin, SQL, reports.
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from django.db import models

from ... import states

__all__ = ["STATUS_CHOICES", "TaskResult"]

STATUS_CHOICES = [
    (state, state.title())
    for state in (
        states.PENDING,
        states.STARTED,
        states.RETRY,
        states.SUCCESS,
        states.FAILURE,
        states.REVOKED,
    )
]


class TaskResult(models.Model):
    """The latest state of one task, as a worker (or `revoke`) stored it."""

    task_id: models.CharField[str, str] = models.CharField("task id", max_length=255, unique=True)
    task_name: models.CharField[str, str] = models.CharField(
        "task name", max_length=255, blank=True, db_index=True
    )
    status: models.CharField[str, str] = models.CharField(
        max_length=50, choices=STATUS_CHOICES, db_index=True
    )
    #: JSON: the return value once SUCCESS; {"exc_type", "exc_message"} once FAILURE/REVOKED.
    result: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    traceback: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    retries: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(default=0)
    #: The worker that stored the final state (its hostname, as `aqueue inspect` names it).
    worker: models.CharField[str | None, str | None] = models.CharField(
        max_length=255, null=True, blank=True
    )
    date_created: models.DateTimeField[dt.datetime, dt.datetime] = models.DateTimeField(
        "created", auto_now_add=True, db_index=True
    )
    date_done: models.DateTimeField[dt.datetime | None, dt.datetime | None] = models.DateTimeField(
        "done", null=True, blank=True, db_index=True
    )
    expires: models.DateTimeField[dt.datetime, dt.datetime] = models.DateTimeField(db_index=True)
    #: What aqueue reads: the encoded result exactly as the worker stored it.
    payload: models.BinaryField[bytes, bytes | memoryview] = models.BinaryField()

    class Meta:
        """Named for people; newest first."""

        verbose_name = "task result"
        ordering: ClassVar[list[str]] = ["-date_created"]

    def __str__(self) -> str:
        return f"{self.task_name or 'task'}[{self.task_id}] {self.status}"
