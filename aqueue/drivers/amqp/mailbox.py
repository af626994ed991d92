"""The mailbox of the RabbitMQ driver: topics over an exchange, settings in a durable queue.

No plugin is needed. Every name starts with the `prefix` option.

**Topics.** `publish(topic, data)` publishes to the durable exchange `aqueue.mailbox` with the
topic as routing key (not mandatory: no subscriber is fine; not persistent). The exchange is a
*direct* one rather than a topic exchange: routing keys match exactly, so dots, `*` and `#` in a
topic mean nothing. `subscribe(topic)` declares an exclusive, auto-delete, server-named queue on
a channel of its own (on the broker's connection), binds it with the topic and consumes it
without acks into the subscriber's buffer; the context is entered once RabbitMQ confirmed the
binding and the consumer, so nothing published afterwards is missed. Leaving deletes the queue.
If the connection drops, the next read declares, binds and consumes again on the new connection
(what was published meanwhile is lost, as with any pub/sub); once the broker is closed, reading
raises `BrokerError`. A subscriber that does not read falls behind by at most `BUFFER` messages;
later ones are dropped for it.

**Settings.** The durable classic queue `aqueue.settings` holds one persistent message per
`put` (and per `delete`, a tombstone), published with confirms; its headers carry the key, the
time of the change and the expiry (integer microseconds since the epoch). `items` reads every
message with `basic.get` on a channel of its own without acking, keeps for each key the most
recent change (by its time; on a tie, the one read last), acks the superseded, expired and
tombstone messages (so the queue stays about one message per live key), and closes the channel:
RabbitMQ requeues the live ones, unacked, where they were. Limits:

- settings are meant to be few (rate limits, revocations): `items` reads them all every time,
  and the queue grows with every `put` until some `items` compacts it;
- a reader holds the messages it reads, so readers take turns: each first declares the
  exclusive queue `aqueue.settings.reader` (one connection at a time may hold it; the others
  get RESOURCE_LOCKED and try again after 2-50 ms, for at most `READ_WAIT` seconds) and deletes
  it when done, or its connection's end frees it. Without it, readers at the same moment (say
  workers starting together) each saw only the messages the others did not hold;
- "most recent" compares the clocks of the processes that made the changes: two changes of one
  key from different hosts within their clock skew may be ordered the wrong way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import aiormq
import anyio
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from ...exceptions import BrokerError
from ..base import Mailbox
from .connection import AMQPSettings, Link, amqp_errors, broker_error, released
from .headers import SETTING_DELETED, SETTING_EXPIRES, SETTING_KEY, SETTING_WRITTEN

__all__ = ["AMQPMailbox", "Subscription"]

logger = logging.getLogger("aqueue.amqp")

#: The longest `items` waits for other readers of the settings before it gives up.
READ_WAIT = 30.0

#: Messages a subscriber that does not read may fall behind by before new ones are dropped.
BUFFER = 1000


def _micros(seconds: float) -> int:
    return int(seconds * 1_000_000)


class Subscription:
    """The messages of one topic from the moment its queue was bound and consumed.

    Iterate it (`async for data in subscription`) or `await receive()`; one task reads it.
    """

    def __init__(self, mailbox: AMQPMailbox, topic: str) -> None:
        self._mailbox = mailbox
        self.topic = topic
        self.messages: deque[bytes] = deque()
        self._event = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self._queue = ""
        self._consumer = ""
        self.left = False
        #: Set while the queue is bound and consumed; cleared when its channel closes.
        self.live = asyncio.Event()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        if self.left:
            raise StopAsyncIteration
        return await self.receive()

    async def receive(self) -> bytes:
        """Return the next message, waiting for it (and consuming again after a reconnect)."""
        while True:
            if self.left:
                raise BrokerError("this subscription's context is closed")
            if self.messages:
                return self.messages.popleft()
            channel = self._channel
            if channel is None or channel.is_closed:
                await self._reopen()
                continue
            self._event.clear()
            await self._event.wait()

    async def _reopen(self) -> None:
        settings = self._mailbox.settings
        if self._mailbox.link.closed:
            raise BrokerError(f"the connection to {settings.display} is closed")
        logger.warning(
            "lost the subscription to mailbox topic %r; subscribing again "
            "(what was published meanwhile is lost)",
            self.topic,
        )
        await self.start()

    async def start(self) -> None:
        """Declare, bind and consume the queue on a new channel."""
        mailbox = self._mailbox
        channel = await mailbox.link.channel(confirms=False)
        try:
            async with amqp_errors(mailbox.settings, f"subscribe to {self.topic!r}"):
                await mailbox.declare_exchange(channel)
                declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
                queue = declared.queue or ""
                await channel.queue_bind(queue, mailbox.exchange, routing_key=self.topic)
                ok = await channel.basic_consume(queue, self._on_message, no_ack=True)
        except BaseException:
            await _close(channel)
            raise
        self._channel, self._queue, self._consumer = channel, queue, ok.consumer_tag or ""
        self.live.set()
        channel.closing.add_done_callback(lambda _: self._lost())

    def _lost(self) -> None:
        self.live.clear()
        self._event.set()

    async def _on_message(self, message: DeliveredMessage) -> None:
        if len(self.messages) < BUFFER:
            self.messages.append(message.body)
        self._event.set()

    async def stop(self) -> None:
        """Delete the queue and close the channel."""
        self.left = True
        self._event.set()
        channel, self._channel = self._channel, None
        if channel is None or channel.is_closed:
            return
        with anyio.CancelScope(shield=True):
            with released("delete a mailbox subscription queue"):
                # The consumer first: a queue deleted under it is a cancel that aiormq logs
                # as a warning at every worker's exit.
                await channel.basic_cancel(self._consumer)
                await channel.queue_delete(self._queue)
            await _close(channel)


async def _close(channel: AbstractChannel) -> None:
    with anyio.CancelScope(shield=True), released("close a channel"):
        await channel.close()


@dataclass(frozen=True, slots=True)
class _Change:
    tag: int
    key: str
    at: int
    expires: int | None
    deleted: bool
    value: bytes


def _change(message: DeliveredMessage) -> _Change | None:
    """Read a setting's change from a message (None: not one of ours)."""
    headers: dict[str, Any] = message.header.properties.headers or {}
    key, at, expires = (
        headers.get(SETTING_KEY),
        headers.get(SETTING_WRITTEN),
        headers.get(SETTING_EXPIRES),
    )
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if not isinstance(key, str) or not isinstance(at, int):
        return None
    return _Change(
        tag=message.delivery_tag or 0,
        key=key,
        at=at,
        expires=expires if isinstance(expires, int) else None,
        deleted=bool(headers.get(SETTING_DELETED)),
        value=message.body,
    )


