"""The worker's side of the control plane: it answers `app.control` commands.

`ControlServer.run` subscribes to `control.broadcast` on the broker's mailbox and runs each
command meant for this worker: ping, active, scheduled, registered, stats, rate_limit, revoke,
shutdown, and `suspect`, which workers send each other (`tell_suspect`). Before it listens, it
loads what must outlive a restart: revoked task ids, rate limits changed at runtime, and the
task names suspected of killing their process.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskStatus

from .. import codec
from ..control import (
    BROADCAST,
    RATE_LIMIT_PREFIX,
    REVOKED_MANY_PREFIX,
    REVOKED_PREFIX,
    SUSPECT_PREFIX,
    command_message,
)
from ..exceptions import AqueueError, ConfigurationError
from ..throttle import parse_rate

if TYPE_CHECKING:
    from ..drivers.base import Mailbox
    from ..interfaces import AppLike

__all__ = [
    "MAX_SUSPECT_WINDOW",
    "ControlServer",
    "Revocations",
    "Suspects",
    "WorkerView",
    "tell_suspect",
]

logger = logging.getLogger("aqueue.worker")

#: The longest a worker spends sending one reply (shielded from its own shutdown).
REPLY_TIMEOUT = 5.0
#: The longest a `suspect` command or stored suspect is believed (seconds from now), whatever
#: it says; how long a worker suspects a task that killed its process is the setting
#: `worker_suspect_window` (60 s).
MAX_SUSPECT_WINDOW = 3600.0


class Revocations:
    """Revoked task ids this worker knows, each until it expires."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def add(self, task_id: str, ttl: float) -> None:
        """Revoke `task_id` for `ttl` seconds."""
        self._until[task_id] = time.time() + ttl
        if len(self._until) % 1000 == 0:
            now = time.time()
            self._until = {key: until for key, until in self._until.items() if until > now}

    def __contains__(self, task_id: object) -> bool:
        if not self._until:  # as a rule: asked of every task, no clock read when none is
            return False
        until = self._until.get(task_id) if isinstance(task_id, str) else None
        return until is not None and until > time.time()

    def __len__(self) -> int:
        return len(self._until)


class Suspects:
    """Task names that killed a quarantine process lately, each until a time (epoch seconds)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def add(self, task_name: str, until: float) -> None:
        """Suspect `task_name` until `until` (never beyond `MAX_SUSPECT_WINDOW` from now)."""
        until = min(until, time.time() + MAX_SUSPECT_WINDOW)
        if until > self._until.get(task_name, 0.0):
            self._until[task_name] = until

    def __bool__(self) -> bool:
        return bool(self._until)

    def report(self) -> dict[str, float]:
        """Each task suspected now, with the seconds its suspicion has left (`inspect stats`)."""
        now = time.time()
        return {name: round(until - now, 1) for name, until in self._until.items() if until > now}

    def __contains__(self, task_name: object) -> bool:
        if not self._until or not isinstance(task_name, str):  # as a rule: none is
            return False
        until = self._until.get(task_name)
        if until is None:
            return False
        if until <= time.time():
            del self._until[task_name]
            return False
        return True


async def tell_suspect(mailbox: Mailbox, task_name: str, until: float) -> None:
    """Tell the workers, and those that start before `until`, that `task_name` kills."""
    message = command_message(uuid.uuid4().hex, "suspect", {"task": task_name, "until": until})
    try:
        ttl = max(until - time.time(), 0.001)
        await mailbox.put(SUSPECT_PREFIX + task_name, codec.pack(until), ttl=ttl)
        await mailbox.publish(BROADCAST, message)
    except AqueueError as exc:
        logger.warning("Could not tell the other workers that %s kills: %s", task_name, exc)


class WorkerView(Protocol):
    """What the control plane sees of the worker it serves, and the few things it may do."""

    @property
    def app(self) -> AppLike:
        """The worker's app (its tasks and settings)."""
        ...

    @property
    def hostname(self) -> str:
        """The worker's node name."""
        ...

    @property
    def revoked(self) -> Revocations:
        """The task ids this worker knows are revoked."""
        ...

    @property
    def suspects(self) -> Suspects:
        """The task names this worker runs in quarantine (they killed a process lately)."""
        ...

    def active(self) -> list[dict[str, Any]]:
        """Describe the tasks running now."""
        ...

    def held(self) -> list[dict[str, Any]]:
        """Describe the tasks held until their ETA."""
        ...

    def stats(self) -> dict[str, Any]:
        """Return the worker's counters."""
        ...

    def set_rate_limit(self, task_name: str, rate: str | float | None) -> str:
        """Change a task's rate limit; return its scope."""
        ...

    def terminate(self, task_id: str) -> bool:
        """Cancel a running task; return whether it was running here."""
        ...

    def stop(self, *, now: bool = False) -> None:
        """Stop the worker (warm, or cold with `now`)."""
        ...


