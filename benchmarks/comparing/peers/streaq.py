"""streaq, on Redis (through coredis)."""

from __future__ import annotations

import contextlib
from typing import Any

from comparing.common import BULK_CHUNK, KINDS, Body, Producer, Tally, bodies, chunks, no_op


def make_worker(cfg: dict[str, Any], concurrency: int = 16) -> Any:
    from streaq import Worker

    return Worker(redis_url=cfg["url"], queue_name="bench", concurrency=concurrency)


def define(worker: Any, cfg: dict[str, Any], tasks: dict[str, Body]) -> dict[str, Any]:
    """Register the bench tasks; results kept 5 minutes (streaq's default) or not at all."""
    ttl = 300 if cfg["results"] else 0  # ttl=0: no result stored
    return {kind: worker.task(name=f"bench.{kind}", ttl=ttl)(fn) for kind, fn in tasks.items()}


def serve(cfg: dict[str, Any], tally: Tally) -> None:
    worker = make_worker(cfg, concurrency=cfg["concurrency"])
    define(worker, cfg, bodies(tally))
    worker.run_sync()  # what `streaq run module:worker` does (anyio's asyncio backend)


class StreaqProducer(Producer):
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.worker = make_worker(cfg)
        self.tasks = define(self.worker, cfg, {kind: no_op() for kind in KINDS})
        self.stack = contextlib.AsyncExitStack()
        self.bulk = self._bulk

    async def open(self) -> None:
        await self.stack.enter_async_context(self.worker)

    async def one(self, kind: str) -> None:
        await self.tasks[kind].enqueue()

    async def _bulk(self, kind: str, n: int) -> None:
        task = self.tasks[kind]
        for size in chunks(n, BULK_CHUNK):
            await self.worker.enqueue_many([task.enqueue() for _ in range(size)])

    async def round_trip(self) -> None:
        task = await self.tasks["noop"].enqueue()
        await task.result(timeout=30)  # waits on pub/sub

    async def aclose(self) -> None:
        await self.stack.aclose()
