"""The mailbox: how the app and its workers talk outside the task queues.

Every broker offers one (`Broker.mailbox()`), over its own transport: pub/sub on Redis, a
topic exchange on RabbitMQ, the database on SQLite, memory in one process. It carries

- **topics**: `publish(topic, data)` reaches every current subscriber of the topic (fan-out;
  nothing is kept for subscribers that come later). The control plane sends commands on
  `control.broadcast` and `control.<hostname>`, and replies on a topic of the asker's;
- **settings**: a small durable key-value store (`put`, `get`, `items`, `delete`) for runtime
  changes that a restarted worker must pick up: rate limits set with `aqueue control`,
  revoked task ids;
- **claims**: `claim(key, ttl)` takes a key for `ttl` seconds if no one holds it, atomically
  with the broker's own primitive: several beats claim each run so that one sends it.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

__all__ = ["Mailbox"]


class Mailbox(abc.ABC):
    """Fan-out topics and durable settings over a broker's transport."""

    @abc.abstractmethod
    async def publish(self, topic: str, data: bytes) -> None:
        """Send `data` to every current subscriber of `topic`."""

    @abc.abstractmethod
    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Receive what is published on `topic` from the moment the context is entered."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a setting, for `ttl` seconds or for good."""

    @abc.abstractmethod
    async def items(self, prefix: str) -> dict[str, bytes]:
        """Return every live setting whose key starts with `prefix`."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove a setting."""

    async def claim(self, key: str, ttl: float) -> bool:
        """Take `key` for `ttl` seconds: True for exactly one of the callers racing for it."""
        raise NotImplementedError(f"{type(self).__name__} cannot claim keys")
