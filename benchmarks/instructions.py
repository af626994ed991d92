"""Instructions per task of a worker, counted by valgrind: a measure a busy machine does not move.

    python benchmarks/instructions.py [--url redis://127.0.0.1:6379/13] [--kind sleep|noop]
                                      [--tasks 500,2500] [--variants base,events,metrics]
                                      [--tree PATH ...] [--loop uvloop|asyncio]

`worker_cpu.py` measures CPU time per task, which the other work on a shared machine moves by
2x from run to run. This counts the machine instructions one worker process executes to drain
N tasks (`valgrind --tool=callgrind`, which counts, it does not time: the same code and inputs
give the same count within 0.1%, whatever else the machine runs), for two values of N, and
reports the difference over the difference of N: the instructions of one task, start-up
(imports, connecting) taken out. That 0.1% of a whole run is about 1,000 instructions per
task at the default N, and how the run's claims and acks happened to batch moves it more:
one tree gave 125.5k to 128.5k per task in three invocations, so trust differences of 3% or
more, or measure the trees in one invocation (`--tree`), several times.

Each count: the queue is filled by a normal process (`delay_many`), then one process, under
valgrind, drains it with `Worker(app, concurrency=500, burst=True).serve()`, as `aqueue
worker --burst` runs it (its garbage-collector tuning included). `--variants` turns on task
events (`send_events`) or metrics (`metrics_port=0`). `--tree` measures another checkout
of aqueue too (its directory is put first on PYTHONPATH), e.g. a `git worktree` of an older
commit, so that a change is measured against what it changes: the rows say which tree.

Needs valgrind (`apt-get install valgrind`) and the broker (Redis by default; its database is
flushed before each count). Under valgrind a process runs 20-50x slower: each count of 2,500
sleep tasks takes about 15 s, most of it the imports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SLEEP = 0.01
QUEUE = "instructions"


def app_for(url: str) -> object:
    from aqueue import App

    return App("instructions", broker=url, backend=False, task_default_queue=QUEUE)


async def enqueue(url: str, kind: str, n: int) -> None:
    app = app_for(url)
    task = _task(app, kind)
    async with app:  # type: ignore[attr-defined]
        broker = await app.broker()  # type: ignore[attr-defined]
        await broker.purge(QUEUE)
        for start in range(0, n, 1000):
            await task.delay_many([()] * min(1000, n - start))


async def drain(url: str, kind: str, variant: str) -> None:
    from aqueue import Worker

    app = app_for(url)
    _task(app, kind)
    options: dict[str, object] = {}
    if variant == "events":
        options["send_events"] = True
    elif variant == "metrics":
        options["metrics_port"] = 0
    async with app:  # type: ignore[attr-defined]
        await Worker(app, concurrency=500, burst=True, **options).serve()  # type: ignore[arg-type]


def _task(app: object, kind: str) -> object:
    if kind == "sleep":

        async def sleep() -> None:
            await asyncio.sleep(SLEEP)

        return app.task(name="instructions.sleep")(sleep)  # type: ignore[attr-defined]

    async def noop() -> None:
        pass

    return app.task(name="instructions.noop")(noop)  # type: ignore[attr-defined]


def run_loop(loop: str, coroutine: object) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(coroutine)  # type: ignore[arg-type]
    else:
        asyncio.run(coroutine)  # type: ignore[arg-type]


def count(args: argparse.Namespace, tree: str | None, variant: str, n: int) -> int:
    """Fill the queue with n tasks, drain it under callgrind, return the instructions."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH")]))
    me = [sys.executable, __file__, "--url", args.url, "--kind", args.kind, "--loop", args.loop]
    subprocess.run([*me, "--fill", str(n)], env=env, check=True)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                *me,
                "--drain",
                variant,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"valgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def default_tree() -> str:
    """Return the checkout this interpreter imports aqueue from (no --tree)."""
    import aqueue

    return str(Path(aqueue.__file__).resolve().parents[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13", help="the broker")
    parser.add_argument("--kind", choices=("sleep", "noop"), default="sleep")
    parser.add_argument("--tasks", default="500,2500", help="the two values of N")
    parser.add_argument("--variants", default="base", help="from base, events, metrics")
    parser.add_argument("--tree", action="append", default=[], help="another aqueue checkout")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--fill", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--drain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill is not None:
        run_loop(args.loop, enqueue(args.url, args.kind, args.fill))
        return
    if args.drain is not None:
        run_loop(args.loop, drain(args.url, args.kind, args.drain))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    try:
        report(args)
    finally:
        clean_up(args.url)


def clean_up(url: str) -> None:
    """Delete the keys of the benchmark's queue (Redis); the other brokers keep an empty one."""
    if not url.startswith("redis"):
        return
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"aqueue:{{{QUEUE}}}*"))
    if keys:
        client.delete(*keys)
    client.close()


def report(args: argparse.Namespace) -> None:
    low, high = (int(value) for value in args.tasks.split(","))
    print(f"{args.kind} tasks on {args.url.split('@')[-1]}, loop {args.loop}, N = {low}, {high}")
    print("| tree | variant | instructions per task |")
    print("|---|---|---:|")
    for variant in args.variants.split(","):
        for tree in [None, *args.tree]:
            per_task = (count(args, tree, variant, high) - count(args, tree, variant, low)) / (
                high - low
            )
            print(f"| {tree or default_tree()} | {variant} | {per_task:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
