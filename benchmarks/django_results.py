"""Round-trip latency of results stored through Django (`django-db`, `django-cache`) vs Redis.

One round trip: `r = await echo.delay(i)` then `await r.get()`, one at a time, against ONE
worker process (`aqueue worker -c 50`) already running. Each scenario (result store x broker)
runs in a process of its own (Django is configured once per process), with its own Django
project written to a temporary directory: SQLite file, PostgreSQL 127.0.0.1:5432 (trust auth,
reached through its `test` database; a database of the run's own, dropped after), Redis
127.0.0.1:6379 db 15 (`--redis`). Prints the median and p90 of `--n` round trips after
`--warmup` unmeasured ones.

    python benchmarks/django_results.py [--n 200] [--warmup 20] [--scenarios ...]

Scenarios are `STORE/BROKER`: stores `redis`, `django-db-sqlite`, `django-db-pg`,
`django-cache-redis`, `django-cache-file`; brokers `sqlite`, `redis`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

DEFAULT = [
    "redis/redis",
    "django-db-pg/redis",
    "django-db-sqlite/redis",
    "django-cache-redis/redis",
    "redis/sqlite",
    "django-db-pg/sqlite",
    "django-db-sqlite/sqlite",
]

SETTINGS = """
SECRET_KEY = "bench"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "aqueue.contrib.django"]
DATABASES = {{
    "default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {sqlite!r},
                 "OPTIONS": {{"timeout": 20}}}},
    "pg": {{"ENGINE": "django.db.backends.postgresql", "NAME": {pg!r}, "USER": "postgres",
            "HOST": "127.0.0.1", "PORT": "5432"}},
}}
CACHES = {{
    "default": {{"BACKEND": "django.core.cache.backends.redis.RedisCache",
                 "LOCATION": {redis!r}, "KEY_PREFIX": {prefix!r}}},
    "files": {{"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
               "LOCATION": {files!r}}},
}}
"""

APP = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench_settings")
from aqueue import App

app = App("bench")


@app.task
async def echo(i: int) -> int:
    return i
"""

STORES = {
    "redis": None,  # the Redis URL, filled in
    "django-db-sqlite": "django-db",
    "django-db-pg": "django-db://pg",
    "django-cache-redis": "django-cache",
    "django-cache-file": "django-cache://files",
}


def scenario(name: str, n: int, warmup: int, redis: str) -> dict[str, float]:
    """Run one scenario in this process (called in a child process of its own)."""
    store_name, _, broker_name = name.partition("/")
    directory = Path(tempfile.mkdtemp(prefix="aqueue-bench-django-"))
    prefix = f"aqueue-bench-{uuid.uuid4().hex[:8]}"
    pg_db = f"aqueue_bench_{uuid.uuid4().hex[:8]}"  # made on the server of `test`, then dropped
    (directory / "bench_settings.py").write_text(
        SETTINGS.format(
            sqlite=str(directory / "db.sqlite3"),
            redis=redis,
            prefix=prefix,
            files=str(directory / "cache"),
            pg=pg_db,
        )
    )
    (directory / "bench_app.py").write_text(textwrap.dedent(APP))
    sys.path.insert(0, str(directory))
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench_settings"
    import django
    from django.core.management import call_command

    django.setup()
    store = STORES[store_name] or f"{redis}?prefix={prefix}"
    broker = (
        f"sqlite:///{directory / 'broker.db'}"
        if broker_name == "sqlite"
        else f"{redis}?prefix={prefix}"
    )
    alias = "pg" if store_name == "django-db-pg" else "default"
    if store_name == "django-db-pg":
        _server(f'CREATE DATABASE "{pg_db}"')
    if store_name.startswith("django-db"):
        call_command("migrate", "aqueue", database=alias, verbosity=0)
        from django.db import connections

        connections.close_all()
    env = {**os.environ, "AQUEUE_BROKER_URL": broker, "AQUEUE_RESULT_BACKEND": store}
    worker = subprocess.Popen(
        [sys.executable, "-m", "aqueue", "worker", "bench_app:app", "-c", "50", "-l", "INFO"],
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        for line in worker.stderr:
            if "ready." in line:
                break
        else:
            raise SystemExit(f"{name}: the worker did not start")
        os.environ.update({"AQUEUE_BROKER_URL": broker, "AQUEUE_RESULT_BACKEND": store})
        return _measure(n, warmup)
    finally:
        worker.terminate()
        worker.wait(30)
        if store_name == "django-db-pg":
            from django.db import connections

            connections.close_all()
            _server(f'DROP DATABASE "{pg_db}" WITH (FORCE)')
        if "redis" in name:
            _drop_keys(redis, prefix)
        shutil.rmtree(directory, ignore_errors=True)


def _measure(n: int, warmup: int) -> dict[str, float]:
    import anyio
    import bench_app  # type: ignore[import-not-found]

    async def run() -> dict[str, float]:
        app = bench_app.app
        times: list[float] = []
        notifies = None
        async with app:
            for i in range(warmup + n):
                started = time.perf_counter()
                result = await bench_app.echo.delay(i)
                assert await result.get(timeout=30) == i
                if i >= warmup:
                    times.append(time.perf_counter() - started)
            backend = await app.result_backend()
            notifies = getattr(backend, "notifies", None)
        times.sort()
        return {
            "median_ms": statistics.median(times) * 1000,
            "p90_ms": times[int(len(times) * 0.9)] * 1000,
            "notify": notifies,
        }

    return anyio.run(run)


def _server(sql: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(sql)


def _drop_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--scenarios", nargs="*", default=DEFAULT)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(scenario(args.one, args.n, args.warmup, args.redis)))
        return
    print(
        f"{args.n} round trips each (delay -> worker -> get), one at a time, "
        f"after {args.warmup} warm-up\n"
    )
    print("| result store | broker | median ms | p90 ms | wait |")
    print("|---|---|---|---|---|")
    for name in args.scenarios:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--n",
                str(args.n),
                "--warmup",
                str(args.warmup),
                "--redis",
                args.redis,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        store, _, broker = name.partition("/")
        wait = {
            True: "LISTEN/NOTIFY",
            False: "poll (backoff)",
            None: "pub/sub" if store == "redis" else "poll (backoff)",
        }[figures["notify"]]
        print(
            f"| {store} | {broker} | {figures['median_ms']:.2f} | {figures['p90_ms']:.2f} "
            f"| {wait} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
