"""`app.control`: commands to live workers, and their replies (Celery's remote control).

A command is a msgpack map published on the mailbox topic `control.broadcast`:

    {"v": 1, "id": str, "command": str, "args": map, "reply_to": str | None,
     "destination": [hostname, ...] | None}

Every worker listening runs it (or ignores it if it is not among `destination`) and publishes
`{"id", "hostname", "ok", "result", "error"}` on `reply_to`. The asker subscribes to its reply
topic before it sends, and gathers replies until `timeout`, or sooner: once every named
destination answered, or once `limit` workers answered (Celery's `limit`). With neither, it
cannot know how many workers there are, and gathers for the whole `timeout`.

Changes that must outlive a worker's restart (rate limits, revocations) are also written to the
mailbox's settings, which workers read when they start.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from . import codec, states
from .exceptions import NoReply
from .message import Envelope, InvalidMessage
from .result_meta import ResultMeta
from .signing import payload_of, sign_result
from .throttle import parse_rate

if TYPE_CHECKING:
    from .interfaces import AppLike

__all__ = ["BROADCAST", "Control", "Inspect", "Reply", "command_message"]

BROADCAST = "control.broadcast"
RATE_LIMIT_PREFIX = "rate_limit."
REVOKED_PREFIX = "revoked."
#: Settings of revocations in batches (`revoke` of a list): a msgpack map {"ids", "terminate"}.
REVOKED_MANY_PREFIX = "revoked_many."
#: Task names that killed a quarantine process lately (a worker's, `aqueue.worker.control`):
#: the value is when the suspicion ends (seconds since the epoch).
SUSPECT_PREFIX = "suspect."
#: The most task ids one revoke command (and one kept setting) carries.
REVOKE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Reply:
    """One worker's answer to a command."""

    hostname: str
    ok: bool
    result: Any = None
    error: str | None = None


