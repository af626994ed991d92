"""Task states, with Celery's names.

A task is PENDING until a worker reports on it (an unknown id is PENDING too, as in Celery),
STARTED while it runs (when `task_track_started` is on), RETRY while it waits for another
attempt, and ends in one of the ready states: SUCCESS, FAILURE or REVOKED.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "FAILURE",
    "PENDING",
    "READY_STATES",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
]

PENDING: Final = "PENDING"
STARTED: Final = "STARTED"
RETRY: Final = "RETRY"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"

READY_STATES: Final = frozenset({SUCCESS, FAILURE, REVOKED})
