"""What a chord costs: 10,000 no-op header tasks and a callback, against the same tasks plain.

    python benchmarks/canvas.py [--tasks 10000] [--runs 3] [--concurrency 200]
                                [--redis redis://127.0.0.1:6379/0]
                                [--store redis|django-db-pg|django-db-sqlite]

Redis broker and results (`--store django-db-pg` / `django-db-sqlite`: results, and the chord
count, in the Django ORM on PostgreSQL 127.0.0.1:5432, in a database of the run's own made
from `test` and dropped after, or in a SQLite file). One worker process (`aqueue worker -c C`)
runs throughout, under a key prefix of the run's own. Each run measures, one after the other:

- chord: from just before `chord(header, total.s()).delay()` to the callback's result in the
  caller (`await result.get()`): the header sent in one publish, every header task counted in
  the chord's set in Redis, the callback sent by the worker that counts the last one;
- plain: from just before `noop.delay_many(...)` to every one of the N results in the caller
  (`get()` on each, concurrently): the same tasks with no chord.

For the chord it also gives the worker process's CPU time per header task (from /proc, on
Linux), steadier than the times on a shared machine.

Prints each run and the medians. The keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from aqueue import App, chord, signature

TASKS = """
    from aqueue import App

    app = App("tasks", broker={url!r}, result_backend={store!r})


    @app.task(name="bench.noop")
    async def noop(i):
        return i


    @app.task(name="bench.total")
    async def total(values):
        return len(values)
"""


class WorkerProcess:
    """`python -m aqueue worker tasks:app -c C`, its log read by a thread."""

    def __init__(self, cwd: Path, concurrency: int) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("AQUEUE_BROKER_URL", None)
        env.pop("AQUEUE_RESULT_BACKEND", None)
        command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "WARNING"]
        command += ["-c", str(concurrency)]
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "ready" in line or "[queues]" in line:
                self.ready.set()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)

    def cpu(self) -> float:
        """The worker process's CPU time so far, in seconds (Linux: /proc; else NaN)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(app: App, tasks: int, worker: WorkerProcess) -> tuple[float, float, float]:
    """Return the chord's seconds, the plain tasks' seconds, and the chord's worker CPU."""
    header = [signature("bench.noop", (i,), app=app) for i in range(tasks)]
    cpu, started = worker.cpu(), time.perf_counter()
    result = await chord(header, signature("bench.total", app=app)).delay()
    assert await result.get(timeout=600) == tasks
    chord_seconds, chord_cpu = time.perf_counter() - started, worker.cpu() - cpu

    started = time.perf_counter()
    results = await app.send_many("bench.noop", [((i,), {}) for i in range(tasks)])
    values: list[Any] = [None] * tasks

    async def wait(index: int) -> None:
        values[index] = await results[index].get(timeout=600)

    async with anyio.create_task_group() as group:
        for index in range(tasks):
            group.start_soon(wait, index)
    assert values == list(range(tasks))
    plain_seconds = time.perf_counter() - started
    return chord_seconds, plain_seconds, chord_cpu


DJANGO_SETTINGS = """
SECRET_KEY = "bench"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "aqueue.contrib.django"]
DATABASES = {{
    "default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {sqlite!r},
                 "OPTIONS": {{"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}}}},
    "pg": {{"ENGINE": "django.db.backends.postgresql", "NAME": {pg!r}, "USER": "postgres",
            "HOST": "127.0.0.1", "PORT": "5432"}},
}}
"""


def _pg(sql: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(sql)


def django_store(cwd: Path, store: str) -> tuple[str, str | None]:
    """Set Django up for `store` (settings in `cwd`, tables migrated); return its URL and the
    PostgreSQL database to drop after."""
    pg_db = f"aqueue_bench_{uuid.uuid4().hex[:8]}" if store == "django-db-pg" else None
    settings = DJANGO_SETTINGS.format(sqlite=str(cwd / "db.sqlite3"), pg=pg_db or "unused")
    (cwd / "bench_settings.py").write_text(settings)
    sys.path.insert(0, str(cwd))
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench_settings"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])
    if pg_db is not None:
        _pg(f'CREATE DATABASE "{pg_db}"')
    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    alias = "default" if pg_db is None else "pg"
    call_command("migrate", "aqueue", database=alias, verbosity=0)
    connections.close_all()
    return ("django-db" if pg_db is None else "django-db://pg"), pg_db


async def main(args: argparse.Namespace) -> None:
    prefix = f"bench-canvas-{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in args.redis else "?"
    url = f"{args.redis}{separator}prefix={prefix}"
    pg_db = None
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        store = url
        if args.store != "redis":
            store, pg_db = await anyio.to_thread.run_sync(django_store, cwd, args.store)
        (cwd / "tasks.py").write_text(textwrap.dedent(TASKS).format(url=url, store=store))
        worker = WorkerProcess(cwd, args.concurrency)
        settings = {"result_backend": store}
        try:
            async with App("caller", broker=url, set_as_current=False, **settings) as app:
                await anyio.to_thread.run_sync(worker.ready.wait, 60)
                await one_run(app, 200, worker)  # warm up: connections, scripts
                chords, plains, cpus = [], [], []
                for run in range(args.runs):
                    chord_seconds, plain_seconds, cpu = await one_run(app, args.tasks, worker)
                    chords.append(chord_seconds)
                    plains.append(plain_seconds)
                    cpus.append(cpu / args.tasks * 1e6)
                    print(
                        f"run {run + 1}: chord {chord_seconds:.2f} s (worker CPU "
                        f"{cpus[-1]:.0f} µs per header task), delay_many + gather "
                        f"{plain_seconds:.2f} s"
                    )
                chord_median, plain_median = statistics.median(chords), statistics.median(plains)
                print(
                    f"\n{args.tasks:,} no-op tasks, Redis broker, {args.store} results, "
                    f"one worker -c {args.concurrency}, "
                    f"median of {args.runs}:\n"
                    f"  chord (delay -> callback result): {chord_median:.2f} s "
                    f"({args.tasks / chord_median:,.0f} header tasks/s; worker CPU "
                    f"{statistics.median(cpus):.0f} µs per header task)\n"
                    f"  delay_many + gather:              {plain_median:.2f} s "
                    f"({args.tasks / plain_median:,.0f} tasks/s)\n"
                    f"  chord / plain: {chord_median / plain_median:.2f}"
                )
        finally:
            worker.stop()
            await cleanup(args.redis, prefix)
            if pg_db is not None:
                _pg(f'DROP DATABASE "{pg_db}" WITH (FORCE)')


async def cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--store", choices=["redis", "django-db-pg", "django-db-sqlite"], default="redis"
    )
    anyio.run(main, parser.parse_args())
