"""aqueue against arq, SAQ and taskiq: the same scenarios, the same servers, one run.

    python benchmarks/compare.py [--systems aqueue-redis,arq,saq,taskiq-redis,aqueue-amqp,
                                  taskiq-aio-pika] [--quick] [--repeat R]

Each project is installed into a virtual environment of the benchmark's own, under
`benchmarks/.venv-peers/` (one per project, as they pin redis-py differently; aqueue from this
checkout, editable), made on the first run; the script then re-executes itself under aqueue's.
Nothing is installed anywhere else.

Every system runs ONE worker process (its own worker class, in a small harness that counts
completions in memory) and one producer process, on the same Redis (a database the benchmark
owns, 14 by default, flushed before and after every run) or the same RabbitMQ (a vhost of the
benchmark's own, deleted at the end). Each drain figure is taken the same way for every system:

  1. a producer process pre-enqueues N tasks (the enqueue rate is measured here);
  2. the worker process starts;
  3. the clock runs from the first task started to the N-th task finished, both stamped inside
     the worker process (time.monotonic()); the worker reports its count every 1,000
     completions on a pipe, so the benchmark adds no broker round trip per task;
  4. the worker is killed and the server cleaned.

Scenarios:
  S1  20,000 pre-enqueued no-op tasks, drain rate, results off and results on;
  S2  5,000 tasks that each `await asyncio.sleep(0.01)`, concurrency 500, drain rate;
  S3  200 sequential round trips (enqueue, then wait for the result) against a running worker,
      p50 and p99 latency;
  enqueue rate, one call at a time (measured while pre-enqueueing S1 with results off) and with
      the system's own bulk API (while pre-enqueueing S1 with results on), where it has one.

Each figure is the median of R runs (3 by default; `--quick`: 1 run with smaller N). Results go
to stdout and to benchmarks/results-compare.md. See benchmarks/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from aqueue import App

SCRIPT = Path(__file__).resolve()
HERE = SCRIPT.parent
REPO = HERE.parent
VENVS = HERE / ".venv-peers"
#: One environment per project, as each pins redis-py differently (arq <6, SAQ <8, taskiq-redis
#: >=8). hiredis goes into every one, so that every system parses replies the same way.
ENVS: dict[str, list[str]] = {
    # uvloop: aqueue's worker runs on it when it is installed (--aqueue-loop picks either).
    "aqueue": ["-e", f"{REPO}[redis,amqp]", "hiredis", "uvloop"],
    "arq": ["arq", "hiredis"],
    # SAQ imports typing_extensions without declaring it (saq 0.26).
    "saq": ["saq[redis,hiredis]", "typing_extensions"],
    # taskiq[uv] is uvloop, which `taskiq worker` installs as its loop when it is there.
    "taskiq": ["taskiq[uv]", "taskiq-redis", "taskiq-aio-pika", "hiredis"],
    # streaq speaks Redis through coredis, not redis-py.
    "streaq": ["streaq"],
    "docket": ["pydocket", "hiredis"],
}
SYSTEM_ENV = {
    "aqueue-redis": "aqueue",
    "aqueue-amqp": "aqueue",
    "arq": "arq",
    "saq": "saq",
    "taskiq-redis": "taskiq",
    "taskiq-aio-pika": "taskiq",
    "streaq": "streaq",
    "docket": "docket",
}
#: The event loop each peer's own worker command runs on, installed as its docs say:
#: `taskiq worker` picks uvloop when it is installed (taskiq[uv]); arq's, SAQ's, streaq's
#: (anyio, no backend option) and docket's (asyncio.run) run the stock asyncio loop.
#: aqueue runs on both (`--aqueue-loop`): `aqueue worker` picks uvloop when it is installed.
PEER_LOOP = {
    "arq": "asyncio",
    "saq": "asyncio",
    "taskiq-redis": "uvloop",
    "taskiq-aio-pika": "uvloop",
    "streaq": "asyncio",
    "docket": "asyncio",
}
#: The packages whose versions the report names, where an environment has them.
VERSIONED = [
    "aqueue-tasks",
    "arq",
    "saq",
    "taskiq",
    "taskiq-redis",
    "taskiq-aio-pika",
    "streaq",
    "pydocket",
    "uvloop",
    "redis",
    "coredis",
    "hiredis",
    "aio-pika",
    "aiormq",
    "msgpack",
    "anyio",
]

REDIS_SYSTEMS = ["aqueue-redis", "arq", "saq", "taskiq-redis", "streaq", "docket"]
AMQP_SYSTEMS = ["aqueue-amqp", "taskiq-aio-pika"]
ALL_SYSTEMS = REDIS_SYSTEMS + AMQP_SYSTEMS
#: The ones with a bulk enqueue API.
BULK_SYSTEMS = {"aqueue-redis", "aqueue-amqp", "streaq", "docket"}
LOOPS = ("uvloop", "asyncio")

MARKER = "aqueue-bench:owner"  # set in the Redis database the benchmark owns
REPORT_EVERY = 1000  # the worker process reports its count this often
BULK_CHUNK = 1000  # tasks per bulk call
FANOUT = 50  # concurrent enqueues when pre-enqueueing for a system without a bulk API
SLEEP = 0.01  # S2's task body
DOCKET_CONNECTIONS = 2000  # docket's Redis pool (see docket_client)
SAQ_WAIT = 1  # SAQ's until_complete in S3 (s): what a lost completion notice costs there

# -- the benchmark's own environments ---------------------------------------------------------


def env_python(env: str) -> Path:
    return VENVS / env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_envs(argv: list[str], systems: list[str]) -> None:
    """Create/refresh the environments in benchmarks/.venv-peers, then re-execute in aqueue's.

    Only the environments of `systems` (and aqueue's, which runs this script) are prepared.
    """
    wanted_envs = {"aqueue", *(SYSTEM_ENV[system] for system in systems)}
    for env, packages in ENVS.items():
        if env not in wanted_envs:
            continue
        python = env_python(env)
        stamp = VENVS / env / ".bench-requirements"
        wanted = " ".join(packages)
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            continue
        print(f"Preparing {VENVS / env} (once) ...", flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENVS / env)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *packages], check=True)
        stamp.write_text(wanted)
    python = env_python("aqueue")
    if Path(sys.prefix).resolve() != python.parent.parent.resolve():
        os.execv(str(python), [str(python), str(SCRIPT), *argv])


# -- the worker process ----------------------------------------------------------------------
# `compare.py --worker JSON` runs one system's worker until killed. Its tasks stamp the first
# start and count completions in memory; every REPORT_EVERY completions, and at the target, one
# line goes to stdout: "@@bench <count> <first start> <now>" (time.monotonic(), which every
# process on the machine shares).


class Tally:
    """Completions counted in the worker process, reported in batches on stdout."""

    __slots__ = ("count", "first", "profile", "profiler", "target")

    def __init__(self, target: int, profile: str | None) -> None:
        self.count = 0
        self.first = 0.0
        self.target = target
        self.profile = profile
        self.profiler: Any = None

    def begin(self) -> None:
        if not self.first:
            self.first = time.monotonic()
            if self.profile:
                import cProfile

                self.profiler = cProfile.Profile()
                self.profiler.enable()

    def end(self) -> None:
        self.count += 1
        count = self.count
        if count % REPORT_EVERY == 0 or count == self.target:
            now = time.monotonic()
            if count == self.target and self.profiler is not None:
                self.profiler.disable()
                self.profiler.dump_stats(self.profile)
            os.write(1, f"@@bench {count} {self.first!r} {now!r}\n".encode())


def run_on(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    """Run `main` on the stock asyncio loop or on uvloop."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())  # type: ignore[arg-type]
    else:
        asyncio.run(main())  # type: ignore[arg-type]


def worker_main(cfg: dict[str, Any]) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tally = Tally(cfg["target"], cfg.get("profile"))
    SERVE[cfg["system"]](cfg, tally)


def serve_aqueue(cfg: dict[str, Any], tally: Tally) -> None:
    import anyio

    from aqueue import Worker

    app = aqueue_app(cfg["url"], cfg["results"], cfg["backend"])

    @app.task(name="bench.noop")
    async def noop() -> None:
        tally.begin()
        tally.end()

    @app.task(name="bench.sleep")
    async def sleep() -> None:
        tally.begin()
        await asyncio.sleep(SLEEP)  # as every system's S2 task does
        tally.end()

    async def main() -> None:
        async with app:  # as `aqueue worker` runs it (serve: signals, worker_tune_gc)
            await Worker(app, concurrency=cfg["concurrency"]).serve()

    anyio.run(main, backend_options={"use_uvloop": cfg["loop"] == "uvloop"})


def serve_arq(cfg: dict[str, Any], tally: Tally) -> None:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    async def noop(ctx: Any) -> None:
        tally.begin()
        tally.end()

    async def sleep(ctx: Any) -> None:
        tally.begin()
        await asyncio.sleep(SLEEP)
        tally.end()

    async def main() -> None:
        worker = Worker(
            functions=[func(noop, name="bench.noop"), func(sleep, name="bench.sleep")],
            redis_settings=RedisSettings.from_dsn(cfg["url"]),
            max_jobs=cfg["concurrency"],
            # arq's default keeps results an hour; keep_result=0 is its documented "off".
            keep_result=3600 if cfg["results"] else 0,
        )
        await worker.async_run()

    asyncio.run(main())


def serve_saq(cfg: dict[str, Any], tally: Tally) -> None:
    from saq import Queue, Worker

    async def noop(ctx: Any) -> None:
        tally.begin()
        tally.end()

    async def sleep(ctx: Any) -> None:
        tally.begin()
        await asyncio.sleep(SLEEP)
        tally.end()

    async def main() -> None:
        # Results on/off is per job in SAQ (ttl, set by the producer).
        queue = Queue.from_url(cfg["url"], name="bench")
        worker = Worker(
            queue,
            functions=[("bench.noop", noop), ("bench.sleep", sleep)],
            concurrency=cfg["concurrency"],
        )
        await worker.start()

    asyncio.run(main())


def serve_taskiq(cfg: dict[str, Any], tally: Tally) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from taskiq import AsyncBroker
    from taskiq.receiver import Receiver

    broker: AsyncBroker = taskiq_broker(cfg)

    @broker.task(task_name="bench.noop")
    async def noop() -> None:
        tally.begin()
        tally.end()

    @broker.task(task_name="bench.sleep")
    async def sleep() -> None:
        tally.begin()
        await asyncio.sleep(SLEEP)
        tally.end()

    async def main() -> None:
        # What `taskiq worker broker:broker --workers 1 --max-async-tasks C` does in its one
        # worker process (its other defaults kept), without the supervising parent process.
        broker.is_worker_process = True
        with ThreadPoolExecutor() as pool:
            receiver = Receiver(broker, executor=pool, max_async_tasks=cfg["concurrency"])
            try:
                await receiver.listen(asyncio.Event())
            finally:
                await broker.shutdown()

    run_on(cfg["loop"], main)  # `taskiq worker` runs on uvloop when it is installed


def serve_streaq(cfg: dict[str, Any], tally: Tally) -> None:
    worker = streaq_worker(cfg, concurrency=cfg["concurrency"])

    async def noop() -> None:
        tally.begin()
        tally.end()

    async def sleep() -> None:
        tally.begin()
        await asyncio.sleep(SLEEP)
        tally.end()

    define_streaq(worker, cfg, {"noop": noop, "sleep": sleep})
    worker.run_sync()  # what `streaq run module:worker` does (anyio's asyncio backend)


def serve_docket(cfg: dict[str, Any], tally: Tally) -> None:
    from datetime import timedelta

    from docket import Worker

    async def noop() -> None:
        tally.begin()
        tally.end()

    async def sleep() -> None:
        tally.begin()
        await asyncio.sleep(SLEEP)
        tally.end()

    async def main() -> None:
        # What `docket worker --concurrency C` runs (Worker.run), less its signal handlers
        # and health/metrics servers; its CLI's check interval (100 ms) kept.
        async with docket_client(cfg) as docket:
            docket.register(noop, names=["bench.noop"])
            docket.register(sleep, names=["bench.sleep"])
            async with Worker(
                docket,
                concurrency=cfg["concurrency"],
                minimum_check_interval=timedelta(milliseconds=100),
            ) as worker:
                await worker.run_forever()

    asyncio.run(main())  # as its CLI


SERVE: dict[str, Callable[[dict[str, Any], Tally], None]] = {
    "aqueue-redis": serve_aqueue,
    "aqueue-amqp": serve_aqueue,
    "arq": serve_arq,
    "saq": serve_saq,
    "taskiq-redis": serve_taskiq,
    "taskiq-aio-pika": serve_taskiq,
    "streaq": serve_streaq,
    "docket": serve_docket,
}


# -- building each system (shared by the producer and the worker process) --------------------


def aqueue_app(url: str, results: bool, backend: str | None) -> App:
    from aqueue import App

    chosen: str | bool | None = (backend or None) if results else False
    return App("bench", broker=url, backend=chosen, set_as_current=False)


def taskiq_broker(cfg: dict[str, Any]) -> Any:
    backend = None
    if cfg["results"]:
        from taskiq_redis import RedisAsyncResultBackend

        backend = RedisAsyncResultBackend(redis_url=cfg["backend"] or cfg["url"])
    if cfg["system"] == "taskiq-redis":
        from taskiq_redis import RedisStreamBroker

        broker = RedisStreamBroker(url=cfg["url"])
    else:
        from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

        prefix = cfg["prefix"]
        queue_type = QueueType(cfg.get("queue_type") or "classic")
        broker = AioPikaBroker(
            url=cfg["url"],
            # qos is taskiq-aio-pika's prefetch (default 10): given the worker's concurrency,
            # as aqueue's prefetch always is, or at most 10 tasks could ever run at once.
            qos=cfg["concurrency"],
            exchange=Exchange(name=f"{prefix}taskiq"),
            task_queues=[Queue(name=f"{prefix}taskiq", type=queue_type)],
            dead_letter_queue=Queue(name=f"{prefix}taskiq.dead_letter", type=queue_type),
        )
    return broker.with_result_backend(backend) if backend is not None else broker


def streaq_worker(cfg: dict[str, Any], concurrency: int = 16) -> Any:
    from streaq import Worker

    return Worker(redis_url=cfg["url"], queue_name="bench", concurrency=concurrency)


def define_streaq(worker: Any, cfg: dict[str, Any], bodies: dict[str, Any]) -> dict[str, Any]:
    """Register the bench tasks; results kept 5 minutes (streaq's default) or not at all."""
    ttl = 300 if cfg["results"] else 0  # ttl=0: no result stored
    return {kind: worker.task(name=f"bench.{kind}", ttl=ttl)(fn) for kind, fn in bodies.items()}


def docket_client(cfg: dict[str, Any]) -> Any:
    from datetime import timedelta

    from docket import Docket

    # execution_ttl: how long a finished task's state and result are kept (15 min by
    # default); 0 keeps none, which is results off.
    ttl = timedelta(minutes=15) if cfg["results"] else timedelta(0)
    # redis-py 8 caps a pool at 100 connections, and a docket worker holds one per running
    # task: at concurrency 500 it fails with "Too many connections" unless the URL raises it.
    sep = "&" if "?" in cfg["url"] else "?"
    url = f"{cfg['url']}{sep}max_connections={DOCKET_CONNECTIONS}"
    return Docket(name="bench", url=url, execution_ttl=ttl)


# -- the producer side -----------------------------------------------------------------------


class Producer(Protocol):
    """What the benchmark drives in its own process, for one system."""

    #: The system's own bulk enqueue, if it has one: (kind, how many) -> None.
    bulk: Callable[[str, int], Awaitable[None]] | None
    #: Round trips whose result was there but whose waiter was never told (SAQ).
    missed: int

    async def one(self, kind: str) -> None: ...
    async def round_trip(self) -> None: ...
    async def aclose(self) -> None: ...


class AqueueProducer:
    missed = 0

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.app = aqueue_app(cfg["url"], cfg["results"], cfg["backend"])
        self.tasks = {kind: self._define(kind) for kind in ("noop", "sleep")}
        self.bulk = self._bulk

    def _define(self, kind: str) -> Any:
        async def body() -> None:
            return None

        return self.app.task(name=f"bench.{kind}")(body)

    async def one(self, kind: str) -> None:
        await self.tasks[kind].delay()

    async def _bulk(self, kind: str, n: int) -> None:
        task = self.tasks[kind]
        for start in range(0, n, BULK_CHUNK):
            await task.delay_many([() for _ in range(min(BULK_CHUNK, n - start))])

    async def round_trip(self) -> None:
        await (await self.tasks["noop"].delay()).get(timeout=30)

    async def aclose(self) -> None:
        await self.app.close()


class ArqProducer:
    bulk = None  # arq has enqueue_job only
    missed = 0

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.url = cfg["url"]
        self.pool: Any = None

    async def open(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.pool = await create_pool(RedisSettings.from_dsn(self.url))

    async def one(self, kind: str) -> None:
        await self.pool.enqueue_job(f"bench.{kind}")

    async def round_trip(self) -> None:
        job = await self.pool.enqueue_job("bench.noop")
        await job.result(timeout=30)  # arq polls for results (poll_delay 0.5 s by default)

    async def aclose(self) -> None:
        await self.pool.aclose()


class SaqProducer:
    bulk = None  # SAQ enqueues one job per call (Queue.map also waits for the results)
    missed = 0

    def __init__(self, cfg: dict[str, Any]) -> None:
        from saq import Queue

        self.queue = Queue.from_url(cfg["url"], name="bench")
        # SAQ keeps each job, with its result, for ttl seconds (600 by default); -1 is "off".
        self.options: dict[str, Any] = {} if cfg["results"] else {"ttl": -1}

    async def one(self, kind: str) -> None:
        await self.queue.enqueue(f"bench.{kind}", **self.options)

    async def round_trip(self) -> None:
        job = await self.queue.enqueue("bench.noop")
        assert job is not None
        try:
            await job.refresh(until_complete=SAQ_WAIT)  # waits on pub/sub, no polling
        except TimeoutError:
            # About 1 in 250 completions never reaches the waiter (it subscribes anew for each
            # call, and a job that completes meanwhile is missed): SAQ then waits out
            # until_complete, although the job is done. Counted, and kept in the samples.
            await job.refresh()
            if job.status.name != "COMPLETE":
                raise
            self.missed += 1

    async def aclose(self) -> None:
        await self.queue.disconnect()


class TaskiqProducer:
    bulk = None  # taskiq sends one message per kiq()
    missed = 0

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.broker = taskiq_broker(cfg)
        self.tasks = {kind: self._define(kind) for kind in ("noop", "sleep")}

    def _define(self, kind: str) -> Any:
        async def body() -> None:
            return None

        return self.broker.task(task_name=f"bench.{kind}")(body)

    async def open(self) -> None:
        await self.broker.startup()

    async def one(self, kind: str) -> None:
        await self.tasks[kind].kiq()

    async def round_trip(self) -> None:
        task = await self.tasks["noop"].kiq()
        await task.wait_result(timeout=30)  # polls every 0.2 s by default

    async def aclose(self) -> None:
        await self.broker.shutdown()


class StreaqProducer:
    missed = 0

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.worker = streaq_worker(cfg)
        self.tasks = define_streaq(self.worker, cfg, {"noop": _nothing, "sleep": _nothing})
        self.stack = contextlib.AsyncExitStack()
        self.bulk = self._bulk

    async def open(self) -> None:
        await self.stack.enter_async_context(self.worker)

    async def one(self, kind: str) -> None:
        await self.tasks[kind].enqueue()

    async def _bulk(self, kind: str, n: int) -> None:
        task = self.tasks[kind]
        for start in range(0, n, BULK_CHUNK):
            calls = [task.enqueue() for _ in range(min(BULK_CHUNK, n - start))]
            await self.worker.enqueue_many(calls)

    async def round_trip(self) -> None:
        task = await self.tasks["noop"].enqueue()
        await task.result(timeout=30)  # waits on pub/sub

    async def aclose(self) -> None:
        await self.stack.aclose()


class DocketProducer:
    missed = 0

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.docket = docket_client(cfg)
        self.stack = contextlib.AsyncExitStack()
        self.bulk = self._bulk

    async def open(self) -> None:
        await self.stack.enter_async_context(self.docket)
        for kind in ("noop", "sleep"):
            self.docket.register(_nothing, names=[f"bench.{kind}"])

    async def one(self, kind: str) -> None:
        await self.docket.add(f"bench.{kind}")()

    async def _bulk(self, kind: str, n: int) -> None:
        name = f"bench.{kind}"
        for start in range(0, n, BULK_CHUNK):
            # One `call(name)` per task: it draws the task's key (one call for all would
            # schedule the first and dedupe the rest).
            calls = [self.docket.call(name)() for _ in range(min(BULK_CHUNK, n - start))]
            await self.docket.add_many(calls)

    async def round_trip(self) -> None:
        from datetime import timedelta

        execution = await self.docket.add("bench.noop")()
        await execution.get_result(timeout=timedelta(seconds=30))  # waits on pub/sub

    async def aclose(self) -> None:
        await self.stack.aclose()


async def _nothing() -> None:
    return None


async def open_producer(cfg: dict[str, Any]) -> Producer:
    system = cfg["system"]
    producer: Any
    if system.startswith("aqueue"):
        producer = AqueueProducer(cfg)
        await producer.app.open()
    elif system == "arq":
        producer = ArqProducer(cfg)
        await producer.open()
    elif system == "saq":
        producer = SaqProducer(cfg)
    elif system == "streaq":
        producer = StreaqProducer(cfg)
        await producer.open()
    elif system == "docket":
        producer = DocketProducer(cfg)
        await producer.open()
    else:
        producer = TaskiqProducer(cfg)
        await producer.open()
    result: Producer = producer
    return result


def producer_main(job: dict[str, Any]) -> None:
    """`compare.py --producer JSON`: enqueue, or time round trips; print one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    outcome: dict[str, Any] = {}

    async def main() -> None:
        outcome.update(await produce(job))

    run_on(job["cfg"]["loop"], main)  # the producer runs on the loop its worker runs on
    print("@@bench " + json.dumps(outcome), flush=True)


async def produce(job: dict[str, Any]) -> dict[str, Any]:
    async with asyncio.timeout(60):  # in this task: streaq's client must close where it opened
        producer = await open_producer(job["cfg"])
    try:
        if job["action"] == "enqueue":
            return {"rate": await enqueue(producer, job["kind"], job["n"], job["how"])}
        return await round_trips(producer, job["samples"], job["budget"])
    finally:
        await producer.aclose()


async def enqueue(producer: Producer, kind: str, n: int, how: str) -> float:
    """Send n tasks one call at a time, in bulk, or FANOUT calls at a time; tasks per second."""
    started = time.perf_counter()
    if how == "one":
        for _ in range(n):
            await producer.one(kind)
    elif how == "bulk" and producer.bulk is not None:
        await producer.bulk(kind, n)
    else:
        for start in range(0, n, FANOUT):
            await asyncio.gather(*(producer.one(kind) for _ in range(min(FANOUT, n - start))))
    return n / (time.perf_counter() - started)


async def round_trips(producer: Producer, samples: int, budget: float) -> dict[str, Any]:
    """Warm up, then time up to `samples` round trips (and at most `budget` seconds of them)."""
    deadline = time.monotonic() + 60
    while True:  # the worker is up once a round trip succeeds
        try:
            await asyncio.wait_for(producer.round_trip(), 10)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                return {"error": "timeout: no round trip succeeded in 60 s"}
    for _ in range(3):
        await asyncio.wait_for(producer.round_trip(), 35)
    producer.missed = 0
    times: list[float] = []
    budget_end = time.monotonic() + budget
    for _ in range(samples):
        started = time.perf_counter()
        try:
            await asyncio.wait_for(producer.round_trip(), 35)
        except TimeoutError:
            return {"error": f"timeout: round trip {len(times) + 1} took over 35 s"}
        times.append((time.perf_counter() - started) * 1000)
        if time.monotonic() > budget_end:
            break
    return {"samples": times, "missed": producer.missed}


def versions_main() -> None:
    """`compare.py --versions`: this environment's versions of the packages that matter."""
    found = {}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    print("@@bench " + json.dumps(found), flush=True)


# -- servers: a Redis database and a RabbitMQ vhost the benchmark owns -----------------------


class RedisPlace:
    """A Redis database used by the benchmark alone: flushed before and after every run."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.version = "?"

    async def __aenter__(self) -> RedisPlace:
        import redis.asyncio as aioredis

        async with aioredis.from_url(self.url) as client:
            self.version = str((await client.info("server"))["redis_version"])
            keys = await client.dbsize()
            if keys and not await client.exists(MARKER):
                raise SystemExit(
                    f"{self.url} holds {keys} keys the benchmark did not make; it flushes the "
                    "database it uses, so give it an empty one with --redis-url"
                )
        await self.reset()
        return self

    async def reset(self) -> None:
        import redis.asyncio as aioredis

        async with aioredis.from_url(self.url) as client:
            await client.flushdb()
            await client.set(MARKER, "1")

    async def __aexit__(self, *exc: object) -> None:
        import redis.asyncio as aioredis

        async with aioredis.from_url(self.url) as client:
            await client.flushdb()


class AmqpPlace:
    """A vhost of the benchmark's own (made and deleted with rabbitmqctl when it can be)."""

    def __init__(self, url: str) -> None:
        self.base = url
        self.url = url
        self.version = "?"
        self.vhost: str | None = None
        self.ctl = shutil.which("rabbitmqctl")
        self.runs = 0

    def prefix(self) -> str:
        self.runs += 1
        return f"aqbench-{os.getpid()}-{self.runs}-"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.ctl is not None
        return subprocess.run(
            [self.ctl, "-q", *args], capture_output=True, text=True, timeout=60, check=False
        )

    async def __aenter__(self) -> AmqpPlace:
        parts = urlsplit(self.base)
        if self.ctl and parts.hostname in ("127.0.0.1", "localhost", "::1"):
            vhost = f"aqueue-bench-{uuid.uuid4().hex[:8]}"
            user = parts.username or "guest"
            made = await asyncio.to_thread(self._ctl, "add_vhost", vhost)
            if made.returncode == 0:
                await asyncio.to_thread(
                    self._ctl, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"
                )
                self.vhost = vhost
                self.url = urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
        if self.vhost is None:
            print(
                "  (rabbitmqctl is not usable here: queues go to the URL's vhost, named "
                "aqbench-*, and the ones the benchmark knows of are deleted after each run)",
                flush=True,
            )
        self.version = await self._server_version()
        return self

    async def _server_version(self) -> str:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        try:
            assert connection.transport is not None
            properties = connection.transport.connection.server_properties
            version = properties.get("version", "?")
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            await connection.close()

    async def reset(self, prefix: str) -> None:
        """Delete the queues of a finished run (its exchanges go with the vhost)."""
        import aio_pika

        if self.vhost is not None:
            listed = await asyncio.to_thread(self._ctl, "list_queues", "-p", self.vhost, "name")
            queues = [n for n in listed.stdout.split() if n.startswith(prefix)]
            exchanges: list[str] = []
        else:  # the names the benchmark knows of
            queues = [f"{prefix}{name}" for name in ("taskiq", "taskiq.dead_letter", "default")]
            queues.append(f"{prefix}aqueue.dead.default")
            exchanges = [f"{prefix}{name}" for name in ("taskiq", "aqueue", "aqueue.dead")]
        connection = await aio_pika.connect(self.url)
        try:
            for name, delete in [*((q, "queue") for q in queues), *((e, "x") for e in exchanges)]:
                channel = await connection.channel()  # a failed delete closes its channel
                with contextlib.suppress(Exception):
                    if delete == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
        finally:
            await connection.close()

    async def __aexit__(self, *exc: object) -> None:
        if self.vhost is not None:
            await asyncio.to_thread(self._ctl, "delete_vhost", self.vhost)


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Sizes:
    s1: int
    s2: int
    s3: int
    s3_budget: float  # seconds of round trips per run at most (for peers that poll)
    repeat: int
    concurrency: int  # S1 and S3
    s2_concurrency: int = 500


@dataclass
class Cell:
    """The values of one measurement over the runs, and any run that failed."""

    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class Failed(Exception):
    """A run that did not produce a number (a timeout, a crash); the message says which."""


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args = args
        self.sizes = sizes
        self.redis: RedisPlace | None = None
        self.amqp: AmqpPlace | None = None
        self.cells: dict[tuple[str, str], Cell] = {}
        self.latencies: dict[str, list[list[float]]] = {}
        self.versions: dict[str, str] = {}
        self.missed: dict[str, int] = {}
        self.load = os.getloadavg()
        self.interrupted = False
        self.logdir = Path(tempfile.mkdtemp(prefix="aqueue-compare-"))
        #: What each row of the table runs: label -> (system, event loop).
        self.entries: dict[str, tuple[str, str]] = entries_for(args.systems_list, args.aqueue_loop)

    def cell(self, label: str, what: str) -> Cell:
        return self.cells.setdefault((label, what), Cell())

    # -- configuration of one run --

    def config(self, label: str, *, results: bool, concurrency: int) -> dict[str, Any]:
        system, loop = self.entries[label]
        cfg: dict[str, Any] = {
            "system": system,
            "loop": loop,
            "results": results,
            "concurrency": concurrency,
            "target": 0,
            "backend": None,
            "prefix": "",
        }
        if system in REDIS_SYSTEMS:
            assert self.redis is not None
            cfg["url"] = self.redis.url
        else:
            assert self.amqp is not None
            cfg["prefix"] = self.amqp.prefix()
            cfg["url"] = self.amqp.url
            if system == "aqueue-amqp":
                sep = "&" if "?" in cfg["url"] else "?"
                cfg["url"] = f"{cfg['url']}{sep}prefix={cfg['prefix']}"
                cfg["backend"] = "rpc://" if results else None
            elif results:  # taskiq-aio-pika has no result backend of its own: taskiq-redis
                assert self.redis is not None
                cfg["backend"] = self.redis.url
        return cfg

    async def reset(self, cfg: dict[str, Any], *, after: bool = True) -> None:
        """Clean the servers a run used (RabbitMQ: each run has queues of its own)."""
        if cfg["system"] in REDIS_SYSTEMS or cfg.get("backend", "") not in (None, "rpc://"):
            assert self.redis is not None
            await self.redis.reset()
        if after and cfg["system"] in AMQP_SYSTEMS:
            assert self.amqp is not None
            await self.amqp.reset(cfg["prefix"])

    # -- processes --

    async def start_worker(self, cfg: dict[str, Any], label: str) -> Worker:
        if self.args.profile and cfg["system"].startswith("aqueue") and cfg["target"]:
            cfg["profile"] = os.path.join(self.args.profile, f"{label}.prof")
        log = self.logdir / f"{label}.log"
        stderr = log.open("wb")
        process = await asyncio.create_subprocess_exec(
            str(env_python(SYSTEM_ENV[cfg["system"]])),
            str(SCRIPT),
            "--worker",
            json.dumps(cfg),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            stdin=asyncio.subprocess.DEVNULL,
        )
        return Worker(process, stderr, log)

    async def produce(self, cfg: dict[str, Any], job: dict[str, Any], limit: float) -> Any:
        """Run a producer process for cfg's system; return what it printed."""
        label = f"{cfg['system']}-{cfg['loop']}-producer-{time.time_ns()}"
        log = self.logdir / f"{label}.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                str(env_python(SYSTEM_ENV[cfg["system"]])),
                str(SCRIPT),
                "--producer",
                json.dumps({**job, "cfg": cfg}),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                stdin=asyncio.subprocess.DEVNULL,
            )
            try:
                out, _ = await asyncio.wait_for(process.communicate(), limit)
            except TimeoutError:
                raise Failed(f"timeout: the producer took over {limit:.0f} s") from None
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("@@bench ")]
        if process.returncode or not lines:
            raise Failed(f"the producer exited with code {process.returncode}: {tail(log)}")
        outcome = json.loads(lines[-1].removeprefix("@@bench "))
        if isinstance(outcome, dict) and "error" in outcome:
            raise Failed(outcome["error"])
        return outcome

    # -- one drain run --

    async def drain(
        self, entry: str, *, kind: str, n: int, results: bool, concurrency: int, enqueue: str
    ) -> tuple[float, float]:
        """Pre-enqueue n tasks, then drain them with one worker process.

        Returns (drain rate, enqueue rate).
        """
        cfg = self.config(entry, results=results, concurrency=concurrency)
        system = f"{cfg['system']}-{cfg['loop']}"
        await self.reset(cfg, after=False)
        try:
            job = {"action": "enqueue", "kind": kind, "n": n, "how": enqueue}
            sent = (await self.produce(cfg, job, limit=60 + n / 20))["rate"]
            cfg["target"] = n
            label = f"{system}-{kind}-{'on' if results else 'off'}-{n}-{time.time_ns()}"
            worker = await self.start_worker(cfg, label)
            try:
                # A stall is no report for this long; the whole run is bounded too.
                rate = await worker.watch(n, stall=60.0, total=120.0 + n / 50)
            finally:
                await worker.stop()
        finally:
            await self.reset(cfg)
        return rate, sent

    async def enqueue_only(self, entry: str, n: int, how: str) -> float:
        """Only the enqueue rate: n tasks sent, then deleted (no worker)."""
        cfg = self.config(entry, results=False, concurrency=self.sizes.concurrency)
        await self.reset(cfg, after=False)
        try:
            job = {"action": "enqueue", "kind": "noop", "n": n, "how": how}
            rate: float = (await self.produce(cfg, job, limit=60 + n / 20))["rate"]
        finally:
            await self.reset(cfg)
        return rate

    # -- S3: round trips against a running worker --

    async def round_trips(self, entry: str) -> list[float]:
        cfg = self.config(entry, results=True, concurrency=self.sizes.concurrency)
        await self.reset(cfg, after=False)
        label = f"{cfg['system']}-{cfg['loop']}-s3-{time.time_ns()}"
        worker = await self.start_worker(cfg, label)
        try:
            job = {
                "action": "round_trips",
                "samples": self.sizes.s3,
                "budget": self.sizes.s3_budget,
            }
            produced = self.produce(cfg, job, limit=120 + self.sizes.s3_budget)
            outcome = await worker.alongside(produced)
        finally:
            await worker.stop()
            await self.reset(cfg)
        samples: list[float] = outcome["samples"]
        self.missed[entry] = self.missed.get(entry, 0) + int(outcome.get("missed", 0))
        return samples

    # -- the whole run --

    async def run(self) -> None:
        sizes = self.sizes
        for rep in range(sizes.repeat):
            print(f"\nRun {rep + 1} of {sizes.repeat} (load average {os.getloadavg()[0]:.1f})")
            # Each run in its own order, so that no row always follows the same neighbour.
            order = list(self.entries)
            order = order[rep % len(order) :] + order[: rep % len(order)]
            for label in order:
                await self.measure(label, "s1-off", self.s1(label, results=False))
            for label in order:
                system = self.entries[label][0]
                if system in REDIS_SYSTEMS:
                    await self.measure(label, "s1-on", self.s1(label, results=True))
                elif system in BULK_SYSTEMS:  # no S1 with results here: time the bulk API alone
                    await self.measure(label, "enqueue-bulk", self.bulk_only(label))
            for label in order:
                await self.measure(label, "s2", self.s2(label))
            for label in order:
                await self.measure(label, "s3", self.s3(label))

    async def measure(self, system: str, what: str, run: Awaitable[None]) -> None:
        try:
            await run
        except Failed as exc:
            self.cell(system, what).failures.append(str(exc))
            print(f"  {system:26} {what:7} FAILED: {exc}", flush=True)
        except Exception as exc:
            message = f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]
            self.cell(system, what).failures.append(message)
            print(f"  {system:26} {what:7} FAILED: {message}", flush=True)

    async def s1(self, system: str, *, results: bool) -> None:
        what = "s1-on" if results else "s1-off"
        bulk = self.entries[system][0] in BULK_SYSTEMS
        rate, sent = await self.drain(
            system,
            kind="noop",
            n=self.sizes.s1,
            results=results,
            concurrency=self.sizes.concurrency,
            enqueue=("bulk" if bulk else "fanout") if results else "one",
        )
        self.cell(system, what).values.append(rate)
        shown = ""
        if not results or bulk:
            self.cell(system, "enqueue-bulk" if results else "enqueue-one").values.append(sent)
            shown = f", enqueue {'bulk' if results else 'one at a time'} {sent:,.0f}/s"
        print(f"  {system:26} {what:7} {rate:>10,.0f} tasks/s{shown}", flush=True)

    async def bulk_only(self, system: str) -> None:
        sent = await self.enqueue_only(system, self.sizes.s1, "bulk")
        self.cell(system, "enqueue-bulk").values.append(sent)
        print(f"  {system:26} enqueue bulk {sent:,.0f}/s", flush=True)

    async def s2(self, system: str) -> None:
        rate, _ = await self.drain(
            system,
            kind="sleep",
            n=self.sizes.s2,
            results=False,
            concurrency=self.sizes.s2_concurrency,
            enqueue="bulk" if self.entries[system][0] in BULK_SYSTEMS else "fanout",
        )
        self.cell(system, "s2").values.append(rate)
        print(f"  {system:26} {'s2':7} {rate:>10,.0f} tasks/s", flush=True)

    async def s3(self, system: str) -> None:
        samples = await self.round_trips(system)
        self.latencies.setdefault(system, []).append(samples)
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        self.cell(system, "s3-p50").values.append(p50)
        self.cell(system, "s3-p99").values.append(p99)
        missed = f", {self.missed[system]} missed notices so far" if self.missed.get(system) else ""
        print(
            f"  {system:26} {'s3':7} p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"({len(samples)} round trips{missed})",
            flush=True,
        )


