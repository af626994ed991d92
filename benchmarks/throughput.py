"""How fast is aqueue? One run measures throughput and latency, memory and SQLite.

    python benchmarks/throughput.py [--tasks N] [--repeat R] [--samples K]

(a) memory://, one process: the enqueue rate of N no-op async tasks (`await noop.delay()` one
    after the other), then the drain rate of one in-process burst worker (`-c 200`), with
    results stored and without.
(b) SQLite, a file in a temporary directory: the enqueue rate of one producer, then the drain
    rate of ONE worker process (`aqueue worker --burst -c 200`), results on and off. The
    worker's start-up and exit (measured on an empty queue) are subtracted.
(c) Round-trip latency on SQLite with a worker process running: `await (await
    noop.delay()).get()`, K times in a row; median, p95, p99.
(d) Idle pickup latency on SQLite: from just before `delay()` to the moment the task starts on
    an idle worker, K times; median and p95.

Each throughput figure is the median of R runs. The default run takes about a minute on two
cores.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

import aqueue
from aqueue import App, Worker

TASKS_MODULE = """
import time

from aqueue import App

app = App("bench")


@app.task(name="bench.noop")
async def noop():
    return None


@app.task(name="bench.stamp")
async def stamp():
    return time.time()
"""

CONCURRENCY = 200


@dataclass
class Row:
    what: str
    results: str
    unit: str
    values: list[float] = field(default_factory=list)

    def cells(self) -> list[str]:
        if not self.values:
            return [self.what, self.results, "-", "-", self.unit, "0"]
        ordered = sorted(self.values)
        median = statistics.median(ordered)
        spread = f"{fmt(ordered[0])} - {fmt(ordered[-1])}"
        return [self.what, self.results, fmt(median), spread, self.unit, str(len(ordered))]


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def app_for(url: str, results: bool) -> App:
    app = App("bench", broker=url, backend=None if results else False, set_as_current=False)

    @app.task(name="bench.noop")
    async def noop() -> None:
        return None

    @app.task(name="bench.stamp")
    async def stamp() -> float:
        return time.time()

    return app


async def enqueue(app: App, n: int) -> float:
    """Send n no-op tasks one after the other; return tasks per second."""
    noop = app.tasks["bench.noop"]
    started = time.perf_counter()
    for _ in range(n):
        await noop.delay()
    return n / (time.perf_counter() - started)


# -- (a) memory -------------------------------------------------------------------------------


async def memory_run(n: int, results: bool) -> tuple[float, float]:
    async with app_for("memory://", results) as app:
        sent = await enqueue(app, n)
        worker = Worker(app, burst=True, concurrency=CONCURRENCY)
        started = time.perf_counter()
        await worker.run()
        drained = n / (time.perf_counter() - started)
        assert worker.stats()["succeeded"] == n, worker.stats()
    return sent, drained


# -- (b) SQLite -------------------------------------------------------------------------------


class SQLiteBench:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        (directory / "benchtasks.py").write_text(textwrap.dedent(TASKS_MODULE))
        self.runs = 0

    def fresh_url(self) -> str:
        self.runs += 1
        return f"sqlite:///{self.directory / f'bench-{self.runs}.db'}"

    def env(self, url: str, results: bool) -> dict[str, str]:
        env = dict(os.environ)
        env["AQUEUE_BROKER_URL"] = url
        if results:
            env.pop("AQUEUE_RESULT_BACKEND", None)
        else:
            env["AQUEUE_RESULT_BACKEND"] = "disabled"
        return env

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "aqueue", "worker", "benchtasks:app", "-l", "WARNING", *extra]

    async def burst_worker(self, url: str, results: bool) -> float:
        """Run one `--burst` worker process to the end; return its wall time in seconds."""
        started = time.perf_counter()
        await anyio.run_process(
            self.command("--burst", "-c", str(CONCURRENCY)),
            cwd=self.directory,
            env=self.env(url, results),
            check=True,
        )
        return time.perf_counter() - started

    async def startup(self) -> float:
        """A burst worker's wall time on an empty queue: start-up and exit, no work."""
        url = self.fresh_url()
        async with app_for(url, results=True):
            pass  # creates the file and its tables, as a producer would have
        return await self.burst_worker(url, results=True)

    async def run(self, n: int, results: bool, overhead: float) -> tuple[float, float]:
        url = self.fresh_url()
        async with app_for(url, results) as app:
            sent = await enqueue(app, n)
        wall = await self.burst_worker(url, results)
        left = remaining(url)
        if left:
            raise RuntimeError(f"the burst worker left {left} messages behind")
        return sent, n / max(wall - overhead, 1e-6)


def remaining(url: str) -> int:
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM aqueue_messages").fetchone()
    db.close()
    return int(count)


# -- (c) and (d): latency with a worker process running --------------------------------------


