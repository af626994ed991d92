"""The poison probe: do a few messages that kill their worker take good messages down with them?

    python benchmarks/poison.py [--brokers redis,sqlite,amqp] [--good 2000] [--poison 3]
                                [--concurrency 100] [--workers 2] [--cap 150] [--lease 2]
                                [--amqp-url URL] [--redis-url URL]

For each broker, it writes a `tasks.py` (a no-op task `good` and a task `poison` that calls
`os._exit(1)`), sends `--good` good tasks with `--poison` poison ones spread among them, and
runs `--workers` worker processes (`python -m aqueue worker tasks:app -c <concurrency>`) under
a supervisor loop that starts a new one whenever one dies. It stops when every good task has a
result and every poison message is settled (dead-lettered, or a failure stored), or when no
good result came for 10 s after the poison ones were settled, or at `--cap` seconds.

It reports:

- `crashes`: worker processes that died (exit code not 0);
- `good lost`: good tasks without a SUCCESS result at the end (never ran, or lost);
- `false dead`: good messages in the dead letters;
- `poison dead`: poison messages dead-lettered (should be all of them);
- `drain s`: seconds from the first publish to the last good result (or to the cap).

Results go to Redis (`--redis-url`, database 4 by default) for Redis and RabbitMQ, to the SQLite
file for SQLite. `--lease` is the SQLite and Redis `visibility_timeout`: how long a dead
worker's messages wait before another worker reclaims them.

What it makes, it deletes: Redis keys under a prefix of its own, RabbitMQ queues and exchanges
under a prefix of its own (`tpoison<random>-`), the SQLite file in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from aqueue import App, states
from aqueue.message import Envelope

ROOT = Path(__file__).resolve().parent.parent

TASKS = """
    import os

    from aqueue import App

    app = App(
        "poison",
        broker={broker!r},
        result_backend={backend!r},
        broker_visibility_timeout={lease!r},
        broker_transport_options={options!r},
        result_backend_transport_options={options!r},
    )


    @app.task
    async def good(i):
        return i


    @app.task
    async def poison(i):
        os._exit(1)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="redis,sqlite,amqp")
    parser.add_argument("--good", type=int, default=2000)
    parser.add_argument("--poison", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cap", type=float, default=150.0, help="seconds before giving up")
    parser.add_argument("--lease", type=float, default=2.0, help="visibility_timeout (s)")
    parser.add_argument("--log", type=Path, help="append the workers' logs to this file")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("AQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/4"),
    )
    args = parser.parse_args(argv)
    args.brokers = [name.strip() for name in args.brokers.split(",") if name.strip()]
    return args


