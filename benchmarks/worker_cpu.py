"""How much CPU one task costs an aqueue worker, and how much of it the garbage collector takes.

    python benchmarks/worker_cpu.py [--broker memory|redis|amqp] [--kind sleep|noop]
                                    [--tasks 5000] [--repeat 5] [--gc run|serve|off]
                                    [--slots 500] [--loop auto|asyncio|uvloop] [--shared-db]
                                    [--variants base,events,metrics,otel]

Where compare.py says how fast, this says why. Each run enqueues N tasks (`sleep`: each awaits
asyncio.sleep(0.01), as compare.py's S2; `noop`: returns at once, as S1), then drains them
with one `Worker(app, concurrency=500)` (`--slots`) in this process, and reports, from the
moment the first task starts to the moment the N-th finishes:

- the drain rate, and the process's CPU time per task and CPU share over that span (a share
  near 100% means the worker is CPU-bound: less CPU per task is more tasks per second);
- the collector's passes (young, middle, full) and the time they took.

`--gc run` drains with `worker.run()`, which leaves the collector alone; `serve` with
`worker.serve()`, as `aqueue worker` does (its `worker_tune_gc` settings); `off` with the
collector disabled (a bound, not a setting to use). `--loop` picks the event loop as
`aqueue worker --loop` does (auto: uvloop when installed). Medians of the runs at the end.

`--variants` compares what watching tasks costs: `base` (nothing on), `events` (the worker
emits task events, `-E`), `metrics` (Prometheus metrics, `--metrics-port`), `otel` (an
OpenTelemetry SDK tracer provider with a batch processor whose exporter drops the spans). The
variants alternate run by run (base, events, ..., base, events, ...), so a machine that slows
down midway weighs on each alike; medians per variant at the end.

Redis: a database of the benchmark's own (`--redis-url`, db 14 by default, flushed before and
after, as compare.py does), or with `--shared-db` a key prefix of its own in that database,
whose keys are deleted after; RabbitMQ: a vhost of its own, deleted after, when rabbitmqctl is at
hand. This is no test: nothing fails when a number is low.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from comparing.places import AmqpPlace, RedisPlace  # the same clean-up as compare.py

from aqueue import App, Worker
from aqueue.loops import LOOPS, describe, loop_factory

SLEEP = 0.01


class Drain:
    """One run's clock, CPU clock and collector passes, from the first task to the N-th."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.done = 0
        self.first = self.first_cpu = self.end = self.end_cpu = 0.0
        self.passes: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started: dict[int, float] = {}
        self.worker: Worker | None = None

    def begin(self) -> None:
        if not self.first:
            self.first, self.first_cpu = time.perf_counter(), time.process_time()

    def finish(self) -> None:
        self.done += 1
        if self.done == self.n:
            self.end, self.end_cpu = time.perf_counter(), time.process_time()
            assert self.worker is not None
            self.worker.stop()

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if not self.first or self.end:
            return
        generation = info["generation"]
        if phase == "start":
            self._started[generation] = time.perf_counter()
        elif generation in self._started:
            self.passes[generation].append(time.perf_counter() - self._started.pop(generation))

    def row(self) -> dict[str, float]:
        span, cpu = self.end - self.first, self.end_cpu - self.first_cpu
        row = {"rate": self.n / span, "cpu_us": cpu / self.n * 1e6, "cpu_share": cpu / span}
        for generation, took in self.passes.items():
            row[f"gc{generation}_n"] = len(took)
            row[f"gc{generation}_ms"] = sum(took) * 1000
        return row


async def one_run(
    url: str,
    kind: str,
    n: int,
    how: str,
    slots: int,
    key: str | None = None,
    variant: str = "base",
) -> dict[str, float]:
    drain = Drain(n)
    worker_options, settings = VARIANTS[variant]()
    app = App(
        "cpu", broker=url, backend=False, set_as_current=False, task_message_key=key, **settings
    )
    app.conf.worker_tune_gc = how == "serve"

    @app.task(name="cpu.task")
    async def task() -> None:
        drain.begin()
        if kind == "sleep":
            await asyncio.sleep(SLEEP)
        drain.finish()

    async with app:
        for start in range(0, n, 1000):
            await task.delay_many([() for _ in range(min(1000, n - start))])
        drain.worker = worker = Worker(app, concurrency=slots, **worker_options)
        gc.callbacks.append(drain.on_gc)
        try:
            with anyio.fail_after(120):
                if how == "serve":
                    await worker.serve()
                elif how == "off":
                    gc.disable()
                    try:
                        await worker.run()
                    finally:
                        gc.enable()
                else:
                    await worker.run()
        finally:
            gc.callbacks.remove(drain.on_gc)
    return drain.row()


