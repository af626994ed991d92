"""The Redis broker's dead letters: listed, counted, retried and purged.

They are entries of the stream `<prefix>:{<queue>}:dead` (fields `b` body, `r` reason,
`d` detail, `t` time), and the hash `<dead>:info` counts the bytes they hold and the letters
dropped over the cap (the Lua `bury` in `scripts` adds and trims, under the cap of the
worker that dead-letters).
Retrying or purging one moves or deletes its entry and takes its bytes off the count, in one
script, so the count stays true.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from ..base import DeadLetter, DeadLetterStats
from . import scripts as lua
from .client import Script
from .consumer import QueueKeys, text

__all__ = ["dead_letters", "purge", "retry", "stats"]

#: How many dead letters one script moves or deletes.
BATCH = 256

_ID = re.compile(r"\d{1,20}-\d{1,20}")

_TAKE = Script(lua.TAKE_DEAD)
_PURGE_ALL = Script(lua.PURGE_DEAD)


def _info(keys: QueueKeys) -> str:
    return f"{keys.dead}:info"


async def dead_letters(client: aioredis.Redis, keys: QueueKeys, limit: int) -> list[DeadLetter]:
    """Return the oldest dead letters of a queue, up to `limit`."""
    entries: Any = await client.xrange(keys.dead, count=limit)
    return [
        DeadLetter(
            queue=keys.queue,
            body=fields.get(b"b", b""),
            reason=_text(fields.get(b"r", b"")),
            detail=_text(fields.get(b"d", b"")),
            at=_time(fields.get(b"t")),
            id=text(entry_id),
        )
        for entry_id, fields in ((entry_id, fields or {}) for entry_id, fields in entries)
    ]


def _time(value: Any) -> float:
    try:
        at = float(value or 0)
    except ValueError:
        return 0.0
    return at if math.isfinite(at) else 0.0


def _text(value: Any) -> str:
    """Decode a field; anyone can XADD anything to the stream, so trust none of them."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def stats(client: aioredis.Redis, keys: QueueKeys) -> DeadLetterStats:
    """Return how many dead letters a queue keeps, their bytes, and how many were dropped."""
    pipe = client.pipeline(transaction=False)
    pipe.xlen(keys.dead)
    pipe.hmget(_info(keys), "bytes", "dropped")
    kept, (size, dropped) = await pipe.execute()
    return DeadLetterStats(int(kept), int(size or 0), int(dropped or 0))


async def retry(client: aioredis.Redis, keys: QueueKeys, ids: Sequence[str] | None) -> int:
    """Move dead letters (those in `ids`, else all) to the queue's priority-0 stream."""
    return await _take(client, keys, ids, [keys.stream(0)])


async def purge(client: aioredis.Redis, keys: QueueKeys, ids: Sequence[str] | None) -> int:
    """Delete dead letters (those in `ids`, else all)."""
    if ids is None:
        return int(await _PURGE_ALL(client, [keys.dead, _info(keys)], []))
    return await _take(client, keys, ids, [])


async def _take(
    client: aioredis.Redis, keys: QueueKeys, ids: Sequence[str] | None, stream: list[str]
) -> int:
    script_keys = [keys.dead, _info(keys), *stream]
    if ids is not None:
        wanted = [i for i in dict.fromkeys(ids) if _ID.fullmatch(i)]
        taken = 0
        for start in range(0, len(wanted), BATCH):
            taken += int(await _TAKE(client, script_keys, wanted[start : start + BATCH]))
        return taken
    # All of them: those there now (not those dead-lettered while this runs), a page at a time.
    newest: Any = await client.xrevrange(keys.dead, count=1)
    if not newest:
        return 0
    last, taken = text(newest[0][0]), 0
    while True:
        page: Any = await client.xrange(keys.dead, "-", last, count=BATCH)
        if not page:
            return taken
        taken += int(await _TAKE(client, script_keys, [text(e[0]) for e in page]))
