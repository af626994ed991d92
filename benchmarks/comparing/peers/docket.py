"""docket (pydocket), on Redis."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from comparing.common import BULK_CHUNK, KINDS, Producer, Tally, bodies, chunks, no_op

DOCKET_CONNECTIONS = 2000  # docket's Redis pool (see make_docket)


def make_docket(cfg: dict[str, Any]) -> Any:
    from docket import Docket

    # execution_ttl: how long a finished task's state and result are kept (15 min by
    # default); 0 keeps none, which is results off.
    ttl = timedelta(minutes=15) if cfg["results"] else timedelta(0)
    # redis-py 8 caps a pool at 100 connections, and a docket worker holds one per running
    # task: at concurrency 500 it fails with "Too many connections" unless the URL raises it.
    sep = "&" if "?" in cfg["url"] else "?"
    url = f"{cfg['url']}{sep}max_connections={DOCKET_CONNECTIONS}"
    return Docket(name="bench", url=url, execution_ttl=ttl)


def serve(cfg: dict[str, Any], tally: Tally) -> None:
    from docket import Worker

    async def main() -> None:
        # What `docket worker --concurrency C` runs (Worker.run), less its signal handlers
        # and health/metrics servers; its CLI's check interval (100 ms) kept.
        async with make_docket(cfg) as docket:
            for kind, body in bodies(tally).items():
                docket.register(body, names=[f"bench.{kind}"])
            async with Worker(
                docket,
                concurrency=cfg["concurrency"],
                minimum_check_interval=timedelta(milliseconds=100),
            ) as worker:
                await worker.run_forever()

    asyncio.run(main())  # as its CLI


class DocketProducer(Producer):
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.docket = make_docket(cfg)
        self.stack = contextlib.AsyncExitStack()
        self.bulk = self._bulk

    async def open(self) -> None:
        await self.stack.enter_async_context(self.docket)
        for kind in KINDS:
            self.docket.register(no_op(), names=[f"bench.{kind}"])

    async def one(self, kind: str) -> None:
        await self.docket.add(f"bench.{kind}")()

    async def _bulk(self, kind: str, n: int) -> None:
        name = f"bench.{kind}"
        for size in chunks(n, BULK_CHUNK):
            # One `call(name)` per task: it draws the task's key (one call for all would
            # schedule the first and dedupe the rest).
            await self.docket.add_many([self.docket.call(name)() for _ in range(size)])

    async def round_trip(self) -> None:
        execution = await self.docket.add("bench.noop")()
        await execution.get_result(timeout=timedelta(seconds=30))  # waits on pub/sub

    async def aclose(self) -> None:
        await self.stack.aclose()
