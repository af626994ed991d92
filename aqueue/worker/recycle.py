"""When a worker process should retire: `--max-tasks-per-child` and `--max-memory-per-child`.

Celery's two knobs for containing leaks. The worker asks `Recycle.after_task()` once a task
has finished; when a limit is reached it warm-stops (running tasks finish, messages claimed
ahead go back) and exits with `EXIT_RECYCLE`, and the supervisor (`aqueue.worker.supervisor`) starts
a replacement. The memory is the process's resident set, read from `/proc/self/statm` at most
once a second (elsewhere: the peak resident set, as Celery reads it).
"""

from __future__ import annotations

import os
import resource
import sys
import time

__all__ = ["EXIT_RECYCLE", "Recycle", "resident_kib"]

#: The exit status of a worker that retired on a limit (EX_TEMPFAIL: start another).
EXIT_RECYCLE = 75


def resident_kib() -> int:
    """Return this process's resident memory in KiB (its peak where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


class Recycle:
    """Counts finished tasks and watches memory; says why the process should retire."""

    def __init__(self, max_tasks: int | None, max_memory: int | None) -> None:
        self.max_tasks = max_tasks
        self.max_memory = max_memory  # KiB
        self.tasks = 0
        self._checked = 0.0

    def __bool__(self) -> bool:
        return self.max_tasks is not None or self.max_memory is not None

    def after_task(self) -> str | None:
        """Count one finished task; return the reason to retire now, or None."""
        self.tasks += 1
        if self.max_tasks is not None and self.tasks >= self.max_tasks:
            return f"{self.tasks} tasks done (max tasks per child {self.max_tasks})"
        if self.max_memory is not None:
            now = time.monotonic()
            if now - self._checked >= 1.0:
                self._checked = now
                used = resident_kib()
                if used > self.max_memory:
                    return f"{used} KiB resident (max memory per child {self.max_memory} KiB)"
        return None
