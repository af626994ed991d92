"""SAQ, on Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from comparing.common import Producer, Tally, bodies_with_context

SAQ_WAIT = 1  # SAQ's until_complete in S3 (s): what a lost completion notice costs there


def serve(cfg: dict[str, Any], tally: Tally) -> None:
    from saq import Queue, Worker

    async def main() -> None:
        # Results on/off is per job in SAQ (ttl, set by the producer).
        queue = Queue.from_url(cfg["url"], name="bench")
        worker = Worker(
            queue,
            functions=[
                (f"bench.{kind}", body) for kind, body in bodies_with_context(tally).items()
            ],
            concurrency=cfg["concurrency"],
        )
        await worker.start()

    asyncio.run(main())


class SaqProducer(Producer):
    # No bulk API: SAQ enqueues one job per call (Queue.map also waits for the results).

    def __init__(self, cfg: dict[str, Any]) -> None:
        from saq import Queue

        self.queue = Queue.from_url(cfg["url"], name="bench")
        # SAQ keeps each job, with its result, for ttl seconds (600 by default); -1 is "off".
        self.options: dict[str, Any] = {} if cfg["results"] else {"ttl": -1}

    async def one(self, kind: str) -> None:
        await self.queue.enqueue(f"bench.{kind}", **self.options)

    async def round_trip(self) -> None:
        job = await self.queue.enqueue("bench.noop")
        assert job is not None
        try:
            await job.refresh(until_complete=SAQ_WAIT)  # waits on pub/sub, no polling
        except TimeoutError:
            # About 1 in 250 completions never reaches the waiter (it subscribes anew for each
            # call, and a job that completes meanwhile is missed): SAQ then waits out
            # until_complete, although the job is done. Counted, and kept in the samples.
            await job.refresh()
            if job.status.name != "COMPLETE":
                raise
            self.missed += 1

    async def aclose(self) -> None:
        await self.queue.disconnect()