def entries_for(systems: list[str], aqueue_loop: str) -> dict[str, tuple[str, str]]:
    """The rows of the table: each system on its own loop, aqueue on one or both."""
    entries: dict[str, tuple[str, str]] = {}
    for system in systems:
        if system.startswith("aqueue"):
            loops = LOOPS if aqueue_loop == "both" else (aqueue_loop,)
        else:
            loops = (PEER_LOOP[system],)
        for loop in loops:
            entries[f"{system} ({loop})"] = (system, loop)
    return entries


def tail(log: Path) -> str:
    """The last lines a process wrote to its log, on one line."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[-400:] or "(nothing on stderr)"


class Worker:
    """One worker process, its report pipe and its log."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: IO[bytes], log: Path) -> None:
        self.process = process
        self.stderr = stderr
        self.log = log

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            self.stderr.flush()
            raise Failed(f"the worker exited with code {self.process.returncode}: {tail(self.log)}")

    async def watch(self, n: int, *, stall: float, total: float) -> float:
        """Wait for the worker to report n completions; return tasks per second."""
        assert self.process.stdout is not None
        count = 0
        deadline = time.monotonic() + total
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"timeout: {count:,} of {n:,} done after {total:.0f} s")
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), min(stall, left))
            except TimeoutError:
                raise Failed(
                    f"timeout: {count:,} of {n:,} done, no progress for {min(stall, left):.0f} s"
                ) from None
            if not line:
                await self.process.wait()
                self.check_alive()
            if not line.startswith(b"@@bench "):
                continue
            _, done, first, now = line.split()
            count = int(done)
            if count >= n:
                return n / max(float(now) - float(first), 1e-9)

    async def alongside(self, work: Awaitable[Any]) -> Any:
        """Await work while the worker runs; a worker that dies fails the run at once."""
        task = asyncio.ensure_future(work)
        exited = asyncio.ensure_future(self.process.wait())
        try:
            await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Failed):
                    await task
        if task.cancelled():
            self.check_alive()
        return task.result()

    async def stop(self) -> None:
        process = self.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.wait(), 30)
        self.stderr.close()


