"""`app.control`: commands to live workers, and their replies (Celery's remote control).

A command is a msgpack map published on the mailbox topic `control.broadcast`:

    {"v": 1, "id": str, "command": str, "args": map, "reply_to": str | None,
     "destination": [hostname, ...] | None}

Every worker listening runs it (or ignores it if it is not among `destination`) and publishes
`{"id", "hostname", "ok", "result", "error"}` on `reply_to`. The asker subscribes to its reply
topic before it sends, and gathers replies until `timeout`, or until every named destination
answered.

Changes that must outlive a worker's restart (rate limits, revocations) are also written to the
mailbox's settings, which workers read when they start.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
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

__all__ = ["BROADCAST", "Control", "Inspect", "Reply"]

BROADCAST = "control.broadcast"
RATE_LIMIT_PREFIX = "rate_limit."
REVOKED_PREFIX = "revoked."


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
    ) -> list[Reply]:
        """Send `command` to the workers (all, or `destination`); gather replies for `timeout`."""
        mailbox = (await self.app.broker()).mailbox()
        command_id, reply_to = uuid.uuid4().hex, f"control.reply.{uuid.uuid4().hex}"
        message = {
            "v": 1,
            "id": command_id,
            "command": command,
            "args": args or {},
            "reply_to": reply_to if reply else None,
            "destination": list(destination) if destination else None,
        }
        data = codec.pack(message, where="command")
        if not reply:
            await mailbox.publish(BROADCAST, data)
            return []
        replies: list[Reply] = []
        async with mailbox.subscribe(reply_to) as incoming:
            await mailbox.publish(BROADCAST, data)
            with anyio.move_on_after(timeout):
                async for raw in incoming:
                    answer = _reply(raw, command_id)
                    if answer is not None:
                        replies.append(answer)
                        if destination and {r.hostname for r in replies} >= set(destination):
                            break
        return replies

    async def ping(
        self, *, destination: Sequence[str] | None = None, timeout: float = 1.0
    ) -> list[Reply]:
        """Ask every worker (or `destination`) to answer "pong"."""
        return await self.broadcast("ping", destination=destination, timeout=timeout)

    def inspect(self, *, destination: Sequence[str] | None = None, timeout: float = 1.0) -> Inspect:
        """Return an inspector: `await app.control.inspect().active()`, as in Celery."""
        return Inspect(self, destination, timeout)

    async def rate_limit(
        self,
        task_name: str,
        rate: str | float | None,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
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
        return await self.broadcast("rate_limit", args, destination=destination, timeout=timeout)

    async def revoke(
        self, task_id: str, *, terminate: bool = False, timeout: float = 1.0, reply: bool = True
    ) -> list[Reply]:
        """Stop a task from running (and, with `terminate`, cancel it if it runs now).

        The revocation is kept (for `result_expires`) so workers started later honour it too,
        and the task's result says REVOKED at once unless it already finished.
        """
        mailbox = (await self.app.broker()).mailbox()
        ttl = self.app.conf.result_expires
        await mailbox.put(REVOKED_PREFIX + task_id, codec.pack({"terminate": terminate}), ttl)
        await self._mark_revoked(task_id)
        args = {"task_id": task_id, "terminate": terminate}
        return await self.broadcast("revoke", args, timeout=timeout, reply=reply)

    async def _mark_revoked(self, task_id: str) -> None:
        backend = await self.app.result_backend()
        if backend is None:
            return
        stored = await backend.fetch(task_id)
        if stored is not None and stored.state in states.READY_STATES:
            return
        meta = ResultMeta(exc_type="TaskRevoked", exc_message="revoked", date_done=time.time())
        await backend.store(
            task_id,
            states.REVOKED,
            sign_result(self.app.conf, meta.encode()),
            self.app.conf.result_expires,
            headers=backend.message_headers(),  # rpc:// keeps it only for its own reply queue
        )

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
    ) -> dict[str, dict[str, Any]]:
        """Return, by queue: its waiting, delayed, running and dead messages, and consumers.

        The counts come from the broker (`Broker.queue_stats`); the consumers are the workers
        that answered within `timeout` naming the queue among theirs. Without `queues`: the
        default queue and every queue a worker consumes.
        """
        replies = await self.broadcast("stats", destination=destination, timeout=timeout)
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
        self, *, destination: Sequence[str] | None = None, timeout: float = 1.0
    ) -> list[Reply]:
        """Ask workers for a warm shutdown (as their first SIGTERM would)."""
        return await self.broadcast("shutdown", destination=destination, timeout=timeout)


class Inspect:
    """Read-only questions to workers; each returns `{hostname: answer}`."""

    def __init__(self, control: Control, destination: Sequence[str] | None, timeout: float) -> None:
        self._control = control
        self._destination = destination
        self._timeout = timeout

    async def _ask(self, command: str) -> dict[str, Any]:
        replies = await self._control.broadcast(
            command, destination=self._destination, timeout=self._timeout
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


def _reply(raw: bytes, command_id: str) -> Reply | None:
    try:
        data = codec.unpack(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("id") != command_id:
        return None
    return Reply(
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
