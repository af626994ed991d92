"""How fast does one process enqueue? `delay()` calls in flight at once, and `delay_many`.

    python benchmarks/enqueue.py [--brokers amqp,redis,sqlite] [--tasks 10000] [--repeat 5]
                                 [--flights 1,10,100,1000] [--loop asyncio|uvloop] [--taskiq]
                                 [--queue-type default|classic|quorum]
                                 [--amqp-url URL] [--redis-url URL] [--json FILE]

For each broker, each run opens an app (results off), sends one warm-up task, then times:

- `c` in flight, for each `c` of `--flights`: `c` coroutines, each calling `await
  noop.delay()` one after the other, `--tasks` calls in all (a fifth of them at `c` = 1,
  which is the slowest); the clock runs from the first call to the last confirmation;
- `bulk`: the same number of tasks through `noop.delay_many`, 1,000 a call, one call at a time.

With `--taskiq` (`pip install taskiq-aio-pika`), each run also times taskiq-aio-pika's `kiq()`
the same way on the same RabbitMQ (its default broker: publisher confirms, persistent
messages), so that the last line compares aqueue with it at 100 in flight, run by run.

`--queue-type` picks the RabbitMQ queue type of both: `default` leaves each system its own
(aqueue: a classic queue with priorities 0-9, `x-max-priority` 9; taskiq-aio-pika 0.6: a
quorum queue), `classic` or `quorum` gives both the same type. Both are durable and both
publish persistent messages with confirms, so each confirm waits for RabbitMQ's disk sync
whichever the type; but RabbitMQ's own work per message differs by type (on the 2-core
machine of the README, about 70-80 µs of RabbitMQ CPU a message on a classic queue with
priorities, about 40 on a quorum queue), and RabbitMQ shares the cores with the producer:
compare like with like.

After each figure the queue is purged, so every figure starts on an empty queue. The runs are
interleaved (run 1 of every broker, then run 2 ...) so that noise on a shared machine hits
every figure alike. Each cell is the median of `--repeat` runs with the lowest and highest;
the last column is `c` = 100 against `bulk`, the median of the ratios taken within each run.

What it makes, it deletes: RabbitMQ queues and exchanges under a prefix of its own
(`aqbench-enq-<random>-`), Redis keys under a prefix of its own (database 13 by default, which
`compare.py`, flushing database 14, leaves alone), and the SQLite file, in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aqueue
from aqueue import App

BULK_CHUNK = 1000
QUEUE = "bench"  # the queue the tasks go to (purged after each figure, deleted at the end)
BROKERS = ("amqp", "redis", "sqlite")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per figure")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--flights", default="1,10,100,1000", help="delay() calls in flight")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    parser.add_argument(
        "--taskiq", action="store_true", help="also time taskiq-aio-pika on the same RabbitMQ"
    )
    parser.add_argument(
        "--queue-type",
        choices=("default", "classic", "quorum"),
        default="default",
        help="RabbitMQ queue type for aqueue and taskiq alike (default: each its own)",
    )
    args = parser.parse_args(argv)
    args.brokers = [name.strip() for name in args.brokers.split(",") if name.strip()]
    unknown = set(args.brokers) - set(BROKERS)
    if unknown:
        parser.error(f"unknown broker(s) {sorted(unknown)}: choose from {', '.join(BROKERS)}")
    args.flights = [int(value) for value in args.flights.split(",") if value.strip()]
    return args


# -- what each broker needs: a URL with a prefix of our own, and the cleaning up -------------


def _with_query(url: str, **query: str) -> str:
    separator = "&" if "?" in url else "?"
    return url + separator + "&".join(f"{key}={value}" for key, value in query.items())


async def _clean_amqp(url: str, prefix: str) -> None:
    from aqueue.drivers.amqp.topology import LEVELS

    base = f"{prefix}aqueue"
    queues = [f"{prefix}{QUEUE}", f"{base}.dead.{QUEUE}", f"{base}.due.{QUEUE}"]
    queues += [f"{base}.delay.{level}.{QUEUE}" for level in range(LEVELS)]
    exchanges = [base, f"{base}.dead", f"{base}.delayed", f"{base}.mailbox"]
    exchanges += [f"{base}.delay.{level}" for level in range(LEVELS)]
    await _delete_amqp(url, queues, exchanges)


async def _delete_amqp(url: str, queues: list[str], exchanges: list[str]) -> None:
    import aiormq

    from aqueue.drivers.amqp.connection import parse_amqp_url

    settings = parse_amqp_url(url)
    async with aiormq.connect(settings.aiormq_url("aqueue-bench")) as connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)  # a no-op for a queue that is not there
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


async def _clean_redis(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def broker_url(name: str, args: argparse.Namespace) -> AsyncIterator[str]:
    """A URL under a prefix (or in a folder) of the benchmark's own; deleted on the way out."""
    tag = uuid.uuid4().hex[:8]
    if name == "sqlite":
        with tempfile.TemporaryDirectory(prefix="aqbench-enq-") as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    if name == "amqp":
        prefix = f"aqbench-enq-{tag}-"
        queue_type = getattr(args, "queue_type", "default")
        query = {} if queue_type == "default" else {"queue_type": queue_type}
        try:
            yield _with_query(args.amqp_url, prefix=prefix, **query)
        finally:
            await _clean_amqp(args.amqp_url, prefix)
        return
    prefix = f"aqbench-enq-{tag}"
    try:
        yield _with_query(args.redis_url, prefix=prefix)
    finally:
        await _clean_redis(args.redis_url, prefix)


# -- the measurements --------------------------------------------------------------------------