class ControlServer:
    """Runs control commands for one worker."""

    def __init__(self, worker: WorkerView, mailbox: Mailbox) -> None:
        self.worker = worker
        self.mailbox = mailbox
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "ping": self._ping,
            "active": self._active,
            "scheduled": self._scheduled,
            "registered": self._registered,
            "stats": self._stats,
            "rate_limit": self._rate_limit,
            "revoke": self._revoke,
            "shutdown": self._shutdown,
            "suspect": self._suspect,
        }

    async def load(self) -> None:
        """Apply the revocations, suspects and rate limits set while this worker was not running."""
        await self._load_revocations()
        await self._load_suspects()
        await self._load_rate_limits()

    async def _load_revocations(self) -> None:
        ttl = self.worker.app.conf.result_expires
        for key in await self.mailbox.items(REVOKED_PREFIX):
            self.worker.revoked.add(key[len(REVOKED_PREFIX) :], ttl)
        for value in (await self.mailbox.items(REVOKED_MANY_PREFIX)).values():
            try:  # anyone may have written anything there
                ids = _task_ids(codec.unpack(value).get("ids"))
            except (ValueError, AttributeError):
                logger.warning("Ignored a malformed stored revocation")
                continue
            for task_id in ids:
                self.worker.revoked.add(task_id, ttl)

    async def _load_suspects(self) -> None:
        for key, value in (await self.mailbox.items(SUSPECT_PREFIX)).items():
            task = key[len(SUSPECT_PREFIX) :]
            if task not in self.worker.app.tasks:
                continue
            try:  # anyone may have written anything there
                self.worker.suspects.add(task, _until(codec.unpack(value)))
            except ValueError:
                logger.warning("Ignored a malformed stored suspect")

    async def _load_rate_limits(self) -> None:
        for key, value in (await self.mailbox.items(RATE_LIMIT_PREFIX)).items():
            task = key[len(RATE_LIMIT_PREFIX) :]
            if task in self.worker.app.tasks:
                try:  # anyone may have written anything there: check it as a command would
                    rate = codec.unpack(value)
                    parse_rate(rate)
                except (ValueError, ConfigurationError) as exc:
                    logger.warning(
                        "Ignored the stored rate limit of %s (%s); set it again with "
                        "`aqueue control APP rate_limit TASK RATE`",
                        task,
                        str(exc)[:200],
                    )
                    continue
                self.worker.set_rate_limit(task, rate)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Answer commands until cancelled."""
        async with self.mailbox.subscribe(BROADCAST) as commands:
            task_status.started()
            async for raw in commands:
                await self._one(raw)

    async def _one(self, raw: bytes) -> None:
        try:
            command = codec.unpack(raw)
            name, args = command["command"], command.get("args") or {}
            destination, reply_to = command.get("destination"), command.get("reply_to")
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("Ignored a malformed control command")
            return
        if destination and self.worker.hostname not in destination:
            return
        handler = self._handlers.get(name)
        reply: dict[str, Any] = {"id": command.get("id"), "hostname": self.worker.hostname}
        try:
            if handler is None:
                raise ValueError(f"unknown control command {name!r}")
            reply.update(ok=True, result=await handler(args))
        except Exception as exc:
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        if reply_to:
            # Shielded (briefly): a command that ran gets its answer even when it stops this
            # worker, whose shutdown would otherwise cancel the reply on its way out.
            with anyio.CancelScope(shield=True), anyio.move_on_after(REPLY_TIMEOUT):
                await self.mailbox.publish(reply_to, codec.pack(reply, where="reply"))

    async def _ping(self, args: dict[str, Any]) -> str:
        return "pong"

    async def _active(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self.worker.active()

    async def _scheduled(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self.worker.held()

    async def _registered(self, args: dict[str, Any]) -> list[str]:
        return sorted(self.worker.app.tasks)

    async def _stats(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.worker.stats()

    async def _rate_limit(self, args: dict[str, Any]) -> str:
        task, rate = str(args["task"]), args.get("rate")
        if task not in self.worker.app.tasks:
            raise LookupError(f"no task named {task!r} is registered on this worker")
        parse_rate(rate)
        scope = self.worker.set_rate_limit(task, rate)
        return f"rate limit of {task} set to {rate or 'none'} ({scope})"

    async def _revoke(self, args: dict[str, Any]) -> str:
        terminate, ttl = bool(args.get("terminate")), self.worker.app.conf.result_expires
        if "task_ids" in args:  # a batch: `Control.revoke` of a list
            ids = _task_ids(args["task_ids"])
            for task_id in ids:
                self.worker.revoked.add(task_id, ttl)
            ended = sum(self.worker.terminate(task_id) for task_id in ids) if terminate else 0
            return f"revoked {len(ids)} tasks" + (f", terminated {ended}" if ended else "")
        task_id = str(args["task_id"])
        self.worker.revoked.add(task_id, ttl)
        if terminate and self.worker.terminate(task_id):
            return f"revoked {task_id} and terminated it"
        return f"revoked {task_id}"

    async def _suspect(self, args: dict[str, Any]) -> str:
        task, until = str(args["task"]), _until(args.get("until"))
        if task not in self.worker.app.tasks:
            raise LookupError(f"no task named {task!r} is registered on this worker")
        self.worker.suspects.add(task, until)
        return f"{task} runs in quarantine for {max(until - time.time(), 0):.0f} s"

    async def _shutdown(self, args: dict[str, Any]) -> str:
        self.worker.stop()
        return "shutting down"


def _until(value: Any) -> float:
    """Check a suspicion's end (epoch seconds); raise ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("suspect's until must be a time in seconds since the epoch")
    return float(value)


def _task_ids(value: Any) -> list[str]:
    """Check a batch of revoked task ids (a list of str); raise ValueError otherwise."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("revoke's task_ids must be a list of task ids")
    return value
