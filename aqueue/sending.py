"""Producing messages: what `delay`, `apply_async`, `send_task` and `delay_many` do.

The call options are declared once, in `options.SendOptions`. A call with none of them (every
`delay()`) takes a short path that builds one message body directly.
"""

from __future__ import annotations

import datetime as dt
import difflib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Unpack

from .drivers.base import Broker, ResultBackend
from .events.emitter import announce_sent
from .exceptions import ConfigurationError
from .formats import packer
from .interfaces import AppLike, TaskLike
from .message import Envelope, OutgoingMessage, encode_body, new_id
from .options import ManySendOptions, SendOptions
from .result import AsyncResult
from .routing import route
from .signing import signer_for
from .tracing import AVAILABLE as TRACING
from .tracing import describe_send, producer_span, tracer_for

__all__ = [
    "Call",
    "plain_message",
    "plain_result",
    "priority_for",
    "send",
    "send_calls",
    "send_many",
    "send_plain",
]


async def send(
    app: AppLike,
    name: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **options: Unpack[SendOptions],
) -> AsyncResult[Any]:
    """Send one invocation of task `name` (it need not be registered in this process)."""
    _check(options, _SEND_OPTIONS)
    if not any(value is not None for value in options.values()):
        return await send_plain(app, name, args or (), kwargs or {})
    task_id = options.pop("task_id", None)
    shared: ManySendOptions = options  # what is left once task_id is out
    (result,) = await send_many(
        app, name, [(args or (), kwargs or {})], task_ids=[task_id] if task_id else None, **shared
    )
    return result


async def send_many(
    app: AppLike,
    name: str,
    calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
    *,
    task_ids: Sequence[str] | None = None,
    **options: Unpack[ManySendOptions],
) -> list[AsyncResult[Any]]:
    """Send many invocations of one task, as `(args, kwargs)` pairs, in one publish.

    Every message is encoded (and refused, if it must be) before any is sent.
    """
    _check(options, _MANY_SEND_OPTIONS)
    tracer = tracer_for(app.conf) if TRACING else None
    if tracer is not None:  # opentelemetry installed and configured: aqueue/tracing.py
        headers = dict(options.get("headers") or {})
        with producer_span(tracer, name, headers) as span:
            traced: ManySendOptions = {**options, "headers": headers}
            return await _send_many(app, name, calls, task_ids, traced, span)
    return await _send_many(app, name, calls, task_ids, options)


async def _send_many(
    app: AppLike,
    name: str,
    calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
    task_ids: Sequence[str] | None,
    options: ManySendOptions,
    span: Any = None,
) -> list[AsyncResult[Any]]:
    broker, backend = await _connected(app)
    task = app.tasks.get(name)
    now = time.time()
    when = _eta(now, options.get("countdown"), options.get("eta"))
    until = _expires(now, options.get("expires"))
    extra = {
        **(backend.message_headers() if backend else {}),
        **(options.get("headers") or {}),
    }
    priority = priority_for(app, task, options.get("priority"))
    queue = options.get("queue")
    signer = signer_for(app.conf)
    pack = packer(app.conf.task_serializer)
    messages: list[OutgoingMessage] = []
    for index, (args, kwargs) in enumerate(calls):
        envelope = Envelope(
            id=task_ids[index] if task_ids else new_id(),
            task=name,
            args=list(args),
            kwargs=dict(kwargs),
            eta=when,
            expires=until,
            headers=extra,
        )
        body = envelope.encode(app.conf.message_max_bytes, pack)
        messages.append(
            OutgoingMessage(
                id=envelope.id,
                queue=_queue_for(app, task, name, envelope.args, envelope.kwargs, queue),
                body=body if signer is None else signer.sign(body, when),
                eta=when,
                priority=priority,
            )
        )
    if span is not None:
        describe_send(span, messages)
    await broker.publish(messages)
    if app.conf.task_send_sent_event:
        await announce_sent(broker, name, messages)
    ignored = _ignored(app, task)
    return [AsyncResult(message.id, app, task_name=name, ignored=ignored) for message in messages]


class Call(NamedTuple):
    """One invocation of `send_calls`: a task by name, its arguments, id and call options."""

    name: str
    args: Sequence[Any]
    kwargs: Mapping[str, Any]
    task_id: str
    options: ManySendOptions


async def send_calls(app: AppLike, calls: Sequence[Call]) -> None:
    """Send invocations of any tasks, each with its own id and options, in one publish.

    What a workflow (`aqueue.canvas`) sends: a group's members, a chord's header. Every
    message is encoded (and refused, if it must be) before any is sent.
    """
    if not calls:
        return
    broker, backend = await _connected(app)
    base = dict(backend.message_headers()) if backend else {}
    signer = signer_for(app.conf)
    now = time.time()
    messages: list[OutgoingMessage] = []
    for name, args, kwargs, task_id, options in calls:
        _check(options, _MANY_SEND_OPTIONS)
        task = app.tasks.get(name)
        when = _eta(now, options.get("countdown"), options.get("eta"))
        envelope = Envelope(
            id=task_id,
            task=name,
            args=list(args),
            kwargs=dict(kwargs),
            eta=when,
            expires=_expires(now, options.get("expires")),
            headers={**base, **(options.get("headers") or {})},
        )
        body = envelope.encode(app.conf.message_max_bytes)
        queue = _queue_for(app, task, name, envelope.args, envelope.kwargs, options.get("queue"))
        messages.append(
            OutgoingMessage(
                id=task_id,
                queue=queue,
                body=body if signer is None else signer.sign(body, when),
                eta=when,
                priority=priority_for(app, task, options.get("priority")),
            )
        )
    await broker.publish(messages)


