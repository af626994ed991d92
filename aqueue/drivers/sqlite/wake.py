"""Cross-process wake-ups for the SQLite drivers, so that nothing polls the database.

Every process that waits on a database (a consumer, a result waiter) binds a Unix datagram
socket in a directory private to that database and channel:

    $TMPDIR/aqueue-<uid>/<sha256(database path)[:16]>/<channel>/<pid>-<random>.sock

A writer that changed something (a publish, a ready result) sends one byte to every socket in
the directory. The byte carries no data: it only means "look again". A waiter therefore always
listens *before* it looks at the table, so a change made between its look and its wait still
wakes it. A socket whose process died refuses the datagram and is unlinked by the sender; a
socket whose buffer is full already has a wake-up pending, so the datagram is dropped.

Where Unix sockets do not exist (Windows), `Listener.wait` sleeps for at most
`FALLBACK_WAIT` seconds instead, so waiters look again at that pace (a poll, the only one).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import stat
import tempfile

import anyio
import anyio.to_thread
from anyio.abc import SocketAttribute, UNIXDatagramSocket

from ...exceptions import BrokerError

__all__ = ["FALLBACK_WAIT", "SOCKETS", "Listener", "notify", "wake_dir"]

#: Whether this platform has Unix datagram sockets (Linux and macOS do; Windows does not).
SOCKETS = hasattr(socket, "AF_UNIX")

#: Without Unix sockets, the longest a listener waits before its owner looks again.
FALLBACK_WAIT = 1.0

_SUFFIX = ".sock"


def _base_dir() -> str:
    tmp = tempfile.gettempdir()
    if len(tmp) > 40 and os.path.isdir("/tmp"):  # keep socket paths short (macOS: /var/folders)
        tmp = "/tmp"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tmp, f"aqueue-{uid}")


def wake_dir(db_path: str, channel: str) -> str:
    """Return the wake-up directory of `channel` ("queue", "results") of a database file.

    Blocking (it resolves symlinks so every process finds the same directory): call it from a
    worker thread.
    """
    real = os.path.realpath(db_path)
    key = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    return os.path.join(_base_dir(), key, channel)


def notify(directory: str) -> None:
    """Wake every listener in `directory`; synchronous and non-blocking, for a worker thread."""
    if not SOCKETS:
        return
    try:
        paths = [entry.path for entry in os.scandir(directory) if entry.name.endswith(_SUFFIX)]
    except OSError:  # no directory yet: nobody listens
        return
    if not paths:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in paths:
            _send(sock, path)


def _send(sock: socket.socket, path: str) -> None:
    try:
        sock.sendto(b"\x01", path)
    except (ConnectionRefusedError, FileNotFoundError):
        _unlink(path)  # its process died without closing it
    except OSError:
        pass  # BlockingIOError (ENOBUFS on macOS): its buffer is full, a wake-up is pending


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _make_dir(directory: str) -> None:
    base = _base_dir()
    os.makedirs(base, mode=0o700, exist_ok=True)
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise BrokerError(f"{base} is not a directory of yours; remove it so aqueue can make it")
    os.makedirs(directory, mode=0o700, exist_ok=True)


class Listener:
    """A socket that wakes its owner when a `notify` reaches its directory.

    Open it before looking at the table, keep it open across looks, close it when done.
    """

    def __init__(self, sock: UNIXDatagramSocket | None, path: str | None) -> None:
        self.path = path
        self._sock = sock
        self._closed = False

    @classmethod
    async def open(cls, directory: str) -> Listener:
        """Bind a new socket in `directory` (creating it); a no-op listener without sockets."""
        if not SOCKETS:
            return cls(None, None)
        path = os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}")
        with anyio.CancelScope(shield=True):  # a socket file made is a socket file removed
            await anyio.to_thread.run_sync(_make_dir, directory)
            sock = await anyio.create_unix_datagram_socket(local_path=path, local_mode=0o600)
        return cls(sock, path)

    async def wait(self, at_most: float) -> bool:
        """Wait for a wake-up, for `at_most` seconds; consume every pending one.

        Return whether a wake-up came (False on timeout, and always False without sockets).
        """
        if self._sock is None:
            await anyio.sleep(min(max(at_most, 0.0), FALLBACK_WAIT))
            return False
        if self._closed:
            raise BrokerError("the wake-up listener is closed")
        woke = False
        with anyio.move_on_after(max(at_most, 0.0)):
            try:
                await self._sock.receive()
            except anyio.ClosedResourceError:
                raise BrokerError("the wake-up listener was closed while waiting") from None
            woke = True
        self.drain()
        return woke

    def drain(self) -> None:
        """Consume pending wake-ups without waiting (before looking at the table again)."""
        if self._sock is None or self._closed:
            return
        raw = self._sock.extra(SocketAttribute.raw_socket)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                raw.recv(16)

    async def aclose(self) -> None:
        """Remove the socket file and close the socket; idempotent."""
        if self._sock is None or self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self.path is not None:
                await anyio.to_thread.run_sync(_unlink, self.path)
            await self._sock.aclose()
