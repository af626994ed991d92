"""arq, on Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from comparing.common import Producer, Tally, bodies_with_context


def serve(cfg: dict[str, Any], tally: Tally) -> None:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    async def main() -> None:
        worker = Worker(
            functions=[
                func(body, name=f"bench.{kind}")
                for kind, body in bodies_with_context(tally).items()
            ],
            redis_settings=RedisSettings.from_dsn(cfg["url"]),
            max_jobs=cfg["concurrency"],
            # arq's default keeps results an hour; keep_result=0 is its documented "off".
            keep_result=3600 if cfg["results"] else 0,
        )
        await worker.async_run()

    asyncio.run(main())


class ArqProducer(Producer):
    # No bulk API: arq has enqueue_job only.

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.url = cfg["url"]
        self.pool: Any = None

    async def open(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.pool = await create_pool(RedisSettings.from_dsn(self.url))

    async def one(self, kind: str) -> None:
        await self.pool.enqueue_job(f"bench.{kind}")

    async def round_trip(self) -> None:
        job = await self.pool.enqueue_job("bench.noop")
        await job.result(timeout=30)  # arq polls for results (poll_delay 0.5 s by default)

    async def aclose(self) -> None:
        await self.pool.aclose()
