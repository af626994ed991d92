"""Whether another consumer's process is still alive, asked of the kernel, not of its beats.

A consumer on the same machine can tell at once that another one's process is gone, where a
heartbeat takes `heartbeat_timeout` to go stale: a worker killed with -9, or one that a task
`os._exit()`ed, has its messages taken at once. Every process that uses a SQLite file in WAL
mode runs on the same machine (WAL needs shared memory: no network file system); the workers
of `aqueue worker --workers N` share one too, on any broker.

Each consumer records its process: pid, its start time (clock ticks since boot: a pid used
again is another process), and where the pid means something (the boot, and the pid
namespace: containers sharing a volume see other pids). A consumer judges only processes of
its own boot and namespace; it asks `kill(pid, 0)` (no such process: gone), then
`/proc/PID/stat` (a zombie, or another start time: gone). Anything it cannot read is alive.
Linux only: elsewhere (no `/proc/self/ns/pid`), heartbeats alone decide, as before.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from functools import cache

__all__ = ["Process", "alive", "this_process"]


@dataclass(frozen=True, slots=True)
class Process:
    """A process, as a consumer records it: where its pid means something, pid, start time."""

    place: str  # the boot id and the pid namespace
    pid: int
    started: int  # clock ticks after boot (`/proc/PID/stat`, field 22)


@cache
def _place() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            boot = file.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot} {namespace}"


def _stat(pid: int) -> tuple[str, int] | None:
    """Return a process's state letter and start time, or None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
    except OSError:
        return None
    # Field 2 (the command) may hold spaces and parentheses: the fields after it follow the
    # last ')'. Field 3 is the state, field 22 the start time.
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def this_process() -> Process | None:
    """Return this process as others may judge it (None: they cannot, here)."""
    place = _place()
    stat = _stat(os.getpid()) if place is not None else None
    if place is None or stat is None:
        return None
    return Process(place, os.getpid(), stat[1])


def alive(process: Process) -> bool:
    """Whether `process` may still run: False only when it surely is gone.

    A process of another boot or pid namespace, or one whose entries cannot be read, is alive.
    """
    here = _place()
    if here is None or process.place != here or process.pid <= 0:
        return True
    try:
        os.kill(process.pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH  # EPERM: it exists, another user's
    stat = _stat(process.pid)
    if stat is None:
        return True
    state, started = stat
    return state not in ("Z", "X") and started == process.started