# -- reporting -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rate_text(value: float) -> str:
    return f"{value:,.0f}"


def ms_text(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


COLUMNS = [
    ("s1-off", "S1 no-op, results off (tasks/s)", rate_text, True),
    ("s1-on", "S1 no-op, results on (tasks/s)", rate_text, True),
    ("s2", "S2 sleep 10 ms, c=500 (tasks/s)", rate_text, True),
    ("s3-p50", "S3 round trip p50 (ms)", ms_text, False),
    ("s3-p99", "S3 round trip p99 (ms)", ms_text, False),
    ("enqueue-one", "enqueue, one at a time (tasks/s)", rate_text, True),
    ("enqueue-bulk", "enqueue, bulk API (tasks/s)", rate_text, True),
]

#: What a system cannot do, said in its cell instead of a number.
CANNOT = {
    ("aqueue-amqp", "s1-on"): "not run (S1/S2 on RabbitMQ: results off)",
    ("taskiq-aio-pika", "s1-on"): "not run (S1/S2 on RabbitMQ: results off)",
    ("arq", "enqueue-bulk"): "n/a (no bulk API)",
    ("saq", "enqueue-bulk"): "n/a (no bulk API)",
    ("taskiq-redis", "enqueue-bulk"): "n/a (no bulk API)",
    ("taskiq-aio-pika", "enqueue-bulk"): "n/a (no bulk API)",
}


def median_of(cell: Cell | None) -> float | None:
    return statistics.median(cell.values) if cell and cell.values else None


def system_of(label: str) -> str:
    """The system a row runs: "aqueue-redis (uvloop)" -> "aqueue-redis"."""
    return label.split(" ", 1)[0]


def cell_text(label: str, what: str, cell: Cell | None, fmt: Callable[[float], str]) -> str:
    """The median, and the lowest and highest run when there were several."""
    if (system_of(label), what) in CANNOT:
        return CANNOT[(system_of(label), what)]
    if cell is None:
        return "-"
    if not cell.values:
        if not cell.failures:
            return "-"
        return "timeout" if cell.failures[0].startswith("timeout") else "failed (see below)"
    text = fmt(statistics.median(cell.values))
    if len(cell.values) > 1:
        text += f" ({fmt(min(cell.values))}-{fmt(max(cell.values))})"
    if cell.failures:
        text += f" ({len(cell.failures)} failed)"
    return text


def ratio_row(bench: Bench, ours: str, peers: list[str]) -> list[str] | None:
    """aqueue against the fastest peer: x times the rate, or x times lower latency.

    The best peer is the one with the best median; the factor is the median of the factors
    within each run (the runs are interleaved: noise hits both sides of a run's ratio alike),
    or the ratio of the medians when a run failed on either side.
    """
    present = [p for p in bench.entries if bench.entries[p][0] in peers]
    if ours not in bench.entries or not present:
        return None
    row = [f"**{ours} vs best peer**"]
    for what, _, _, higher in COLUMNS:
        mine = bench.cells.get((ours, what))
        theirs = {
            p: cell
            for p in present
            if (system_of(p), what) not in CANNOT
            and (cell := bench.cells.get((p, what))) is not None
            and cell.values
        }
        if mine is None or not mine.values or not theirs:
            row.append("-")
            continue
        pick = max if higher else min
        best = theirs[pick(theirs, key=lambda p: statistics.median(theirs[p].values))]
        if len(mine.values) == len(best.values) and not (mine.failures or best.failures):
            pairs = zip(mine.values, best.values, strict=True)
            factor = statistics.median(a / b if higher else b / a for a, b in pairs)
        else:
            a, b = statistics.median(mine.values), statistics.median(best.values)
            factor = a / b if higher else b / a
        row.append(f"**{factor:.1f}x**")
    return row


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


async def env_versions(envs: list[str]) -> dict[str, str]:
    """Each environment's versions of the packages that matter, as text."""
    found: dict[str, str] = {}
    for env in envs:
        process = await asyncio.create_subprocess_exec(
            str(env_python(env)),
            str(SCRIPT),
            "--versions",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("@@bench ")]
        listed = json.loads(lines[-1].removeprefix("@@bench ")) if lines else {}
        found[env] = ", ".join(f"{name} {version}" for name, version in listed.items())
    return found


def report(bench: Bench, command: str, started: float) -> str:
    sizes = bench.sizes
    systems: list[str] = list(bench.entries)
    header = ["system (event loop)", *(title for _, title, _, _ in COLUMNS)]
    rows = [
        [system, *(cell_text(system, w, bench.cells.get((system, w)), f) for w, _, f, _ in COLUMNS)]
        for system in systems
    ]
    for ours, peers in (("aqueue-redis", REDIS_SYSTEMS[1:]), ("aqueue-amqp", AMQP_SYSTEMS[1:])):
        for loop in LOOPS:
            ratio = ratio_row(bench, f"{ours} ({loop})", peers)
            if ratio:
                rows.append(ratio)
    per_run = [
        [system, *(runs_text(system, w, bench.cells.get((system, w)), f) for w, _, f, _ in COLUMNS)]
        for system in systems
    ]
    samples = {s: sum(len(x) for x in bench.latencies.get(s, [])) for s in systems}
    failures = [
        f"- {system} {what}: {message}"
        for (system, what), cell in sorted(bench.cells.items())
        for message in cell.failures
    ]
    redis_version = bench.redis.version if bench.redis else "not used"
    amqp_version = bench.amqp.version if bench.amqp else "not used"
    load = f"{bench.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    lines = [
        "# aqueue against arq, SAQ, taskiq, streaq and docket",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; "
        f"took {(time.time() - started) / 60:.1f} min  ",
        f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"(1 min) {load}; Python {platform.python_version()} "
        f"({platform.python_implementation()}); each system on the event loop its own worker "
        "command picks (in brackets)  ",
        f"Servers, on the same machine: Redis {redis_version}, RabbitMQ {amqp_version}  ",
        "Packages, one virtual environment per project (benchmarks/.venv-peers/NAME):",
        "",
        *(f"- {env}: {text}" for env, text in bench.versions.items()),
        "",
        f"Medians of {sizes.repeat} run(s), with the lowest and highest in brackets. One worker "
        "process per system. Drain rate = N / (time "
        "from the first task started to the N-th task finished, both stamped in the worker). "
        f"S1: {sizes.s1:,} no-op tasks, worker concurrency {sizes.concurrency} for every system; "
        f"S2: {sizes.s2:,} tasks of `await asyncio.sleep(0.01)`, concurrency "
        f"{sizes.s2_concurrency}, results off; S3: sequential round trips, up to {sizes.s3} per "
        f"run and at most {sizes.s3_budget:.0f} s of them (round trips in all: "
        + ", ".join(f"{s} {n}" for s, n in samples.items() if n)
        + "). Enqueue: one call at a time while pre-enqueueing S1 (results off); bulk API in "
        f"calls of {BULK_CHUNK:,} while pre-enqueueing S1 with results on (on RabbitMQ, alone).",
        "",
        markdown_table(header, rows),
        "",
        "*vs best peer*: on Redis, against the best of arq, saq, taskiq-redis, streaq and "
        "docket; on RabbitMQ, against taskiq-aio-pika. Rates: aqueue / best peer; latencies: "
        "best peer / aqueue; above 1 means aqueue is ahead. The median of the ratios within "
        "each run (the runs are interleaved), or of the medians when a run failed.",
        "",
        *(
            [
                "Every run, in order (the figures above are their medians):",
                "",
                markdown_table(header, per_run),
                "",
            ]
            if sizes.repeat > 1
            else []
        ),
        "How each system was set up (its documented defaults, except the worker's concurrency):",
        "",
        *setups(bench, systems),
        "- Each project in its own virtual environment (they pin redis-py differently), each "
        "with hiredis (streaq speaks Redis through coredis). Producer and worker are separate "
        "processes; the producer runs on the event loop of its system's row. Peers without "
        f"a bulk API are pre-enqueued with {FANOUT} concurrent calls where enqueueing is not "
        "timed. Every worker logs at WARNING.",
    ]
    if failures:
        lines += ["", "Runs that failed:", "", *failures]
    if bench.interrupted:
        lines += ["", "**Interrupted before the end: the figures above are incomplete.**"]
    return "\n".join(lines) + "\n"