async def latencies(bench: SQLiteBench, samples: int) -> tuple[list[float], list[float]]:
    url = bench.fresh_url()
    async with app_for(url, results=True) as app:
        noop, stamp = app.tasks["bench.noop"], app.tasks["bench.stamp"]
        process = await anyio.open_process(
            bench.command("-c", str(CONCURRENCY)), cwd=bench.directory, env=bench.env(url, True)
        )
        try:
            async with anyio.create_task_group() as group:
                # Keep the pipes drained so the worker never blocks on its output.
                for stream in (process.stdout, process.stderr):
                    if stream is not None:
                        group.start_soon(discard, stream)
                with anyio.fail_after(60):
                    await (await noop.delay()).get()  # the worker is up and warm
                round_trips = []
                for _ in range(samples):
                    started = time.perf_counter()
                    await (await noop.delay()).get(timeout=30)
                    round_trips.append((time.perf_counter() - started) * 1000)
                pickups = []
                for _ in range(samples):
                    await anyio.sleep(0.02)  # let the worker go idle: it waits on its socket
                    sent_at = time.time()
                    began: float = await (await stamp.delay()).get(timeout=30)
                    pickups.append((began - sent_at) * 1000)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                process.terminate()
                with anyio.move_on_after(30):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await process.aclose()
    return round_trips, pickups


async def discard(stream: Any) -> None:
    async for _ in stream:
        pass


# -- the run ----------------------------------------------------------------------------------


async def repeat(
    times: int, run: Callable[[], Awaitable[tuple[float, float]]]
) -> list[tuple[float, float]]:
    return [await run() for _ in range(times)]


async def main(args: argparse.Namespace) -> None:
    n, times = args.tasks, args.repeat
    print(f"aqueue {aqueue.__version__}, Python {platform.python_version()}", end=", ")
    print(f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs,", end=" ")
    print(f"SQLite {sqlite3.sqlite_version}, anyio {anyio_version()}")
    print(f"{n} no-op tasks per throughput run, {times} runs each; {args.samples} latency samples")
    print(f"worker concurrency {CONCURRENCY}\n", flush=True)

    rows: list[Row] = []
    for results in (False, True):
        label = "on" if results else "off"
        enq = Row("memory: enqueue, 1 producer", label, "tasks/s")
        drain = Row("memory: drain, 1 in-process worker", label, "tasks/s")
        for sent, drained in await repeat(times, functools.partial(memory_run, n, results)):
            enq.values.append(sent)
            drain.values.append(drained)
        rows += [enq, drain]
        progress(rows[-2:])

    with tempfile.TemporaryDirectory(prefix="aqueue-bench-") as directory:
        bench = SQLiteBench(Path(directory))
        overheads = [await bench.startup() for _ in range(times)]
        overhead = statistics.median(overheads)
        print(f"worker process start-up + exit, empty queue: {overhead * 1000:.0f} ms (median)")
        for results in (False, True):
            label = "on" if results else "off"
            enq = Row("SQLite: enqueue, 1 producer", label, "tasks/s")
            drain = Row("SQLite: drain, 1 worker process", label, "tasks/s")
            for sent, drained in await repeat(
                times, functools.partial(bench.run, n, results, overhead)
            ):
                enq.values.append(sent)
                drain.values.append(drained)
            rows += [enq, drain]
            progress(rows[-2:])

        round_trips, pickups = await latencies(bench, args.samples)

    print()
    table(
        ["measurement", "results", "median", "range", "unit", "runs"],
        [row.cells() for row in rows],
    )
    print()
    table(
        ["latency (SQLite, worker process running)", "median", "p95", "p99", "samples"],
        [
            [
                "round trip: `await (await noop.delay()).get()`",
                *(f"{percentile(round_trips, q):.2f} ms" for q in (50, 95, 99)),
                str(len(round_trips)),
            ],
            [
                "idle pickup: enqueue -> task starts",
                *(f"{percentile(pickups, q):.2f} ms" for q in (50, 95, 99)),
                str(len(pickups)),
            ],
        ],
    )


def progress(rows: list[Row]) -> None:
    for row in rows:
        what, results, median, *_ = row.cells()
        print(f"  {what} (results {results}): {median} {row.unit}", flush=True)


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    numeric = [
        i > 0 and all(cell[:1].isdigit() or cell == "-" for cell in (r[i] for r in rows))
        for i in range(len(header))
    ]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    print(line(header))
    print(
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if r else "-" * (w + 2)
            for w, r in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    for row in rows:
        print(line(row))


def anyio_version() -> str:
    from importlib.metadata import version

    return version("anyio")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per throughput run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per throughput figure")
    parser.add_argument("--samples", type=int, default=300, help="latency samples")
    args = parser.parse_args()
    if args.tasks < 1 or args.repeat < 1 or args.samples < 1:
        parser.error("--tasks, --repeat and --samples must be at least 1")
    return args


if __name__ == "__main__":
    anyio.run(main, parse())