async def in_flight(app: App, n: int, flight: int) -> float:
    """`flight` coroutines send n tasks between them, each awaiting one delay() at a time."""
    task: Any = app.tasks["bench.noop"]
    shares = [n // flight + (1 if index < n % flight else 0) for index in range(flight)]

    async def sender(count: int) -> None:
        for _ in range(count):
            await task.delay()

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for count in shares:
            group.create_task(sender(count))
    return n / (time.perf_counter() - started)


async def bulk(app: App, n: int) -> float:
    task: Any = app.tasks["bench.noop"]
    started = time.perf_counter()
    for start in range(0, n, BULK_CHUNK):
        await task.delay_many([() for _ in range(min(BULK_CHUNK, n - start))])
    return n / (time.perf_counter() - started)


def make_app(url: str) -> App:
    app = App("bench", broker=url, backend=False, set_as_current=False)

    @app.task(name="bench.noop", queue=QUEUE)
    async def noop() -> None:
        return None

    return app


async def one_run(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Every figure of one broker, once; tasks per second by column."""
    rates: dict[str, float] = {}
    async with broker_url(name, args) as url:
        app = make_app(url)
        async with app:
            broker = await app.broker()
            await app.tasks["bench.noop"].delay()  # connects, declares the queue
            await broker.purge(QUEUE)
            for flight in args.flights:
                n = max(args.tasks // 5, flight) if flight == 1 else args.tasks
                rates[f"c{flight}"] = await in_flight(app, n, flight)
                await broker.purge(QUEUE)
            rates["bulk"] = await bulk(app, args.tasks)
            await broker.purge(QUEUE)
    return rates


# -- taskiq-aio-pika, the same way ------------------------------------------------------------


async def taskiq_run(args: argparse.Namespace) -> dict[str, float]:
    """taskiq-aio-pika's `kiq()`, `c` in flight, under names of the run's own (deleted after)."""
    from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

    prefix = f"aqbench-enq-{uuid.uuid4().hex[:8]}-"
    queues = [f"{prefix}taskiq", f"{prefix}taskiq.dead_letter", f"{prefix}taskiq.delay"]
    typed: dict[str, Any] = {}
    if args.queue_type != "default":
        from taskiq_aio_pika.queue import QueueType

        typed["type"] = QueueType(args.queue_type)
    broker = AioPikaBroker(
        url=args.amqp_url,
        exchange=Exchange(name=f"{prefix}taskiq"),
        task_queues=[Queue(name=queues[0], **typed)],
        dead_letter_queue=Queue(name=queues[1]),
        delay_queue=Queue(name=queues[2]),
    )

    async def body() -> None:
        return None

    task = broker.task(task_name="bench.noop")(body)
    rates: dict[str, float] = {}
    await broker.startup()
    try:
        await task.kiq()
        for flight in args.flights:
            n = max(args.tasks // 5, flight) if flight == 1 else args.tasks
            shares = [n // flight + (1 if index < n % flight else 0) for index in range(flight)]

            async def sender(count: int) -> None:
                for _ in range(count):
                    await task.kiq()

            started = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                for count in shares:
                    group.create_task(sender(count))
            rates[f"c{flight}"] = n / (time.perf_counter() - started)
    finally:
        await broker.shutdown()
        await _delete_amqp(args.amqp_url, queues, [f"{prefix}taskiq"])
    return rates


# -- the report --------------------------------------------------------------------------------


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def report(args: argparse.Namespace, samples: dict[str, list[dict[str, float]]]) -> str:
    columns = [f"c{flight}" for flight in args.flights] + ["bulk"]
    heads = [f"{flight} in flight" for flight in args.flights] + ["delay_many"]
    source = Path(aqueue.__file__).parent
    lines = [
        f"enqueue/s, median (lowest-highest) of {args.repeat} runs; {args.tasks:,} tasks a "
        f"figure; loop {args.loop}; aqueue {aqueue.__version__} from {source}; RabbitMQ "
        f"queue type: {args.queue_type}",
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores",
        "",
        "| broker | " + " | ".join(heads) + " | 100 in flight / bulk |",
        "|---" * (len(heads) + 2) + "|",
    ]
    for name, runs in samples.items():
        values = [cell([run[column] for run in runs if column in run]) for column in columns]
        ratios = [run["c100"] / run["bulk"] for run in runs if "c100" in run and "bulk" in run]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        lines.append(f"| {name} | " + " | ".join(values) + f" | {ratio} |")
    peer, ours = samples.get("taskiq-aio-pika"), samples.get("amqp")
    if peer and ours:
        pairs = zip(ours, peer, strict=True)
        versus = [a["c100"] / b["c100"] for a, b in pairs if "c100" in a and "c100" in b]
        if versus:
            lines += ["", f"aqueue (amqp) / taskiq-aio-pika at 100 in flight, median of the "
                      f"runs' ratios: {statistics.median(versus):.2f}"]  # fmt: skip
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    names = [*args.brokers, *(["taskiq-aio-pika"] if args.taskiq else [])]
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for run in range(args.repeat):
        for name in names:
            rates = await (taskiq_run(args) if name == "taskiq-aio-pika" else one_run(name, args))
            samples[name].append(rates)
            shown = ", ".join(f"{key} {value:,.0f}" for key, value in rates.items())
            print(f"run {run + 1}/{args.repeat} {name:6}: {shown}", flush=True)
    print()
    print(report(args, samples))
    if args.json is not None:
        args.json.write_text(json.dumps({"aqueue": aqueue.__file__, "samples": samples}))


def run(args: argparse.Namespace) -> None:
    runner: Callable[[Any], None]
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    runner(main(args))


if __name__ == "__main__":
    run(parse_args(sys.argv[1:]))
