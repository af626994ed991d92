"""How long after a `kill -9` the killed worker's messages are done by another worker.

    python benchmarks/kill_recovery.py [--brokers sqlite,redis] [--runs 3] [--tasks 3]
                                       [--redis redis://127.0.0.1:6379/0]

Each run, in a temporary directory of its own: worker A (`aqueue worker`, default settings:
`broker_visibility_timeout` 30 s, heartbeats 1 s / 5 s) takes `--tasks` tasks that wait for a
file; worker B is started and idle; A is killed with SIGKILL and the file created; the time
from the kill until every result is in is the recovery time. Prints each run and the median.
Redis runs use a key prefix of their own and delete their keys. (RabbitMQ redelivers a dead
connection's messages at once: `tests/worker/test_reclaim.py` checks it.)
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import anyio

from aqueue import App

TASKS = """
    import pathlib

    import anyio

    from aqueue import App

    HERE = pathlib.Path(__file__).resolve().parent
    app = App("tasks", broker={url!r})


    @app.task
    async def block(name):
        path = HERE / name
        while not path.exists():
            await anyio.sleep(0.01)
        return True
"""


class Worker:
    """`python -m aqueue worker tasks:app`, its log read by a thread."""

    def __init__(self, cwd: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("AQUEUE_BROKER_URL", None)
        env.pop("AQUEUE_RESULT_BACKEND", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO", "-c", "10"],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 60.0) -> None:
        def found() -> bool:
            return sum(text in line for line in self.lines) >= count

        with self._changed:
            if not self._changed.wait_for(found, timeout):
                raise SystemExit(f"no {count} line(s) with {text!r}:\n{''.join(self.lines)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)


async def one_run(url: str, tasks: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        if url.startswith("sqlite"):
            url = f"sqlite:///{cwd / 'aqueue.db'}"
        (cwd / "tasks.py").write_text(textwrap.dedent(TASKS).format(url=url))
        async with App("bench", broker=url, set_as_current=False) as caller:
            first = Worker(cwd)
            second: Worker | None = None
            try:
                await anyio.to_thread.run_sync(first.wait_for, "ready.")
                results = [await caller.send_task("tasks.block", ["go"]) for _ in range(tasks)]
                await anyio.to_thread.run_sync(first.wait_for, "received", tasks)
                second = Worker(cwd)
                await anyio.to_thread.run_sync(second.wait_for, "ready.")
                killed = time.monotonic()
                first.proc.send_signal(signal.SIGKILL)
                first.proc.wait()
                (cwd / "go").touch()
                for result in results:
                    await result.get(timeout=120)
                return time.monotonic() - killed
            finally:
                first.stop()
                if second is not None:
                    second.stop()
                if url.startswith("redis"):
                    await cleanup_redis(url)


async def cleanup_redis(url: str) -> None:
    from aqueue.drivers.redis.client import parse_redis_url

    settings = parse_redis_url(url, {})
    client = settings.client()
    try:
        keys = [key async for key in client.scan_iter(match=f"{settings.prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", default="sqlite,redis")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    for broker in args.brokers.split(","):
        times = []
        for _ in range(args.runs):
            unique = uuid.uuid4().hex[:8]
            if broker == "sqlite":
                url = "sqlite:///"  # a file in the run's own directory
            else:
                separator = "&" if "?" in args.redis else "?"
                url = f"{args.redis}{separator}prefix=kill-{unique}"
            seconds = await one_run(url, args.tasks)
            times.append(seconds)
            print(f"{broker}: recovered in {seconds:.1f} s", flush=True)
        load = os.getloadavg()[0]
        print(
            f"{broker}: median {statistics.median(times):.1f} s over {len(times)} runs "
            f"(load average {load:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    anyio.run(main)
