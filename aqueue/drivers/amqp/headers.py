"""The message headers the RabbitMQ driver sets, and how it reads their times.

Task messages carry when they were first published, how often they were delivered and, for a
long delay, when they are due; dead letters carry the reason a worker gave; running copies carry
their runs and a nonce. Settings kept in the mailbox carry their key, time and expiry.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "COPY_NONCE",
    "DEAD_DETAIL",
    "DEAD_REASON",
    "DELIVERIES",
    "DUE_AT",
    "FIRST_PUBLISHED",
    "PRIORITY",
    "RUNS",
    "SETTING_DELETED",
    "SETTING_EXPIRES",
    "SETTING_KEY",
    "SETTING_WRITTEN",
    "header_number",
    "header_time",
    "stamp",
]

# Task messages.
FIRST_PUBLISHED = "aqueue-at"  # first published, in µs (orders messages across queues)
DELIVERIES = "aqueue-deliveries"  # deliveries before this copy was published (nack, delay)
DUE_AT = "aqueue-eta"  # due time (µs) of a delay longer than the ladder holds
DEAD_REASON = "aqueue-reason"  # dead letters: the reason and detail a worker gave
DEAD_DETAIL = "aqueue-detail"
PRIORITY = "aqueue-priority"  # the priority of a message given back first (raised to the top)

# Running copies.
RUNS = "aqueue-runs"  # recorded runs: copies made by `begin`
COPY_NONCE = "aqueue-copy"  # the nonce that finds a copy in the running queue's deliveries

# Settings in the mailbox.
SETTING_KEY = "aqueue-key"
SETTING_WRITTEN = "aqueue-at"
SETTING_EXPIRES = "aqueue-expires"
SETTING_DELETED = "aqueue-deleted"


def stamp(when: float) -> int:
    """Encode a POSIX time for a header: integer microseconds (AMQP floats are 32-bit)."""
    return round(when * 1_000_000)


def header_time(headers: dict[str, Any] | None, key: str) -> float:
    """Decode a time written by `stamp`; 0 when absent."""
    return header_number(headers, key) / 1_000_000


def header_number(headers: dict[str, Any] | None, key: str) -> float:
    """Return a numeric header, 0 when absent or not a number."""
    value = (headers or {}).get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0
