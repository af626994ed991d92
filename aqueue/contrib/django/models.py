"""`TaskResult`: one row per task of the `django-db` result store; and its chord counters.

aqueue reads back `payload` alone (the bytes the worker stored, signed if the app signs
results); the other columns are written beside it for people: the admin, SQL, reports.

`ChordCounter`, `ChordPart` and `ChordClaim` count chord headers (`ResultBackend.chord_part`):
aqueue's bookkeeping, not for people, and gone with the chord's results when they expire.
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from django.db import models

from ... import states

__all__ = ["STATUS_CHOICES", "ChordClaim", "ChordCounter", "ChordPart", "TaskResult"]

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


class ChordCounter(models.Model):
    """One chord: how many header task ids are recorded, and who acts on it.

    Each recorder locks this row (`select_for_update`; on SQLite the database's write lock)
    for the length of its transaction, so a chord's header tasks are counted one at a time.
    """

    chord_id: models.CharField[str, str] = models.CharField(max_length=255, unique=True)
    #: Header task ids recorded (each once: `ChordPart`).
    parts: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(default=0)
    failed: models.BooleanField[bool, bool] = models.BooleanField(default=False)
    #: The callback was sent (or the chord failed): nobody is told to act again.
    done: models.BooleanField[bool, bool] = models.BooleanField(default=False)
    #: The header task that found the chord complete (or failed) first: it alone acts.
    claimant: models.CharField[str | None, str | None] = models.CharField(
        max_length=255, null=True, blank=True
    )
    expires: models.DateTimeField[dt.datetime, dt.datetime] = models.DateTimeField(db_index=True)

    class Meta:
        """aqueue's bookkeeping."""

        verbose_name = "chord counter"

    def __str__(self) -> str:
        return f"chord {self.chord_id}: {self.parts} recorded"


class ChordPart(models.Model):
    """A header task id recorded for a chord: unique, so a redelivered task counts once."""

    chord_id: models.CharField[str, str] = models.CharField(max_length=255)
    task_id: models.CharField[str, str] = models.CharField(max_length=255)

    class Meta:
        """One row per (chord, task)."""

        verbose_name = "chord part"
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["chord_id", "task_id"], name="aqueue_chordpart_once")
        ]

    def __str__(self) -> str:
        return f"chord {self.chord_id}: {self.task_id}"


class ChordClaim(models.Model):
    """The token whose copy of a message a chord's claimant sent may run (`chord_run`)."""

    chord_id: models.CharField[str, str] = models.CharField(max_length=255)
    task_id: models.CharField[str, str] = models.CharField(max_length=255)
    token: models.CharField[str, str] = models.CharField(max_length=255)

    class Meta:
        """One holder per (chord, task)."""

        verbose_name = "chord claim"
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["chord_id", "task_id"], name="aqueue_chordclaim_once")
        ]

    def __str__(self) -> str:
        return f"chord {self.chord_id}: {self.task_id} held by {self.token}"