def setups(bench: Bench, systems: list[str]) -> list[str]:
    """How each system that ran was set up, one line each."""
    how = {
        "aqueue-redis": "`App(broker='redis://...')`, results in the same Redis (off: "
        "`backend=False`); `Worker(app, concurrency=C).serve()`, as `aqueue worker` runs it "
        "(with its default `worker_tune_gc`); bulk = `task.delay_many()`; S3 "
        "`await (await t.delay()).get()`.",
        "aqueue-amqp": "`App(broker='amqp://...')`: classic queues, persistent messages, "
        "publisher confirms; `backend=False` for S1/S2, `rpc://` for S3.",
        "arq": "`Worker(functions, max_jobs=C)`; results off = `keep_result=0`; `enqueue_job()`; "
        "S3 `await (await pool.enqueue_job()).result()`. arq polls: an idle worker every 0.5 s, "
        "`result()` every 0.5 s.",
        "saq": "`Worker(queue, functions, concurrency=C)`; results off = job `ttl=-1`; "
        "`queue.enqueue()`; S3 `job = await queue.enqueue(); await job.refresh(until_complete="
        f"{SAQ_WAIT})`, which waits on pub/sub (`queue.apply()` would poll every 0.5 s)."
        + saq_note(bench),
        "taskiq-redis": "`RedisStreamBroker` (+ `RedisAsyncResultBackend` for results on), run "
        "by taskiq's `Receiver(max_async_tasks=C)` as `taskiq worker --workers 1` runs it; "
        "`kiq()`; S3 `await (await t.kiq()).wait_result()`, which polls every 0.2 s.",
        "taskiq-aio-pika": "`AioPikaBroker(qos=C)` (qos is its prefetch, 10 by default), "
        "classic queues like aqueue's (its default is quorum); no result backend for S1/S2; S3 "
        "with taskiq-redis's `RedisAsyncResultBackend` (taskiq-aio-pika has none), polled "
        "every 0.2 s.",
        "streaq": "`Worker(redis_url, concurrency=C)` run with `worker.run_sync()`, as "
        "`streaq run` does (its default prefetch: C more); results off = the task's `ttl=0` "
        "(5 minutes by default); `await t.enqueue()`; bulk = `worker.enqueue_many()`; S3 "
        "`await (await t.enqueue()).result()`, which waits on pub/sub.",
        "docket": "`Docket(url)` and `Worker(docket, concurrency=C, minimum_check_interval="
        "100 ms)`, as `docket worker` runs it, its URL with `max_connections="
        f"{DOCKET_CONNECTIONS}` (redis-py 8's pool holds 100, and docket takes one per running "
        "task: at concurrency 500 it fails otherwise); results off = `execution_ttl=0` (15 "
        "minutes by default); `await docket.add(name)()`; bulk = `docket.add_many()`; S3 "
        "`await (await docket.add(name)()).get_result()`, which waits on pub/sub.",
    }
    return [f"- {label}: {how[system_of(label)]}" for label in systems]


