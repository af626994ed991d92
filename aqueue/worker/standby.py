"""Warm standby workers: `aqueue worker --workers N --standby K`.

A standby is a child worker process started ahead of need: it imports the app, its task
modules and its drivers, then blocks on a pipe of its own (`STANDBY_FD`) without connecting.
When a serving child dies (a task killed it) or retires, the supervisor writes the slot's
assignment on that pipe (its node name, and whether it runs the beat), and the standby starts
serving at once: a replacement ready in milliseconds, where a fresh process takes 0.3-0.8 s
to import everything. The supervisor then starts another standby in the background.

The pipe's end without an assignment (the supervisor stopped, reloaded, or died) makes the
standby exit 0 without having connected to anything.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

__all__ = ["STANDBY_FD", "Assignment", "inherited_pipe", "standby_pipe", "wait_for_assignment"]

#: The environment variable that gives a standby the pipe its assignment comes on.
STANDBY_FD = "AQUEUE_STANDBY_FD"

#: The longest assignment read (a node name and a flag): anything longer is not ours.
_MAX_ASSIGNMENT = 4096


@dataclass(frozen=True)
class Assignment:
    """The slot a standby takes over: its node name, and whether it runs the beat."""

    hostname: str
    beat: bool = False

    def encode(self) -> bytes:
        """Return the assignment as written on the standby's pipe: one JSON line."""
        return json.dumps({"hostname": self.hostname, "beat": self.beat}).encode() + b"\n"


def standby_pipe() -> int | None:
    """Take the pipe of a standby (None: this child is not one), removing its variable."""
    return inherited_pipe(STANDBY_FD)


def inherited_pipe(variable: str) -> int | None:
    """Take the pipe a parent named in environment `variable` (None: none), removing it.

    The variable is removed, so no process this one starts sees it; one that names no pipe
    (a stray variable) gives None.
    """
    value = os.environ.pop(variable, None)
    if value is None or not value.isdigit():
        return None
    try:
        if not stat.S_ISFIFO(os.fstat(int(value)).st_mode):
            return None  # a stray variable: not a pipe of ours
    except OSError:
        return None
    return int(value)


def wait_for_assignment(fd: int) -> Assignment | None:
    """Block until the supervisor assigns this standby a slot; None once the pipe ended.

    A plain blocking read, before any event loop runs in this process.
    """
    data = b""
    try:
        while not data.endswith(b"\n") and len(data) < _MAX_ASSIGNMENT:
            chunk = os.read(fd, _MAX_ASSIGNMENT)
            if not chunk:
                return None  # the supervisor closed it: stand down
            data += chunk
    finally:
        os.close(fd)
    try:
        fields = json.loads(data)
        return Assignment(str(fields["hostname"]), bool(fields.get("beat", False)))
    except (ValueError, KeyError, TypeError):
        return None  # not an assignment of ours
