"""Runtime percentiles per task for `inspect stats` (`worker_runtime_stats = True`).

An observer of the worker's tasks (see aqueue/observe.py) that keeps the runtimes of the last
`SAMPLES` runs of each task name and reports their count, median, 90th and 99th percentiles
and maximum. Off by default: it costs an observer call per task.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..drivers.base import Delivery
    from ..interfaces import RunnableTask
    from ..message import Envelope

__all__ = ["SAMPLES", "Runtimes", "percentile"]

#: The runs of each task whose runtimes are kept.
SAMPLES = 1000


def percentile(ordered: list[float], fraction: float) -> float:
    """Return the `fraction` percentile of sorted values (nearest rank)."""
    rank = math.ceil(fraction * len(ordered) - 1e-9)  # 0.99 * 100 is 99.00000000000001
    index = min(len(ordered) - 1, max(0, rank - 1))
    return ordered[index]


class Runtimes:
    """The recent runtimes of each task, by name."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self.samples = samples
        self._runtimes: dict[str, deque[float]] = {}
        self._counts: dict[str, int] = {}

    def received(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Nothing to note."""

    def started(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Nothing to note."""

    def finished(
        self, task: RunnableTask, envelope: Envelope, state: str, runtime: float, outcome: Any
    ) -> None:
        """Keep the runtime of a run."""
        name = task.name
        kept = self._runtimes.get(name)
        if kept is None:
            kept = self._runtimes[name] = deque(maxlen=self.samples)
        kept.append(runtime)
        self._counts[name] = self._counts.get(name, 0) + 1

    def interrupted(self, task: RunnableTask, envelope: Envelope, revoked: bool) -> None:
        """Nothing to note."""

    def returned(self, task: RunnableTask, envelope: Envelope) -> None:
        """Nothing to note: it never started."""

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Nothing to note."""

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Nothing to note."""

    def report(self) -> dict[str, dict[str, float]]:
        """Return, by task name: runs, and p50, p90, p99 and max of the recent runtimes (s)."""
        report: dict[str, dict[str, float]] = {}
        for name, kept in self._runtimes.items():
            ordered = sorted(kept)
            report[name] = {
                "runs": self._counts[name],
                "p50": percentile(ordered, 0.50),
                "p90": percentile(ordered, 0.90),
                "p99": percentile(ordered, 0.99),
                "max": ordered[-1],
            }
        return report
