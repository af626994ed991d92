"""Confirmed publishing, pipelined: a batch goes out in one write, its confirms come back together.

aiormq's `basic_publish` writes one message per event-loop turn and socket call. For a batch,
this module takes the channel's lock once, registers a confirmation future per message on
aiormq's own bookkeeping (the channel's `delivery_tag`, `confirmations` and
`message_id_delivery_tag`, so confirms, nacks and returns resolve them as for `basic_publish`),
and writes the frames of the whole batch at once; then it awaits all the futures.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import aiormq
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from .._amqp import AMQP_ERRORS
from ..exceptions import BrokerError

__all__ = ["Outgoing", "confirm"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: where to, and what."""

    exchange: str
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties


def _frames(
    channel: aiormq.Channel, item: Outgoing
) -> list[spec.Basic.Publish | ContentHeader | ContentBody]:
    frames: list[spec.Basic.Publish | ContentHeader | ContentBody] = [
        spec.Basic.Publish(exchange=item.exchange, routing_key=item.routing_key, mandatory=True),
        ContentHeader(properties=item.properties, body_size=len(item.body)),
    ]
    size = channel.max_content_size
    body = item.body
    frames += [ContentBody(body[start : start + size]) for start in range(0, len(body), size)]
    return frames


async def _write(
    channel: aiormq.Channel, batch: Sequence[Outgoing]
) -> list[tuple[int, asyncio.Future[object]]]:
    """Write the batch in one frame buffer; return each message's delivery tag and future."""
    futures: list[tuple[int, asyncio.Future[object]]] = []
    async with channel.lock:
        frames: list[spec.Basic.Publish | ContentHeader | ContentBody] = []
        for item in batch:
            if not item.properties.message_id:  # aiormq maps returns by message id
                item.properties.message_id = uuid.uuid4().hex
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            future = channel.create_future()
            channel.confirmations[tag] = future
            channel.message_id_delivery_tag[item.properties.message_id] = tag
            futures.append((tag, future))
            frames += _frames(channel, item)
        try:
            await channel.write_queue.put(
                ChannelFrame.marshall(channel_number=channel.number, frames=frames)
            )
        except BaseException:
            # Tags were taken that RabbitMQ never saw: this channel's confirms are off by
            # as many now. It cannot be used again.
            await asyncio.shield(channel.close())
            raise
    return futures


async def confirm(
    channel: aiormq.Channel, batch: Sequence[Outgoing]
) -> tuple[list[Outgoing], BaseException | None]:
    """Publish `batch` (mandatory, confirmed).

    Return what a closed channel left unconfirmed, and why the channel closed. An unroutable
    message or a negative confirmation raises `BrokerError`.
    """
    try:
        futures = await _write(channel, batch)
    except AMQP_ERRORS as exc:
        return list(batch), exc
    results = await asyncio.gather(*(future for _, future in futures), return_exceptions=True)
    ids = channel.message_id_delivery_tag
    for (tag, _), item in zip(futures, batch, strict=True):
        if ids.get(item.properties.message_id or "") == tag:
            del ids[item.properties.message_id or ""]
    lost: list[Outgoing] = []
    reason: BaseException | None = None
    for item, result in zip(batch, results, strict=True):
        if isinstance(result, aiormq.exceptions.PublishError):
            raise BrokerError(
                f"RabbitMQ could not route a message to {item.routing_key!r} "
                f"(exchange {item.exchange!r}): was its queue deleted?"
            )
        if isinstance(result, aiormq.exceptions.DeliveryError):
            raise BrokerError(f"RabbitMQ refused a message for {item.routing_key!r} (nack)")
        if isinstance(result, BaseException):
            lost.append(item)  # the channel closed: neither confirmed nor refused
            reason = reason or result
    if lost:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
    return lost, reason