@contextlib.asynccontextmanager
async def prefixed(url: str) -> AsyncIterator[str]:
    """A key prefix of the run's own in a database others use; its keys deleted after."""
    import redis.asyncio as aioredis

    prefix = f"aqcpu-{uuid.uuid4().hex[:8]}"
    try:
        yield f"{url}?prefix={prefix}"
    finally:
        async with aioredis.from_url(url) as client:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)


@contextlib.asynccontextmanager
async def place(broker: str, args: argparse.Namespace) -> AsyncIterator[str]:
    if broker == "memory":
        yield "memory://"
    elif broker == "redis" and args.shared_db:
        async with prefixed(args.redis_url) as url:
            yield url
    elif broker == "redis":
        async with RedisPlace(args.redis_url) as redis:
            yield redis.url
    else:
        async with AmqpPlace(args.amqp_url) as amqp:
            yield amqp.url


async def main(args: argparse.Namespace) -> None:
    rows = []
    print(
        f"{args.broker}, {args.tasks:,} {args.kind} tasks, concurrency {args.slots}, "
        f"collector: {args.gc}, loop: {describe(asyncio.get_running_loop())}"
    )
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    by_variant: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    async with place(args.broker, args) as url:
        for run in range(args.repeat):
            for variant in variants:
                row = await one_run(
                    url, args.kind, args.tasks, args.gc, args.slots, args.key, variant
                )
                by_variant[variant].append(row)
                print(f"  run {run + 1} {variant}: {text(row)}", flush=True)
    for variant, rows in by_variant.items():
        medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"  medians {variant}: {text(medians)}")


_PROVIDER: Any = None


def _otel() -> tuple[dict[str, Any], dict[str, Any]]:
    """An SDK tracer provider (made once) whose batch processor drops the spans."""
    global _PROVIDER
    if _PROVIDER is None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        _PROVIDER = TracerProvider()
        _PROVIDER.add_span_processor(BatchSpanProcessor(Drop()))
    return {}, {"otel_tracer_provider": _PROVIDER}


#: Each variant: the Worker's keyword arguments and the App's settings.
VARIANTS = {
    "base": lambda: ({}, {}),
    "events": lambda: ({"send_events": True}, {}),
    "metrics": lambda: ({"metrics_port": 0}, {}),
    "otel": _otel,
}


def text(row: dict[str, float]) -> str:
    passes = ", ".join(
        f"{row[f'gc{g}_n']:.0f} {name} in {row[f'gc{g}_ms']:.1f} ms"
        for g, name in ((0, "young"), (1, "middle"), (2, "full"))
    )
    return (
        f"{row['rate']:,.0f} tasks/s, {row['cpu_us']:.1f} µs CPU per task, "
        f"CPU {row['cpu_share']:.0%}; collector: {passes}"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["memory", "redis", "amqp"], default="memory")
    parser.add_argument("--kind", choices=["sleep", "noop"], default="sleep")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gc", choices=["run", "serve", "off"], default="serve")
    parser.add_argument("--slots", type=int, default=500, help="the worker's concurrency")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--shared-db",
        action="store_true",
        help="use a key prefix of its own in --redis-url's database instead of flushing it",
    )
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--loop", choices=LOOPS, default="auto")
    parser.add_argument(
        "--variants",
        default="base",
        help="comma-separated, alternating run by run: base, events, metrics, otel",
    )
    parser.add_argument(
        "--key",
        nargs="?",
        const="benchmark-key-" + "k" * 32,
        help="sign every message with this task_message_key (the cost of signing)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    anyio.run(main, arguments, backend_options={"loop_factory": loop_factory(arguments.loop)})
