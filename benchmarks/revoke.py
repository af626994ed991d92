"""What revoking a large group costs: `GroupResult.revoke()` of 10,000 tasks, on Redis.

    python benchmarks/revoke.py [--tasks 10000] [--runs 3] [--redis redis://127.0.0.1:6379/0]

Redis broker and results, under a key prefix of the run's own. One worker process (`aqueue
worker`) runs throughout and receives every revoke command. Each run sends a group of N no-op
tasks to a queue no worker consumes, then measures, in the caller, from just before
`await result.revoke()` to its return: the revocations kept in the mailbox settings, the
results marked REVOKED, and the commands published (the worker applies them in its own
process, not measured here).

Prints each run, the median and range, and the caller's CPU time per revoked task. The keys
are deleted at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import anyio
from canvas import WorkerProcess, cleanup  # benchmarks/canvas.py, beside this file

from aqueue import App, group, signature

TASKS = """
    from aqueue import App

    app = App("tasks", broker={url!r})


    @app.task(name="bench.noop")
    async def noop(i):
        return i
"""


async def one_run(app: App, tasks: int) -> tuple[float, float]:
    """Send a group of `tasks` (never run); return the revoke's seconds and CPU seconds."""
    members = [signature("bench.noop", (i,), app=app).set(queue="idle") for i in range(tasks)]
    sent = await group(members).delay()
    cpu, started = time.process_time(), time.perf_counter()
    await sent.revoke()
    return time.perf_counter() - started, time.process_time() - cpu


async def main(args: argparse.Namespace) -> None:
    prefix = f"bench-revoke-{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in args.redis else "?"
    url = f"{args.redis}{separator}prefix={prefix}"
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "tasks.py").write_text(textwrap.dedent(TASKS).format(url=url))
        worker = WorkerProcess(cwd, 4)
        try:
            async with App("caller", broker=url, set_as_current=False) as app:
                await anyio.to_thread.run_sync(worker.ready.wait, 60)
                seconds, cpus = [], []
                for run in range(args.runs):
                    took, cpu = await one_run(app, args.tasks)
                    seconds.append(took)
                    cpus.append(cpu)
                    print(f"run {run + 1}: revoke() {took:.2f} s (caller CPU {cpu:.2f} s)")
                median = statistics.median(seconds)
                print(
                    f"\nGroupResult.revoke() of {args.tasks:,} tasks, Redis, median of "
                    f"{args.runs}: {median:.2f} s ({min(seconds):.2f} to {max(seconds):.2f}); "
                    f"caller CPU {statistics.median(cpus) / args.tasks * 1e6:.0f} µs per task"
                )
        finally:
            worker.stop()
            await cleanup(args.redis, prefix)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    anyio.run(main, parser.parse_args())