class Supervisor:
    """Keeps `count` worker processes running in `cwd`, counting the ones that died."""

    def __init__(self, cwd: Path, count: int, concurrency: int) -> None:
        self.cwd, self.count, self.concurrency = cwd, count, concurrency
        self.crashes = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = (cwd / "workers.log").open("ab")

    def start_one(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE")}
        command = [sys.executable, "-m", "aqueue", "worker", "tasks:app"]
        command += [
            "-c",
            str(self.concurrency),
            "-l",
            os.environ.get("POISON_LOG_LEVEL", "WARNING"),
        ]
        return subprocess.Popen(command, cwd=self.cwd, env=env, stdout=self.log, stderr=self.log)

    async def run(self) -> None:
        """Start the workers, then restart each one that exits (a benchmark's poll loop)."""
        self.procs = [self.start_one() for _ in range(self.count)]
        while True:
            await asyncio.sleep(0.05)
            for index, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    self.crashes += proc.returncode != 0
                    self.procs[index] = self.start_one()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


def urls(
    name: str, args: argparse.Namespace, tmp: Path, tag: str
) -> tuple[str, str, dict[str, Any]]:
    """Broker URL, backend URL and transport options for one broker."""
    if name == "sqlite":
        db = f"sqlite:///{tmp / 'poison.db'}"
        return db, db, {}
    if name == "redis":
        return args.redis_url, args.redis_url, {"prefix": tag}
    sep = "&" if "?" in args.amqp_url else "?"
    return f"{args.amqp_url}{sep}prefix=t{tag}-", args.redis_url, {"prefix": tag}


async def probe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    tag = f"poison{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        broker, backend, options = urls(name, args, tmp, tag)
        lease = args.lease
        text = textwrap.dedent(TASKS).format(
            broker=broker, backend=backend, lease=lease, options=options
        )
        if name == "amqp":  # the broker takes its prefix from the URL
            text = text.replace(
                f"broker_transport_options={options!r}", "broker_transport_options={}"
            )
        (tmp / "tasks.py").write_text(text)
        app = App(
            "caller",
            broker=broker,
            result_backend=backend,
            broker_transport_options={} if name == "amqp" else options,
            result_backend_transport_options=options,
            set_as_current=False,
        )
        try:
            return await measure(app, tmp, args)
        finally:
            await cleanup(name, app, broker, tag)
            if args.log:
                with args.log.open("a") as log:
                    log.write((tmp / "workers.log").read_text(errors="replace"))


async def measure(app: App, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    async with app:
        step = max(args.good // (args.poison + 1), 1)
        plan = ["good"] * args.good
        for k in range(args.poison):
            plan.insert(step * (k + 1) + k, "poison")
        supervisor = Supervisor(tmp, args.workers, args.concurrency)
        started = time.monotonic()
        ids: dict[str, str] = {}
        for i, task in enumerate(plan):
            result = await app.send_task(f"tasks.{task}", [i])
            ids[result.id] = task
        runner = asyncio.ensure_future(supervisor.run())
        backend = await app.result_backend()
        broker = await app.broker()
        assert backend is not None
        good = {id_ for id_, task in ids.items() if task == "good"}
        done: set[str] = set()
        last_good = started
        poison_settled_at: float | None = None
        try:
            while time.monotonic() - started < args.cap:
                await asyncio.sleep(0.5)
                for id_ in list(good - done):
                    stored = await backend.fetch(id_)
                    if stored is not None and stored.state == states.SUCCESS:
                        done.add(id_)
                        last_good = time.monotonic()
                dead = await broker.dead_letters("default", limit=100_000)
                dead_poison = sum(1 for letter in dead if _task(letter.body) == "tasks.poison")
                if dead_poison >= args.poison and poison_settled_at is None:
                    poison_settled_at = time.monotonic()
                if done >= good and dead_poison >= args.poison:
                    break
                if poison_settled_at and time.monotonic() - max(last_good, poison_settled_at) > 10:
                    break
        finally:
            runner.cancel()
            supervisor.stop()
        dead = await broker.dead_letters("default", limit=100_000)
        names = [_task(letter.body) for letter in dead]
        return {
            "crashes": supervisor.crashes,
            "good lost": len(good - done),
            "false dead": names.count("tasks.good"),
            "poison dead": names.count("tasks.poison"),
            "drain s": round(last_good - started, 1),
            "capped": time.monotonic() - started >= args.cap,
        }


def _task(body: bytes) -> str:
    try:
        return Envelope.decode(body).task
    except Exception:
        return "?"


async def cleanup(name: str, app: App, broker_url: str, tag: str) -> None:
    """Delete what the probe made (the SQLite file goes with its folder)."""
    if name in ("redis", "amqp"):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(app.conf.result_backend or "")
        try:
            keys = [key async for key in client.scan_iter(match=f"{tag}:*", count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start : start + 1000])
        finally:
            await client.aclose()
    if name == "amqp":
        sys.path.insert(0, str(ROOT))
        try:
            from tests.helpers import service_amqp
        finally:
            sys.path.remove(str(ROOT))
        await service_amqp.cleanup(broker_url)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(
        f"{args.good} good + {args.poison} poison tasks, {args.workers} workers x "
        f"-c {args.concurrency}, lease {args.lease} s, cap {args.cap} s; "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    for name in args.brokers:
        row = await probe(name, args)
        print(f"{name:8} " + "  ".join(f"{k}: {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
