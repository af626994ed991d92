"""A RabbitMQ worker's resident set while it refuses oversized messages: its peak and its end.

    python benchmarks/refused_rss.py [--url amqp://guest:guest@127.0.0.1:5672/]
        [--oversized 111] [--good 300] [--concurrency 10] [--loop uvloop|asyncio]
        [--tree PATH] [--prefix refusedrss]

A producer process publishes `--good` no-op tasks with `--oversized` bodies just over 1 MiB
(`message_max_bytes`, as the chaos poison mix sends them) among them. Then this process runs a
burst worker as `aqueue worker` runs one (the collector's and malloc's settings of
`Worker.serve`), which refuses each oversized body (dead-lettered, `oversized`, body kept) and
runs the rest, while a thread reads VmRSS every 50 ms. It prints the growth at the peak and at
the end (over the resident set just before the worker starts) and checks that every oversized
body is a dead letter, whole. `--tree` runs another checkout of aqueue (put first on the path).
Its queues and exchanges have a prefix of their own (`--prefix` and a random part), deleted
at the end (the queues found with `rabbitmqctl list_queues`). Issue 19, finding 8
(`benchmarks/results-chaos.md`).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--oversized", type=int, default=111)
    parser.add_argument("--good", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--tree", default=str(ROOT))
    parser.add_argument("--prefix", default="refusedrss", help="of the names it makes")
    parser.add_argument("--produce", help=argparse.SUPPRESS)  # the producer child: its prefix
    return parser.parse_args()


def resident() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def make_app(args: argparse.Namespace, prefix: str) -> Any:
    from aqueue import App

    separator = "&" if "?" in args.url else "?"
    app = App(
        "refused",
        set_as_current=False,
        broker=f"{args.url}{separator}prefix={prefix}",
        backend=False,
        # Room for every dead letter: past the cap, RabbitMQ drops the oldest.
        broker_transport_options={"dead_letter_max_bytes": 2 << 30},
    )

    @app.task(name="refused.work")
    async def work(i: int) -> int:
        return i

    return app


async def produce(args: argparse.Namespace, prefix: str) -> None:
    from aqueue import OutgoingMessage
    from aqueue.message import encode_body

    app = make_app(args, prefix)
    async with app:
        broker = await app.broker()
        big = ["x" * (1 << 20)]
        oversized = [
            OutgoingMessage(
                id=f"big-{i}",
                queue="default",
                body=encode_body(f"big-{i}", "refused.work", big, {}, None, None, 0, {}, 4 << 20),
            )
            for i in range(args.oversized)
        ]
        calls = [((i,), {}) for i in range(args.good)]
        await app.send_many("refused.work", calls[: args.good // 2])
        for at in range(0, len(oversized), 20):
            await broker.publish(oversized[at : at + 20])
        await app.send_many("refused.work", calls[args.good // 2 :])


async def work(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    from aqueue import Worker
    from aqueue.worker.gc_tuning import tuned_for_worker
    from aqueue.worker.malloc_tuning import fix_mmap_threshold

    app = make_app(args, prefix)
    fix_mmap_threshold(app.conf.worker_malloc_mmap_threshold)  # as `Worker.serve` does
    start = resident()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], resident())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    try:
        with tuned_for_worker(app.conf.worker_tune_gc):
            await Worker(app, concurrency=args.concurrency, burst=True).run()
    finally:
        stop.set()
        sampler.join()
    took = time.monotonic() - began
    end = resident()
    async with app:
        broker = await app.broker()
        letters = await broker.dead_letters("default", limit=args.oversized + 100)
    whole = sum(
        1 for letter in letters if letter.reason == "oversized" and len(letter.body) > 2**20
    )
    return {
        "peak MB": round((peak[0] - start) / 2**20, 1),
        "end MB": round((end - start) / 2**20, 1),
        "seconds": round(took, 1),
        "dead letters": len(letters),
        "oversized, whole": whole,
    }


async def cleanup(args: argparse.Namespace, prefix: str) -> None:
    """Delete the queues and exchanges named with `prefix`."""
    from tests.helpers.service_amqp import delete_prefixed

    await delete_prefixed(args.url, prefix, "refused-rss")


async def main(args: argparse.Namespace, prefix: str) -> None:
    try:
        outcome = await work(args, prefix)
    finally:
        await cleanup(args, prefix)
    print(
        f"{args.oversized} oversized + {args.good} good, -c {args.concurrency}, {args.loop}: "
        + ", ".join(f"{key} {value}" for key, value in outcome.items()),
        flush=True,
    )


if __name__ == "__main__":
    arguments = parse_args()
    sys.path[:0] = [arguments.tree, str(ROOT)]  # aqueue from the tree; tests.helpers from here
    if arguments.produce:
        asyncio.run(produce(arguments, arguments.produce))
        sys.exit()
    name_prefix = f"{arguments.prefix}{uuid.uuid4().hex[:8]}-"
    # The producer is a process of its own: its memory is not the worker's.
    command = [sys.executable, __file__, *sys.argv[1:], "--produce", name_prefix]
    subprocess.run(command, check=True)
    if arguments.loop == "uvloop":
        import uvloop

        uvloop.run(main(arguments, name_prefix))
    else:
        asyncio.run(main(arguments, name_prefix))
