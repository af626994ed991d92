"""The built-in entries: expired-result cleanup for stores that keep expired rows (SQLite).

Turned off with `beat_housekeeping = False`. It runs in the beat that claims the run (not as a
task), hourly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .entries import Entry
from .schedules import every

if TYPE_CHECKING:
    from ..interfaces import AppLike

__all__ = ["HOUSEKEEPING", "housekeeping_entries", "run_housekeeping"]

logger = logging.getLogger("aqueue.beat")

RESULTS = "aqueue.purge-expired-results"
HOUSEKEEPING = frozenset({RESULTS})


async def housekeeping_entries(app: AppLike) -> dict[str, Entry]:
    """Return the built-in entries this app needs (none if turned off)."""
    if not app.conf.beat_housekeeping:
        return {}
    backend = await app.result_backend()
    if backend is None or not backend.keeps_expired:
        return {}
    return {RESULTS: Entry(RESULTS, RESULTS, every(3600), source="built in")}


async def run_housekeeping(app: AppLike, entry: Entry) -> None:
    """Run a built-in entry."""
    backend = await app.result_backend()
    if entry.name == RESULTS and backend is not None:
        purged = await backend.purge_expired()
        logger.info("Purged %d expired result(s)", purged)
