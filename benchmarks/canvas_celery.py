"""The chord of `benchmarks/canvas.py`, in Celery: run by canvas.py `--celery` in a venv of its own.

    python benchmarks/canvas_celery.py --tasks 10000 --runs 3 --redis redis://127.0.0.1:6379/0

Redis broker and result backend (Celery's Redis chord counter, no `chord_unlock` polling), one
`celery worker` process (`--pool`, `--concurrency`). Times, each run, from just before
`chord(header)(total.s())` to the callback's result in the caller. Prints each run and the
median; deletes its Redis database's keys of this run (it uses a database of its own: --db).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

TASKS = """
    from celery import Celery

    app = Celery("tasks", broker={url!r}, backend={url!r})
    app.conf.worker_prefetch_multiplier = 50


    @app.task(name="bench.noop")
    def noop(i):
        return i


    @app.task(name="bench.total")
    def total(values):
        return len(values)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--db", type=int, default=9)
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    url = f"{args.redis.rstrip('/')}/{args.db}"
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "tasks.py").write_text(textwrap.dedent(TASKS).format(url=url))
        sys.path.insert(0, tmp)
        import redis
        import tasks  # type: ignore[import-not-found]
        from celery import chord

        client = redis.Redis.from_url(url)
        if client.dbsize():
            raise SystemExit(f"Redis database {args.db} is not empty: pick another with --db")
        command = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-l", "INFO"]
        command += ["-P", args.pool, "-c", str(args.concurrency), "--without-gossip"]
        command += ["--without-mingle", "--without-heartbeat"]
        worker = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ready = threading.Event()

        def read() -> None:
            assert worker.stdout is not None
            for line in worker.stdout:
                if "ready." in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        try:
            assert ready.wait(60), "the Celery worker did not start"

            def one(count: int) -> float:
                started = time.perf_counter()
                result = chord(tasks.noop.s(i) for i in range(count))(tasks.total.s())
                sent = time.perf_counter() - started
                assert result.get(timeout=900) == count
                print(f"  ({count:,}: sent in {sent:.2f} s)", flush=True)
                return time.perf_counter() - started

            one(100)  # warm up
            started = time.perf_counter()
            plain = [tasks.noop.delay(i) for i in range(args.tasks)]
            assert [result.get(timeout=900) for result in plain] == list(range(args.tasks))
            print(
                f"  (for scale: {args.tasks:,} plain delay() + get(): "
                f"{time.perf_counter() - started:.2f} s)",
                flush=True,
            )
            times = []
            for run in range(args.runs):
                times.append(one(args.tasks))
                print(f"run {run + 1}: Celery chord {times[-1]:.2f} s", flush=True)
            median = statistics.median(times)
            print(
                f"\nCelery {__import__('celery').__version__}, {args.tasks:,} no-op tasks, Redis, "
                f"one worker -P {args.pool} -c {args.concurrency}, median of {args.runs}: "
                f"chord {median:.2f} s ({args.tasks / median:,.0f} header tasks/s)"
            )
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            for pattern in ("celery*", "_kombu*", "unacked*"):
                for key in client.scan_iter(match=pattern, count=1000):
                    client.delete(key)
            client.close()


if __name__ == "__main__":
    main()
