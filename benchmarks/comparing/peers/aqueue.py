"""aqueue, on Redis (`aqueue-redis`) and on RabbitMQ (`aqueue-amqp`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from comparing.common import BULK_CHUNK, KINDS, Producer, Tally, bodies, chunks, no_op

if TYPE_CHECKING:
    from aqueue import App


def make_app(url: str, results: bool, backend: str | None) -> App:
    from aqueue import App

    chosen: str | bool | None = (backend or None) if results else False
    return App("bench", broker=url, backend=chosen, set_as_current=False)


def serve(cfg: dict[str, Any], tally: Tally) -> None:
    import anyio

    from aqueue import Worker

    app = make_app(cfg["url"], cfg["results"], cfg["backend"])
    for kind, body in bodies(tally).items():
        app.task(name=f"bench.{kind}")(body)

    async def main() -> None:
        async with app:  # as `aqueue worker` runs it (serve: signals, worker_tune_gc)
            await Worker(app, concurrency=cfg["concurrency"]).serve()

    anyio.run(main, backend_options={"use_uvloop": cfg["loop"] == "uvloop"})


class AqueueProducer(Producer):
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.app = make_app(cfg["url"], cfg["results"], cfg["backend"])
        self.tasks = {kind: self.app.task(name=f"bench.{kind}")(no_op()) for kind in KINDS}
        self.bulk = self._bulk

    async def open(self) -> None:
        await self.app.open()

    async def one(self, kind: str) -> None:
        await self.tasks[kind].delay()

    async def _bulk(self, kind: str, n: int) -> None:
        task = self.tasks[kind]
        for size in chunks(n, BULK_CHUNK):
            await task.delay_many([() for _ in range(size)])

    async def round_trip(self) -> None:
        await (await self.tasks["noop"].delay()).get(timeout=30)

    async def aclose(self) -> None:
        await self.app.close()
