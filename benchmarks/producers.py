"""Producers from many callers: coroutines and threads each sending one task at a time.

    python benchmarks/producers.py [--brokers amqp,redis,sqlite] [--tasks 10000] [--repeat 3]
                                   [--flights 1,10,100,1000] [--threads 8]
                                   [--loop asyncio|uvloop] [--queue-type default|classic|quorum]
                                   [--amqp-url URL] [--redis-url URL]

A web app enqueues from many requests at once, each calling `delay()` once. For each broker,
each run opens an app (results off) and times, on an empty queue each time:

- `c<n>`: n coroutines, each awaiting one `noop.delay()` after the other (`--tasks` in all; a
  fifth of that at n = 1, the slowest);
- `t<n>`: `--threads` plain threads, each calling `noop.sync.delay()` one after the other: the
  sync API, whose calls all run on the app's one I/O thread;
- `bulk`: the same number of tasks through `delay_many`, 1,000 a call.

It prints enqueues/s (with the lowest and highest), the process's CPU time per enqueue (µs, all
threads: steadier than the rate on a shared machine) and the p50 and p99 latency of one call,
each the median over `--repeat` runs (interleaved across brokers, so a noisy machine hits every
figure alike), and the ratio of `c100` and of the threads to `bulk`, the median of the ratios
within each run. What it makes, it deletes (as `enqueue.py`, whose helpers it uses).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from enqueue import BROKERS, QUEUE, broker_url, bulk, make_app

from aqueue import App

#: enqueues/s, p50 and p99 latency of one call (seconds), and the process's CPU time per
#: enqueue (µs, every thread: steadier than the rate on a shared machine; for SQLite it
#: includes the database's own work, for Redis and RabbitMQ only the client's).
Figure = tuple[float, float, float, float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per figure")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flights", default="1,10,100,1000", help="coroutines sending at once")
    parser.add_argument(
        "--threads", type=int, default=8, help="threads using .sync.delay() (0: none)"
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--queue-type",
        choices=("default", "classic", "quorum"),
        default="default",
        help="RabbitMQ queue type (default: aqueue's, classic with priorities)",
    )
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args(argv)
    args.brokers = [name.strip() for name in args.brokers.split(",") if name.strip()]
    if unknown := set(args.brokers) - set(BROKERS):
        parser.error(f"unknown broker(s) {sorted(unknown)}: choose from {', '.join(BROKERS)}")
    args.flights = [int(value) for value in args.flights.split(",") if value.strip()]
    return args


def _shares(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if index < n % parts else 0) for index in range(parts)]


def _figure(n: int, elapsed: float, cpu: float, latencies: list[float]) -> Figure:
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return n / elapsed, p50, p99, cpu / n * 1e6


async def coroutines(app: App, n: int, flight: int) -> Figure:
    """`flight` coroutines send n tasks between them, each one `delay()` at a time."""
    task: Any = app.tasks["bench.noop"]
    latencies: list[float] = []
    clock = time.perf_counter

    async def sender(count: int) -> None:
        for _ in range(count):
            start = clock()
            await task.delay()
            latencies.append(clock() - start)

    started, cpu = clock(), time.process_time()
    async with asyncio.TaskGroup() as group:
        for count in _shares(n, flight):
            group.create_task(sender(count))
    return _figure(n, clock() - started, time.process_time() - cpu, latencies)


def threads(app: App, n: int, count: int) -> Figure:
    """`count` threads send n tasks between them, each one `.sync.delay()` at a time."""
    task: Any = app.tasks["bench.noop"]
    clock = time.perf_counter

    def sender(share: int) -> list[float]:
        latencies = []
        for _ in range(share):
            start = clock()
            task.sync.delay()
            latencies.append(clock() - start)
        return latencies

    started, cpu = clock(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        runs = list(pool.map(sender, _shares(n, count)))
    elapsed, cpu = clock() - started, time.process_time() - cpu
    return _figure(n, elapsed, cpu, [value for run in runs for value in run])


async def one_run(name: str, args: argparse.Namespace) -> dict[str, Figure]:
    """Every figure of one broker, once."""
    figures: dict[str, Figure] = {}
    async with broker_url(name, args) as url:
        app = make_app(url)
        try:
            broker = await app.broker()
            await app.tasks["bench.noop"].delay()  # connects, declares the queue
            await broker.purge(QUEUE)
            for flight in args.flights:
                n = max(args.tasks // 5, flight) if flight == 1 else args.tasks
                figures[f"c{flight}"] = await coroutines(app, n, flight)
                await broker.purge(QUEUE)
            if args.threads:  # --threads 0: none (an aqueue without the sync API)
                figures[f"t{args.threads}"] = await asyncio.to_thread(
                    threads, app, args.tasks, args.threads
                )
                await broker.purge(QUEUE)
            cpu = time.process_time()
            rate = await bulk(app, args.tasks)
            figures["bulk"] = (rate, 0.0, 0.0, (time.process_time() - cpu) / args.tasks * 1e6)
            await broker.purge(QUEUE)
        finally:
            await app.close()  # this loop's connections and the I/O thread's
    return figures


def report(name: str, runs: list[dict[str, Figure]], threads_column: str) -> None:
    columns = list(runs[0])
    print(f"\n{name}")
    print(f"  {'':6} {'enqueues/s':>12} {'(range)':>17} {'CPU µs':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for column in columns:
        rates = [run[column][0] for run in runs]
        spread = f"({min(rates):,.0f}-{max(rates):,.0f})"
        cpu = statistics.median(run[column][3] for run in runs)
        p50 = statistics.median(run[column][1] for run in runs) * 1e3
        p99 = statistics.median(run[column][2] for run in runs) * 1e3
        lat = "" if column == "bulk" else f" {p50:8.3f} {p99:8.2f}"
        print(f"  {column:6} {statistics.median(rates):12,.0f} {spread:>17} {cpu:7.1f}{lat}")
    for column in ("c100", threads_column):
        if column in columns:
            ratio = statistics.median(run[column][0] / run["bulk"][0] for run in runs)
            print(f"  {column} / bulk: {ratio:.2f}")


async def main(args: argparse.Namespace) -> None:
    results: dict[str, list[dict[str, Figure]]] = {name: [] for name in args.brokers}
    for index in range(args.repeat):
        for name in args.brokers:
            results[name].append(await one_run(name, args))
            print(f"run {index + 1}/{args.repeat}: {name} done", file=sys.stderr)
    print(
        f"python {sys.version.split()[0]}, loop {args.loop}, {args.tasks} tasks a figure, "
        f"{args.repeat} runs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    for name, runs in results.items():
        report(name, runs, f"t{args.threads}")


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.loop == "uvloop":
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