class Control:
    """Remote control of the app's workers: `await app.control.ping()`."""

    def __init__(self, app: AppLike) -> None:
        self.app = app

    async def broadcast(
        self,
        command: str,
        args: dict[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        reply: bool = True,
        limit: int | None = None,
    ) -> list[Reply]:
        """Send `command` to the workers (all, or `destination`); gather replies.

        Returns when every worker of `destination` answered, when `limit` workers answered,
        or after `timeout` seconds, whichever comes first.
        """
        return await self._broadcast(command, [args or {}], destination, timeout, reply, limit)

    async def _broadcast(
        self,
        command: str,
        each_args: Sequence[dict[str, Any]],
        destination: Sequence[str] | None,
        timeout: float,
        reply: bool,
        limit: int | None = None,
    ) -> list[Reply]:
        """Send `command` once per args; gather the replies to all of them.

        Until every command was answered by every worker of `destination`, or by `limit`
        workers, or for `timeout` seconds.
        """
        _check_limit(limit)
        if isinstance(destination, str):
            raise TypeError(f"destination is a list of worker names, not {destination!r}")
        mailbox = (await self.app.broker()).mailbox()
        reply_to = f"control.reply.{uuid.uuid4().hex}"
        commands: dict[str, bytes] = {}
        for args in each_args:
            command_id = uuid.uuid4().hex
            commands[command_id] = command_message(
                command_id, command, args, reply_to if reply else None, destination
            )
        if not reply:
            for data in commands.values():
                await mailbox.publish(BROADCAST, data)
            return []
        replies: list[Reply] = []
        answered: dict[str, set[str]] = {command_id: set() for command_id in commands}
        async with mailbox.subscribe(reply_to) as incoming:
            for data in commands.values():
                await mailbox.publish(BROADCAST, data)
            with anyio.move_on_after(timeout):
                async for raw in incoming:
                    answer = _reply(raw, answered)
                    if answer is not None:
                        replies.append(answer[1])
                        answered[answer[0]].add(answer[1].hostname)
                        if _enough(answered.values(), destination, limit):
                            break
        return replies

    async def ping(
        self,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[Reply]:
        """Ask every worker (or `destination`) to answer "pong"."""
        return await self.broadcast("ping", destination=destination, timeout=timeout, limit=limit)

    def inspect(
        self,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> Inspect:
        """Return an inspector: `await app.control.inspect().active()`, as in Celery."""
        _check_limit(limit)
        return Inspect(self, destination, timeout, limit)

    async def rate_limit(
        self,
        task_name: str,
        rate: str | float | None,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[Reply]:
        """Change a task's rate limit on the workers, now and for workers started later.

        `rate` is `"10/m"`-style, or None / "0" to lift the limit. Given to every worker (no
        `destination`), the change is kept in the mailbox's settings, so a restarted worker
        picks it up.
        """
        self.app.get_task(task_name)  # NotRegistered for a name this app does not know
        parsed = parse_rate(rate)
        text = None if parsed is None else str(rate)
        if destination is None:
            mailbox = (await self.app.broker()).mailbox()
            await mailbox.put(RATE_LIMIT_PREFIX + task_name, codec.pack(text))
        args = {"task": task_name, "rate": text}
        return await self.broadcast(
            "rate_limit", args, destination=destination, timeout=timeout, limit=limit
        )

    async def revoke(
        self,
        task_id: str | Sequence[str],
        *,
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        timeout: float = 1.0,
        reply: bool = True,
        limit: int | None = None,
    ) -> list[Reply]:
        """Stop a task (or a list of tasks) from running (`terminate`: cancel it if it runs now).

        Given to every worker (no `destination`), the revocation is kept (for
        `result_expires`) so workers started later honour it too, and the task's result says
        REVOKED at once unless it already finished. Given to `destination` (as in Celery),
        only the workers named hear it: any other may still run the task, so neither is done
        (a named worker that drops the task stores REVOKED then). A list of ids (as in
        Celery) goes in a few commands of up to `REVOKE_BATCH` ids each, every worker
        replying to each command. The call returns once every worker of `destination` (or
        `limit` workers) answered every command, else after `timeout`.
        """
        _check_limit(limit)
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not ids:
            return []
        mailbox = (await self.app.broker()).mailbox()
        ttl = self.app.conf.result_expires
        batches = [ids[start : start + REVOKE_BATCH] for start in range(0, len(ids), REVOKE_BATCH)]
        if len(ids) == 1:
            each_args = [{"task_id": ids[0], "terminate": terminate}]
        else:
            each_args = [{"task_ids": batch, "terminate": terminate} for batch in batches]
        if destination is None:  # kept, for workers started later; the results say REVOKED
            value: dict[str, Any]
            for batch in batches:
                if len(ids) == 1:
                    key, value = REVOKED_PREFIX + ids[0], {"terminate": terminate}
                else:
                    key = f"{REVOKED_MANY_PREFIX}{uuid.uuid4().hex}"
                    value = {"ids": batch, "terminate": terminate}
                await mailbox.put(key, codec.pack(value), ttl)
                await self._mark_revoked(batch)
        return await self._broadcast("revoke", each_args, destination, timeout, reply, limit)

    async def _mark_revoked(self, task_ids: Sequence[str]) -> None:
        """Store REVOKED for each task that has not finished: the stores run concurrently."""
        backend = await self.app.result_backend()
        if backend is None:
            return
        found = await backend.fetch_many(task_ids)
        meta = ResultMeta(exc_type="TaskRevoked", exc_message="revoked", date_done=time.time())
        store = functools.partial(
            backend.store,
            state=states.REVOKED,
            payload=sign_result(self.app.conf, meta.encode()),
            ttl=self.app.conf.result_expires,
            headers=backend.message_headers(),  # rpc:// keeps it only for its own reply queue
        )
        async with anyio.create_task_group() as stores:
            for task_id, stored in zip(task_ids, found, strict=True):
                if stored is None or stored.state not in states.READY_STATES:
                    stores.start_soon(functools.partial(store, task_id))

    async def delayed(self, queue: str, limit: int = 100) -> list[dict[str, Any]]:
        """Describe the messages of `queue` the broker holds until they are due.

        Countdowns, ETAs and retries' delays, the soonest first: id, task, args, kwargs, due
        (POSIX time), priority.
        """
        broker = await self.app.broker()
        described = []
        for each in await broker.delayed(queue, limit):
            try:
                envelope = Envelope.decode(payload_of(each.body))
            except InvalidMessage:
                envelope = None
            described.append(
                {
                    "id": envelope.id if envelope else "?",
                    "task": envelope.task if envelope else "?",
                    "args": envelope.args if envelope else [],
                    "kwargs": envelope.kwargs if envelope else {},
                    "due": each.due,
                    "priority": each.priority,
                    "queue": queue,
                }
            )
        return described

    async def queues(
        self,
        queues: Sequence[str] | None = None,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Return, by queue: its waiting, delayed, running and dead messages, and consumers.

        The counts come from the broker (`Broker.queue_stats`); the consumers are the workers
        that answered within `timeout` naming the queue among theirs. Without `queues`: the
        default queue and every queue a worker consumes.
        """
        replies = await self.broadcast(
            "stats", destination=destination, timeout=timeout, limit=limit
        )
        workers: dict[str, list[str]] = {}
        for reply in replies:
            if reply.ok and isinstance(reply.result, dict):
                for queue in reply.result.get("queues") or ():
                    workers.setdefault(str(queue), []).append(reply.hostname)
        names = list(queues) if queues else sorted({self.app.conf.task_default_queue, *workers})
        broker = await self.app.broker()
        found: dict[str, dict[str, Any]] = {}
        for name in names:
            stats = await broker.queue_stats(name)
            found[name] = {
                "waiting": stats.waiting,
                "delayed": stats.delayed,
                "running": stats.running,
                "dead": stats.dead,
                "consumers": len(workers.get(name, ())),
                "workers": sorted(workers.get(name, ())),
            }
        return found

    async def shutdown(
        self,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[Reply]:
        """Ask workers for a warm shutdown (as their first SIGTERM would)."""
        return await self.broadcast(
            "shutdown", destination=destination, timeout=timeout, limit=limit
        )


class Inspect:
    """Read-only questions to workers; each returns `{hostname: answer}`."""

    def __init__(
        self,
        control: Control,
        destination: Sequence[str] | None,
        timeout: float,
        limit: int | None = None,
    ) -> None:
        self._control = control
        self._destination = destination
        self._timeout = timeout
        self._limit = limit

    async def _ask(self, command: str) -> dict[str, Any]:
        replies = await self._control.broadcast(
            command, destination=self._destination, timeout=self._timeout, limit=self._limit
        )
        return {r.hostname: r.result if r.ok else {"error": r.error} for r in replies}

    async def ping(self) -> dict[str, Any]:
        """Return every worker's "pong"."""
        return await self._ask("ping")

    async def active(self) -> dict[str, Any]:
        """Return the tasks each worker runs now."""
        return await self._ask("active")

    async def scheduled(self) -> dict[str, Any]:
        """Return the tasks each worker holds for later (for a rate limit or a place)."""
        return await self._ask("scheduled")

    async def registered(self) -> dict[str, Any]:
        """Return the task names each worker knows."""
        return await self._ask("registered")

    async def stats(self) -> dict[str, Any]:
        """Return each worker's counters and settings."""
        return await self._ask("stats")


def command_message(
    command_id: str,
    command: str,
    args: dict[str, Any],
    reply_to: str | None = None,
    destination: Sequence[str] | None = None,
) -> bytes:
    """Encode one control command as workers read it from `BROADCAST`."""
    message = {
        "v": 1,
        "id": command_id,
        "command": command,
        "args": args,
        "reply_to": reply_to,
        "destination": list(destination) if destination else None,
    }
    return codec.pack(message, where="command")


def _check_limit(limit: int | None) -> None:
    """Refuse a `limit` that is not a positive number of workers, in one line."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit is a number of workers (1 or more), not {limit!r}")


def _enough(
    answered: Iterable[set[str]], destination: Sequence[str] | None, limit: int | None
) -> bool:
    """Whether the replies so far end the gathering.

    So they do once every command (`answered`: the workers that answered each) was answered
    by every worker of `destination`, or by `limit` workers.
    """
    hosts = list(answered)
    if destination and all(each >= set(destination) for each in hosts):
        return True
    return limit is not None and all(len(each) >= limit for each in hosts)


def _reply(raw: bytes, command_ids: Container[str]) -> tuple[str, Reply] | None:
    """Return the id of the command answered and the reply, or None for another message."""
    try:
        data = codec.unpack(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(command_id := data.get("id"), str):
        return None
    if command_id not in command_ids:
        return None
    return command_id, Reply(
        hostname=str(data.get("hostname", "?")),
        ok=bool(data.get("ok")),
        result=data.get("result"),
        error=data.get("error"),
    )


def require_replies(
    replies: list[Reply], destination: Sequence[str] | None, timeout: float
) -> None:
    """Raise `NoReply` unless someone (and every named destination) answered."""
    if destination:
        missing = sorted(set(destination) - {r.hostname for r in replies})
        if missing:
            raise NoReply(f"no reply from {', '.join(missing)} within {timeout:g}s")
    elif not replies:
        raise NoReply(f"no worker replied within {timeout:g}s; is one running on this broker?")
