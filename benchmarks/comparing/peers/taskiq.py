"""taskiq, on Redis (`taskiq-redis`) and on RabbitMQ (`taskiq-aio-pika`)."""

from __future__ import annotations

import asyncio
from typing import Any

from comparing.common import KINDS, Producer, Tally, bodies, no_op, run_on


def make_broker(cfg: dict[str, Any]) -> Any:
    backend = None
    if cfg["results"]:
        from taskiq_redis import RedisAsyncResultBackend

        backend = RedisAsyncResultBackend(redis_url=cfg["backend"] or cfg["url"])
    if cfg["system"] == "taskiq-redis":
        from taskiq_redis import RedisStreamBroker

        broker = RedisStreamBroker(url=cfg["url"])
    else:
        from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

        prefix = cfg["prefix"]
        queue_type = QueueType(cfg.get("queue_type") or "classic")
        broker = AioPikaBroker(
            url=cfg["url"],
            # qos is taskiq-aio-pika's prefetch (default 10): given the worker's concurrency,
            # as aqueue's prefetch always is, or at most 10 tasks could ever run at once.
            qos=cfg["concurrency"],
            exchange=Exchange(name=f"{prefix}taskiq"),
            task_queues=[Queue(name=f"{prefix}taskiq", type=queue_type)],
            dead_letter_queue=Queue(name=f"{prefix}taskiq.dead_letter", type=queue_type),
        )
    return broker.with_result_backend(backend) if backend is not None else broker


def serve(cfg: dict[str, Any], tally: Tally) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from taskiq import AsyncBroker
    from taskiq.receiver import Receiver

    broker: AsyncBroker = make_broker(cfg)
    for kind, body in bodies(tally).items():
        broker.task(task_name=f"bench.{kind}")(body)

    async def main() -> None:
        # What `taskiq worker broker:broker --workers 1 --max-async-tasks C` does in its one
        # worker process (its other defaults kept), without the supervising parent process.
        broker.is_worker_process = True
        with ThreadPoolExecutor() as pool:
            receiver = Receiver(broker, executor=pool, max_async_tasks=cfg["concurrency"])
            try:
                await receiver.listen(asyncio.Event())
            finally:
                await broker.shutdown()

    run_on(cfg["loop"], main)  # `taskiq worker` runs on uvloop when it is installed


class TaskiqProducer(Producer):
    # No bulk API: taskiq sends one message per kiq().

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.broker = make_broker(cfg)
        self.tasks = {kind: self.broker.task(task_name=f"bench.{kind}")(no_op()) for kind in KINDS}

    async def open(self) -> None:
        await self.broker.startup()

    async def one(self, kind: str) -> None:
        await self.tasks[kind].kiq()

    async def round_trip(self) -> None:
        task = await self.tasks["noop"].kiq()
        await task.wait_result(timeout=30)  # polls every 0.2 s by default

    async def aclose(self) -> None:
        await self.broker.shutdown()