def runs_text(system: str, what: str, cell: Cell | None, fmt: Callable[[float], str]) -> str:
    if (system_of(system), what) in CANNOT:
        return "-"
    if cell is None or not (cell.values or cell.failures):
        return "-"
    shown = [fmt(v) for v in cell.values] + ["failed"] * len(cell.failures)
    return " / ".join(shown)


def saq_note(bench: Bench) -> str:
    label = f"saq ({PEER_LOOP['saq']})"
    missed = bench.missed.get(label, 0)
    total = sum(len(x) for x in bench.latencies.get(label, []))
    if not missed:
        return ""
    return (
        f" In {missed} of {total} round trips the job completed but the waiter was never told "
        f"(SAQ subscribes anew for each wait, and misses a completion that lands meanwhile): "
        f"those waited out until_complete ({SAQ_WAIT} s) and count as such."
    )


# -- main ------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help=f"comma-separated, from: {', '.join(ALL_SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--aqueue-loop",
        choices=["asyncio", "uvloop", "both"],
        default="both",
        help="the event loop of aqueue's worker and producer (default: a row for each)",
    )
    parser.add_argument("--quick", action="store_true", help="one run each, smaller N (~3 min)")
    parser.add_argument("--repeat", type=int, help="runs per figure (default 3; --quick 1)")
    parser.add_argument("--concurrency", type=int, default=500, help="S1/S3 worker concurrency")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="a Redis database the benchmark may flush (default: db 14)",
    )
    parser.add_argument(
        "--amqp-url",
        default="amqp://guest:guest@127.0.0.1:5672/",
        help="RabbitMQ; a vhost of the benchmark's own is made when rabbitmqctl is at hand",
    )
    parser.add_argument(
        "--output", default=str(HERE / "results-compare.md"), help="where the table goes"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="run aqueue's drain workers under cProfile, one .prof file per run in DIR",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--producer", help=argparse.SUPPRESS)
    parser.add_argument("--versions", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or args.producer or args.versions:
        return args
    args.systems_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems_list if s not in ALL_SYSTEMS]
    if unknown or not args.systems_list:
        parser.error(f"unknown system(s) {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes(
            s1=5_000, s2=2_000, s3=50, s3_budget=4, repeat=args.repeat or 1,
            concurrency=args.concurrency,
        )  # fmt: skip
    return Sizes(
        s1=20_000, s2=5_000, s3=200, s3_budget=10, repeat=args.repeat or 3,
        concurrency=args.concurrency,
    )  # fmt: skip


async def main(args: argparse.Namespace, command: str) -> None:
    started = time.time()
    sizes = sizes_for(args)
    bench = Bench(args, sizes)
    systems: list[str] = args.systems_list
    bench.versions = await env_versions(sorted({SYSTEM_ENV[s] for s in systems}))
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    for env, text in bench.versions.items():
        print(f"  {env}: {text}")
    async with contextlib.AsyncExitStack() as stack:
        needs_redis = any(s in REDIS_SYSTEMS or s == "taskiq-aio-pika" for s in systems)
        if needs_redis:
            bench.redis = await stack.enter_async_context(RedisPlace(args.redis_url))
        if any(s in AMQP_SYSTEMS for s in systems):
            bench.amqp = await stack.enter_async_context(AmqpPlace(args.amqp_url))
        print(
            f"Redis {bench.redis.version if bench.redis else '-'}, "
            f"RabbitMQ {bench.amqp.version if bench.amqp else '-'}; systems: {', '.join(systems)}"
        )
        me = asyncio.current_task()
        assert me is not None
        with contextlib.suppress(NotImplementedError):  # SIGTERM stops it as Ctrl-C does
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)
        try:
            await bench.run()
        except asyncio.CancelledError:
            bench.interrupted = True
            print("\nInterrupted: stopping the workers and cleaning up", flush=True)
        finally:
            text = report(bench, command, started)
            print("\n" + text)
            save(args.output, text)
            failed = any(cell.failures for cell in bench.cells.values())
            if failed:
                print(f"(written to {args.output}; the processes' logs are in {bench.logdir})")
            else:
                shutil.rmtree(bench.logdir, ignore_errors=True)
                print(f"(written to {args.output})")


def save(path: str, text: str) -> None:
    Path(path).write_text(text)


def entry(argv: list[str]) -> None:
    args = parse(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    if args.producer:
        producer_main(json.loads(args.producer))
        return
    if args.versions:
        versions_main()
        return
    ensure_envs(argv, args.systems_list)
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/compare.py", *argv])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args, command))


if __name__ == "__main__":
    entry(sys.argv[1:])