def fold(changes: list[_Change], now: int) -> tuple[dict[str, bytes], list[int]]:
    """Return the live settings, and the delivery tags of the messages they make useless."""
    latest: dict[str, _Change] = {}
    for change in changes:  # in queue order: on equal times, the later one wins
        current = latest.get(change.key)
        if current is None or change.at >= current.at:
            latest[change.key] = change
    live: dict[str, bytes] = {}
    useless: list[int] = []
    for change in changes:
        expired = change.expires is not None and change.expires <= now
        if latest[change.key] is not change or change.deleted or expired:
            useless.append(change.tag)
        else:
            live[change.key] = change.value
    return live, useless


class AMQPMailbox(Mailbox):
    """Topics over a direct exchange, settings in a durable queue compacted as it is read."""

    def __init__(self, link: Link, settings: AMQPSettings) -> None:
        self.link = link
        self.settings = settings
        self.exchange = f"{settings.prefix}aqueue.mailbox"
        self.settings_queue = f"{settings.prefix}aqueue.settings"
        self._publisher: AbstractChannel | None = None
        self._lock = anyio.Lock()
        self._declared = -1  # the link generation the exchange and queue were declared on
        self._claimer: AbstractChannel | None = None
        self._reading = anyio.Lock()  # readers of this connection take turns too

    async def close(self) -> None:
        """Close the publishing channel (subscriptions end with the connection)."""
        channel, self._publisher = self._publisher, None
        if channel is not None and not channel.is_closed:
            await _close(channel)
        claimer, self._claimer = self._claimer, None
        if claimer is not None and not claimer.is_closed:
            await _close(claimer)

    async def declare_exchange(self, channel: AbstractChannel) -> None:
        """Declare the topics' exchange (idempotent)."""
        await channel.exchange_declare(self.exchange, exchange_type="direct", durable=True)

    async def _channel(self) -> aiormq.Channel:
        """Return the confirming channel of `publish` and `put`, exchange and queue declared."""
        async with self._lock:
            channel = self._publisher
            if channel is None or channel.is_closed:
                channel = self._publisher = await self.link.channel(confirms=True)
            if self._declared != self.link.generation:
                await self.declare_exchange(channel)
                await channel.queue_declare(
                    self.settings_queue, durable=True, arguments={"x-queue-type": "classic"}
                )
                self._declared = self.link.generation
            return cast(aiormq.Channel, channel)

    async def _publish(
        self, action: str, exchange: str, routing_key: str, body: bytes, props: Any
    ) -> None:
        """Publish with a confirm; once more on a new connection if the first one dropped."""
        for attempt in (1, 2):
            try:
                async with amqp_errors(self.settings, action):
                    channel = await self._channel()
                    confirm = await channel.basic_publish(
                        body, exchange=exchange, routing_key=routing_key, properties=props
                    )
            except BrokerError:
                self._declared = -1  # a channel error may mean a deleted exchange or queue
                if attempt == 2 or self.link.closed:
                    raise
                continue
            if not isinstance(confirm, spec.Basic.Ack):
                raise broker_error(self.settings, action, ValueError("RabbitMQ refused it"))
            return

    async def publish(self, topic: str, data: bytes) -> None:
        """Send `data` to the queues bound with `topic` now: every current subscriber."""
        await self._publish("publish to the mailbox", self.exchange, topic, data, None)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Receive the topic's messages from the moment its queue is bound and consumed."""
        subscription = Subscription(self, topic)
        try:
            await subscription.start()
            yield subscription
        finally:
            await subscription.stop()

    async def _change(
        self, key: str, value: bytes, expires: int | None, *, deleted: bool = False
    ) -> None:
        headers: dict[str, Any] = {SETTING_KEY: key, SETTING_WRITTEN: _micros(time.time())}
        if expires is not None:
            headers[SETTING_EXPIRES] = expires
        if deleted:
            headers[SETTING_DELETED] = True
        props = spec.Basic.Properties(delivery_mode=2, headers=headers)
        await self._publish("store a setting", "", self.settings_queue, value, props)

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a setting, for `ttl` seconds or for good (ttl <= 0 removes it)."""
        if ttl is not None and ttl <= 0:
            await self.delete(key)
            return
        expires = None if ttl is None else _micros(time.time() + ttl)
        await self._change(key, value, expires)

    async def claim(self, key: str, ttl: float) -> bool:
        """Declare the exclusive queue `<prefix>aqueue.claim.<key>`, expiring after `ttl`.

        RabbitMQ lets one connection at a time hold an exclusive queue's name: the others get
        RESOURCE_LOCKED (which closes their claiming channel; the next claim opens another).
        The claim lasts `ttl` seconds, or until the holder's connection closes.
        """
        async with self._lock:
            channel = self._claimer
            if channel is None or channel.is_closed:
                channel = self._claimer = await self.link.channel(confirms=False)
        arguments: dict[str, Any] = {"x-expires": max(1, math.ceil(ttl * 1000))}
        async with amqp_errors(self.settings, "claim a key"):
            try:
                await channel.queue_declare(
                    f"{self.settings.prefix}aqueue.claim.{key}", exclusive=True, arguments=arguments
                )
            except aiormq.exceptions.ChannelLockedResource:
                return False
        return True

    async def delete(self, key: str) -> None:
        """Remove a setting (a tombstone, dropped by the next `items`)."""
        await self._change(key, b"", None, deleted=True)

    async def items(self, prefix: str) -> dict[str, bytes]:
        """Return every live setting whose key starts with `prefix`; compact the queue."""
        await self._channel()  # declared
        async with self._reading, self._read_turn():
            channel = await self.link.channel(confirms=False)
            try:
                async with amqp_errors(self.settings, "read the settings"):
                    changes, junk = await self._read_all(channel)
                    live, useless = fold(changes, _micros(time.time()))
                    for tag in [*junk, *useless]:
                        await channel.basic_ack(tag)
            finally:
                await _close(channel)  # the live ones go back, in place
        return {key: value for key, value in live.items() if key.startswith(prefix)}

    @asynccontextmanager
    async def _read_turn(self) -> AsyncIterator[None]:
        """Hold `aqueue.settings.reader` (an exclusive queue) while reading the settings."""
        name = f"{self.settings_queue}.reader"
        deadline = anyio.current_time() + READ_WAIT
        pause = 0.002
        while True:
            channel = await self.link.channel(confirms=False)
            async with amqp_errors(self.settings, "wait for other readers of the settings"):
                try:
                    await channel.queue_declare(name, exclusive=True)
                    break
                except aiormq.exceptions.ChannelLockedResource:  # it closed the channel
                    pass
            if anyio.current_time() > deadline:
                raise broker_error(
                    self.settings,
                    "read the settings",
                    TimeoutError(f"another reader held them for over {READ_WAIT:.0f} s"),
                )
            await anyio.sleep(pause)  # no notification when an exclusive queue is freed
            pause = min(pause * 2, 0.05)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True), released("free the settings"):
                await channel.queue_delete(name)
            await _close(channel)

    async def _read_all(self, channel: AbstractChannel) -> tuple[list[_Change], list[int]]:
        changes: list[_Change] = []
        junk: list[int] = []
        while True:
            message = await channel.basic_get(self.settings_queue)
            if not isinstance(message.delivery, spec.Basic.GetOk):
                return changes, junk
            change = _change(message)
            if change is None:
                junk.append(message.delivery_tag or 0)
            else:
                changes.append(change)
