"""A consumer of several queues on a Redis Cluster: one claim and one blocking read per queue.

A script or a read may touch the keys of one hash slot only, and each queue is a slot of its
own (its `{queue}` hash tag). So where one server runs one claim script over every queue,
a cluster runs one per queue, pipelined per node (`ClusterClient`), and merges their replies
(`merge_claims`); and where one server blocks in one `XREADGROUP` over every stream, a
cluster blocks in one per queue, each on a connection of its own, at once (`read_each`).
The first read that returns ends the others with `CLIENT UNBLOCK` (they return as if they
timed out, with nothing taken); what one took before that is kept too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from .cluster import ClusterClient

if TYPE_CHECKING:
    from .client import LeanClient

__all__ = ["merge_claims", "read_each"]

#: How often an unblocking is tried again when it came before the read it ends had blocked
#: (the read went out on another connection a moment before), a millisecond apart.
_UNBLOCK_TRIES = 50


def _id_key(entry_id: Any) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def merge_claims(replies: Sequence[Any], limit: int) -> tuple[Any, ...]:
    """Merge the claim script's replies, one per queue, as one script over them all replies.

    Returns (kept entries, entries beyond `limit`, buried, next due, next check, robbed):
    each queue may give up to `limit`; the best `limit` (priority first, then age, as one
    script orders them) are kept, the rest are for the caller to give back.
    """
    entries: list[tuple[Any, ...]] = []
    buried, taken, owners, unjudged = 0, 0, 0, 0
    next_due: float | None = None
    next_check: int | None = None
    for q, (found, dead, due, check, robbed) in enumerate(replies, start=1):
        entries.extend((q, *entry[1:]) for entry in found)
        buried += int(dead)
        if due is not None:
            next_due = float(due) if next_due is None else min(next_due, float(due))
        if check is not None:
            next_check = int(check) if next_check is None else min(next_check, int(check))
        taken, owners = taken + int(robbed[0]), owners + int(robbed[1])
        unjudged += int(robbed[2]) if len(robbed) > 2 else 0
    entries.sort(key=lambda entry: (-int(entry[1]), _id_key(entry[2])))
    robbed = [taken, owners, unjudged]
    return entries[:limit], entries[limit:], buried, next_due, next_check, robbed


async def read_each(
    readers: Sequence[LeanClient],
    hot: LeanClient,
    routes: Sequence[str],
    commands: Sequence[Sequence[Any]],
) -> list[Any]:
    """Run one blocking read per queue at once; return their replies' streams together.

    `routes` holds a key of each queue (its slot's node is where its read goes).
    """
    assert isinstance(hot, ClusterClient)
    reads = _Reads(hot, routes)
    async with anyio.create_task_group() as group:
        for index, reader in enumerate(readers):
            assert isinstance(reader, ClusterClient)
            group.start_soon(reads.read, index, reader, commands[index])
    if reads.errors and not reads.found:
        raise reads.errors[0]
    return reads.found


class _Reads:
    """The blocking reads of one `read_each` call."""

    def __init__(self, hot: ClusterClient, routes: Sequence[str]) -> None:
        self.hot = hot
        self.routes = routes
        self.found: list[Any] = []
        self.errors: list[BaseException] = []
        self.blocked: dict[int, int] = {}  # queue index -> the client id of its connection
        self.done: set[int] = set()
        self.stop = False

    async def read(self, index: int, reader: ClusterClient, command: Sequence[Any]) -> None:
        reply = None
        try:
            (client_id,) = await reader.execute_at(self.routes[index], ("CLIENT", "ID"))
            if self.stop:
                return
            self.blocked[index] = int(client_id)
            reply = await reader.execute(*command)
        except (RedisError, OSError) as exc:
            self.errors.append(exc)
        finally:
            self.done.add(index)
            self.blocked.pop(index, None)
        if reply:
            self.found.extend(reply)
        if not self.stop:
            self.stop = True
            with anyio.CancelScope(shield=True), contextlib.suppress(RedisError, OSError):
                await self._unblock_others()  # a read left blocked would hold up the rest

    async def _unblock_others(self) -> None:
        for index, client_id in list(self.blocked.items()):
            for _ in range(_UNBLOCK_TRIES):
                if index in self.done:
                    break
                (ended,) = await self.hot.execute_at(
                    self.routes[index], ("CLIENT", "UNBLOCK", client_id)
                )
                if isinstance(ended, Exception) or int(ended):
                    break
                await anyio.sleep(0.001)  # sent, not blocked yet: see _UNBLOCK_TRIES