async def send_plain(
    app: AppLike, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> AsyncResult[Any]:
    """Send one invocation with no call options (`delay()`): `send_many`'s work, no lists."""
    tracer = tracer_for(app.conf) if TRACING else None
    if tracer is not None:  # opentelemetry installed and configured: aqueue/tracing.py
        return (await send_many(app, name, [(args, kwargs)]))[0]
    opened = app.connected()  # open (every call but the first): no coroutine to make
    broker, backend = opened if opened is not None else await _connected(app)
    message, task = plain_message(app, backend, name, args, kwargs)
    await broker.publish((message,))
    if app.conf.task_send_sent_event:
        await announce_sent(broker, name, (message,))
    return AsyncResult(message.id, app, task_name=name, ignored=_ignored(app, task))


def plain_message(
    app: AppLike,
    backend: ResultBackend | None,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> tuple[OutgoingMessage, TaskLike | None]:
    """Build the message of a call without call options (`delay()`); return it and the task.

    Blocking and thread-safe (no I/O): the sync API builds it in its caller's thread. It does
    what `priority_for` and `_queue_for` do, the task's options read once.
    """
    task = app.tasks.get(name)
    conf = app.conf
    options = task.options if task is not None else None
    priority = options.priority if options is not None else None
    if priority is None:
        priority = conf.task_default_priority
    elif isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        priority_for(app, task, priority)  # raises, as send_many would (what fails first)
    message_id = new_id()
    args, kwargs = list(args), dict(kwargs)
    routes = conf.task_routes
    queue = (
        (route(routes, name, args, kwargs) if routes is not None else None)
        or (options.queue if options is not None else None)
        or conf.task_default_queue
    )
    body = encode_body(
        message_id,
        name,
        args,
        kwargs,
        None,
        None,
        0,
        dict(backend.message_headers()) if backend is not None else {},
        conf.message_max_bytes,
        packer(conf.task_serializer),
    )
    signer = signer_for(conf)
    if signer is not None:
        body = signer.sign(body)
    return OutgoingMessage(message_id, queue, body, None, priority), task


def plain_result(
    app: AppLike, name: str, message_id: str, task: TaskLike | None
) -> AsyncResult[Any]:
    """Return the result of a message `plain_message` made, once sent."""
    return AsyncResult(message_id, app, task_name=name, ignored=_ignored(app, task))


_SEND_OPTIONS = frozenset(SendOptions.__optional_keys__)
_MANY_SEND_OPTIONS = frozenset(ManySendOptions.__optional_keys__)


def _check(options: Mapping[str, Any], allowed: frozenset[str]) -> None:
    # The options are typed for mypy; an untyped caller's misspelt one must not pass unseen.
    for name in options:
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown call option {name!r}{hint}")


async def _connected(app: AppLike) -> tuple[Broker, ResultBackend | None]:
    opened = app.connected()
    while opened is None:  # the app closed again between the two calls: open it again
        await app.broker()
        opened = app.connected()
    return opened


def _ignored(app: AppLike, task: TaskLike | None) -> bool:
    return task.ignore_result if task is not None else app.conf.task_ignore_result


def _queue_for(
    app: AppLike,
    task: TaskLike | None,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    queue: str | None,
) -> str:
    if queue:
        return queue
    routed = route(app.conf.task_routes, name, args, kwargs)
    if routed:
        return routed
    if task is not None and task.options.queue:
        return task.options.queue
    return app.conf.task_default_queue


def priority_for(app: AppLike, task: TaskLike | None, priority: int | None) -> int:
    """Return the priority a message gets: the call's, else the task's, else the default."""
    if priority is None and task is not None:
        priority = task.options.priority
    if priority is None:
        return app.conf.task_default_priority
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise ConfigurationError(f"priority must be a whole number from 0 to 9, not {priority!r}")
    return priority


def _timestamp(value: dt.datetime | float) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # naive datetimes are UTC, as in Celery (enable_utc)
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    return float(value)


def _eta(now: float, countdown: float | None, eta: dt.datetime | float | None) -> float | None:
    if countdown is not None and eta is not None:
        raise ConfigurationError("give countdown or eta, not both")
    if countdown is not None:
        return now + float(countdown) if countdown > 0 else None
    return _timestamp(eta) if eta is not None else None


def _expires(now: float, expires: dt.datetime | float | None) -> float | None:
    if expires is None:
        return None
    if isinstance(expires, dt.datetime):
        return _timestamp(expires)
    return now + float(expires)
