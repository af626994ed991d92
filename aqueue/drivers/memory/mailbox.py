"""The mailbox of `memory://`: topics and settings inside one process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..base import Mailbox

__all__ = ["MemoryMailbox"]

#: Messages a slow subscriber may fall behind by before new ones are dropped for it.
BUFFER = 1000


class MemoryMailbox(Mailbox):
    """Fan-out through in-process streams; settings in a dict with expiry times."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[MemoryObjectSendStream[bytes]]] = {}
        self._settings: dict[str, tuple[bytes, float | None]] = {}
        self._claims: dict[str, float] = {}

    async def publish(self, topic: str, data: bytes) -> None:
        """Hand `data` to every subscriber of `topic` now listening."""
        for stream in list(self._subscribers.get(topic, ())):
            # A subscriber this far behind misses messages, as on any pub/sub.
            with contextlib.suppress(anyio.WouldBlock):
                stream.send_nowait(data)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Receive the topic's messages while the context is open."""
        send, receive = anyio.create_memory_object_stream[bytes](BUFFER)
        subscribers = self._subscribers.setdefault(topic, set())
        subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            subscribers.discard(send)
            send.close()
            if not subscribers:
                self._subscribers.pop(topic, None)

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Keep a setting."""
        self._settings[key] = (value, None if ttl is None else time.time() + ttl)

    async def items(self, prefix: str) -> dict[str, bytes]:
        """Return the live settings under `prefix`."""
        now = time.time()
        return {
            key: value
            for key, (value, expires) in list(self._settings.items())
            if key.startswith(prefix) and (expires is None or expires > now)
        }

    async def delete(self, key: str) -> None:
        """Forget a setting."""
        self._settings.pop(key, None)

    async def claim(self, key: str, ttl: float) -> bool:
        """Take `key` unless a live claim holds it (one process: a dict suffices)."""
        now = time.time()
        if self._claims.get(key, 0.0) > now:
            return False
        if len(self._claims) > 1000:
            self._claims = {k: until for k, until in self._claims.items() if until > now}
        self._claims[key] = now + ttl
        return True
