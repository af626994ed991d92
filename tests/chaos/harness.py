"""The chaos harness: real brokers and workers as subprocesses, faults, and the ledger.

Used at a small size by tests/chaos/test_chaos.py (CI) and at full size by benchmarks/chaos.py.
Everything runs in one temporary directory: the task module (`tasks.py`, which writes the
ledger), the ledger file, Redis's append-only file or the SQLite broker's file. Waits are on
readiness lines and ledger counts; the only sleeps are the faults' own durations and the
pauses between faults.

The brokers (`Run.broker(kind)`):

- `redis`: a `redis-server` of the run's own (append-only file), restartable, optionally
  behind the proxy;
- `sqlite`: one file in the run's directory that the producer and every worker open;
- `amqp`: the shared RabbitMQ (`AQUEUE_TEST_AMQP_URL`, guest@127.0.0.1:5672) with a name
  prefix of the run's own (`t<unique>-`): every queue and exchange the run declared is deleted
  at the end;
- `amqp-node`: a RabbitMQ node of the run's own (`tests.service_amqp.PrivateNode`), which a
  scenario may stop and start; the shared server is never restarted.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from aqueue import App, BrokerError
from tests.helpers import service_amqp
from tests.helpers.processes import Lines, child_env, free_port, spawn

from .ledger import TASK_LEDGER, Ledger, Report, connect
from .proxy import Proxy

#: The longest a process start, a readiness line or one drain step may take.
STEP = 60.0

#: The brokers a scenario may run on (see the module's docstring).
BROKERS = ("redis", "sqlite", "amqp")

TASKS = """
import os

import anyio

from aqueue import App

{ledger}

app = App(
    "tasks",
    broker={url!r},
    broker_visibility_timeout={lease!r},
    broker_heartbeat_interval=0.5,
    broker_heartbeat_timeout={heartbeat!r},
    broker_max_deliveries={max_deliveries!r},
    worker_shutdown_timeout={grace!r},
    broker_transport_options={transport!r},
)


@app.task(bind=True)
async def work(self, ms):
    row = ledger_start(self.request.id, self.request.delivery_count)
    await anyio.sleep(ms / 1000)  # the work
    ledger_end(row)
    return ms


@app.task(bind=True)
async def die_on_claim(self, ms):
    # Killed (os._exit skips every finally, like SIGKILL) right after the claim, before any
    # work, on its first delivery; runs on its next.
    row = ledger_start(self.request.id, self.request.delivery_count)
    if self.request.delivery_count <= 1:
        os._exit(137)
    await anyio.sleep(ms / 1000)
    ledger_end(row)
    return ms


@app.task
async def crash():
    os._exit(1)


@app.task(bind=True)
async def echo(self, token, ms):
    # Returns its own token: a waiter that gets another task's value was cross-delivered.
    row = ledger_start(self.request.id, self.request.delivery_count)
    await anyio.sleep(ms / 1000)
    ledger_end(row)
    return token
"""


@dataclass
class Settings:
    """The settings of a chaos run's task module."""

    lease: float = 3.0
    heartbeat: float = 2.0
    max_deliveries: int = 5
    grace: float = 2.0
    socket_timeout: float = 5.0
    #: More transport options (e.g. `{"queue_type": "quorum"}` for RabbitMQ).
    transport: dict[str, Any] = field(default_factory=dict)

    def transport_options(self) -> dict[str, Any]:
        return {"socket_timeout": self.socket_timeout, **self.transport}


async def missing(broker: str) -> str | None:
    """Why a scenario cannot run on `broker` here, or None."""
    if broker == "redis":
        if shutil.which("redis-server") is None:
            return "redis-server is not on PATH"
        try:
            import redis  # noqa: F401
        except ImportError:
            return "redis-py is not installed"
        return None
    if broker == "sqlite":
        return None
    if broker == "amqp":
        return await service_amqp.unreachable()
    if broker == "amqp-node":
        return service_amqp.PrivateNode.missing()
    return f"unknown broker {broker!r}; choose from {', '.join(BROKERS)}, amqp-node"


class RedisNode:
    """`redis-server` of the harness's own, with an append-only file: killed and restarted."""

    def __init__(self, directory: Path, fsync: str = "always") -> None:
        self.port = free_port()
        self.directory = directory
        self.fsync = fsync
        self.process: Lines | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--save", "", "--appendonly", "yes"]
        command += ["--appendfsync", self.fsync]
        self.process = spawn(command)
        await self.process.wait_line("Ready to accept connections", within=STEP)

    def kill(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGKILL)
            self.process = None

    async def restart(self, down: float = 0.0) -> None:
        """kill -9, stay down `down` seconds (the fault), start again on the same port."""
        self.kill()
        await anyio.sleep(down)
        await self.start()


class Fleet:
    """Worker processes in `cwd`, supervised: one that dies is counted and started again."""

    def __init__(self, cwd: Path, count: int, concurrency: int) -> None:
        self.cwd = cwd
        self.count = count
        self.concurrency = concurrency
        self.workers: list[Lines | None] = [None] * count
        self.exits: list[int] = []  # exit codes of the workers that died on their own
        self.restarts = 0
        self.stopped: list[Lines] = []
        #: Each worker incarnation's resident set (bytes, /proc/PID/status): [at ready, peak].
        self.rss: dict[int, list[int]] = {}
        self._changed = anyio.Event()  # set when a worker starts

    async def start(self, index: int) -> Lines:
        command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO"]
        command += ["-c", str(self.concurrency), "-n", f"chaos{index}@{os.getpid()}"]
        worker = spawn(command, cwd=self.cwd, env=child_env())
        self.workers[index] = worker
        self._changed.set()  # the supervisor watches this one too
        await worker.wait_line("ready.", within=STEP)
        if (size := await anyio.to_thread.run_sync(rss, worker.proc.pid)) is not None:
            self.rss[worker.proc.pid] = [size, size]
        return worker

    async def start_all(self) -> None:
        async with anyio.create_task_group() as group:
            for index in range(self.count):
                group.start_soon(self.start, index)

    def pid(self, index: int) -> int:
        worker = self.workers[index]
        assert worker is not None
        return worker.proc.pid

    async def supervise(self) -> None:
        """Restart any worker that exits on its own (until cancelled): the crashers' os._exit.

        Each worker's exit is awaited by a thread blocked in `wait()`, never polled.
        """
        watched: set[int] = set()
        async with anyio.create_task_group() as group:
            while True:
                self._changed = anyio.Event()
                for index, worker in enumerate(self.workers):
                    if worker is not None and id(worker) not in watched:
                        watched.add(id(worker))
                        group.start_soon(self._watch, index, worker)
                await self._changed.wait()

    async def _watch(self, index: int, worker: Lines) -> None:
        await anyio.to_thread.run_sync(worker.proc.wait, abandon_on_cancel=True)
        if self.workers[index] is not worker:
            return  # stopped on purpose (`kill`, `stop_all`)
        self.exits.append(worker.stop())
        self.stopped.append(worker)
        self.workers[index] = None
        self.restarts += 1
        await self.start(index)

    async def kill(self, index: int, sig: int = signal.SIGKILL) -> int:
        """Signal worker `index` and reap it (off the event loop); return its exit code."""
        worker = self.workers[index]
        assert worker is not None
        self.workers[index] = None
        self.stopped.append(worker)
        return await anyio.to_thread.run_sync(worker.stop, sig)

    async def signal(self, index: int, sig: int) -> Lines:
        worker = self.workers[index]
        assert worker is not None
        worker.proc.send_signal(sig)
        return worker

    def stop_all(self) -> None:
        for index, worker in enumerate(self.workers):
            if worker is not None:
                self.workers[index] = None  # first: a watcher must not restart it
                worker.stop()

    def sample_rss(self) -> None:
        """Raise each live worker's recorded peak to its resident set now."""
        for worker in self.workers:
            sizes = self.rss.get(worker.proc.pid) if worker is not None else None
            if sizes is not None and worker is not None and (size := rss(worker.proc.pid)):
                sizes[1] = max(sizes[1], size)

    async def watch_rss(self, every: float = 0.05) -> None:
        """`sample_rss` every `every` s until cancelled (a worker killed by a crasher cannot be
        read after its exit: its peak is the last sample before it). It was every 0.5 s: a peak
        shorter than that could fall between two samples (issue 19, finding 8)."""
        while True:
            await anyio.to_thread.run_sync(self.sample_rss)  # /proc reads, off the loop
            await anyio.sleep(every)  # the sampling period

    def rss_growth_now(self) -> int:
        """The largest growth of a live worker's resident set, ready to now (bytes)."""
        growth = 0
        for worker in self.workers:
            if worker is not None and (sizes := self.rss.get(worker.proc.pid)):
                growth = max(growth, (rss(worker.proc.pid) or sizes[0]) - sizes[0])
        return growth

    def rss_growth(self) -> int:
        """The largest growth of one worker incarnation's resident set, ready to peak (bytes)."""
        return max((peak - first for first, peak in self.rss.values()), default=0)

    def output(self) -> str:
        alive = [worker for worker in self.workers if worker is not None]
        return "\n".join(worker.output for worker in [*self.stopped, *alive])


class SupervisedFleet:
    """`count` workers under one `aqueue worker --workers count --standby K` supervisor.

    The product restarts the workers here, not the harness: a worker a crasher killed is
    replaced by a waiting standby (K > 0) or started again after the supervisor's 0.25 s. The
    interface is the part of `Fleet` the poison scenario uses; exits and incarnations are read
    from the supervisor's log, and a worker's resident set is measured from its first sample
    after its "ready.", as `Fleet` does.
    """

    _DEATH = re.compile(r"\(pid (\d+)\) (?:exited with status (-?\d+)|was killed by \S+) after")
    _STARTED = re.compile(r"started \S+ \(pid (\d+)\)")
    _PROMOTED = re.compile(r"standby pid (\d+) takes")

    def __init__(self, cwd: Path, count: int, concurrency: int, standby: int) -> None:
        self.cwd = cwd
        self.count = count
        self.concurrency = concurrency
        self.standby = standby
        self.supervisor: Lines | None = None
        self.rss: dict[int, list[int]] = {}

    async def start_all(self) -> None:
        command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO"]
        command += ["-c", str(self.concurrency), "-n", f"chaos%i@{os.getpid()}"]
        command += ["--workers", str(self.count), "--standby", str(self.standby)]
        self.supervisor = spawn(command, cwd=self.cwd, env=child_env())
        await self.supervisor.wait_line("ready.", count=self.count, within=STEP)
        await anyio.to_thread.run_sync(self.sample_rss)

    @property
    def exits(self) -> list[int]:
        """The exit statuses of the workers that died on their own (signals as -1)."""
        assert self.supervisor is not None
        return [
            int(status) if status is not None else -1
            for _, status in self._DEATH.findall(self.supervisor.output)
        ]

    @property
    def restarts(self) -> int:
        return len(self.exits)

    @property
    def promotions(self) -> int:
        """How many times a standby took the place of a worker that died or retired."""
        assert self.supervisor is not None
        return len(self._PROMOTED.findall(self.supervisor.output))

    def serving(self) -> list[int]:
        """The pids of the workers that said "ready.", in the order they took their slots.

        A worker takes a slot when started for it or, a standby, when promoted; the k-th
        "ready." line is taken to be the k-th such worker's (their starts are far apart).
        """
        assert self.supervisor is not None
        pids: list[int] = []
        ready = 0
        for line in self.supervisor.output.splitlines():
            if line.endswith(" ready."):
                ready += 1
            elif (started := self._STARTED.search(line)) and "-standby (pid" not in line:
                pids.append(int(started.group(1)))
            elif promoted := self._PROMOTED.search(line):
                pids.append(int(promoted.group(1)))
        return pids[:ready]

    async def supervise(self) -> None:
        await anyio.sleep_forever()  # the supervisor does it

    def sample_rss(self) -> None:
        for pid in self.serving():
            if (size := rss(pid)) is not None:
                sizes = self.rss.setdefault(pid, [size, size])
                sizes[1] = max(sizes[1], size)

    async def watch_rss(self, every: float = 0.05) -> None:
        while True:
            await anyio.to_thread.run_sync(self.sample_rss)
            await anyio.sleep(every)  # the sampling period

    def rss_growth_now(self) -> int:
        growth = 0
        for pid in self.serving():
            sizes = self.rss.get(pid)
            if sizes is not None and (size := rss(pid)) is not None:
                growth = max(growth, size - sizes[0])
        return growth

    def rss_growth(self) -> int:
        return max((peak - first for first, peak in self.rss.values()), default=0)

    def stop_all(self) -> None:
        supervisor = self.supervisor
        if supervisor is None:
            return
        if supervisor.proc.poll() is None:
            supervisor.proc.send_signal(signal.SIGTERM)  # warm, then cold: stop now
            supervisor.proc.send_signal(signal.SIGTERM)
        supervisor.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.supervisor.output if self.supervisor is not None else ""


def rss(pid: int) -> int | None:
    """A process's resident set in bytes (VmRSS in /proc/PID/status), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class Outcome:
    """One scenario's run: the ledger's report and what the scenario measured itself."""

    scenario: str
    broker: str
    tasks: int
    faults: str
    report: Report
    seconds: float
    passed: bool
    pass_line: str
    notes: dict[str, Any] = field(default_factory=dict)

    def row(self, command: str) -> str:
        r = self.report
        return (
            f"| {self.scenario} | {self.broker} | {self.tasks} | {self.faults} | {r.lost} | "
            f"{r.duplicated} | {r.recovered} | {r.time_to_recover:.1f} s | "
            f"{'pass' if self.passed else 'FAIL'} | `{command}` |"
        )


class Run:
    """One scenario's world: a directory, a Redis node, the task module, the ledger, a fleet."""

    def __init__(self, directory: Path, settings: Settings | None = None) -> None:
        self.directory = directory
        self.settings = settings or Settings()
        self.ledger_path = directory / "ledger.db"
        connect(self.ledger_path).close()
        self.ledger = Ledger(self.ledger_path)
        self.redis: RedisNode | None = None
        self.rabbit: service_amqp.PrivateNode | None = None
        self.amqp_url: str | None = None  # on the shared server: its prefix is deleted at the end
        self.proxy: Proxy | None = None
        self.fleet: Fleet | SupervisedFleet | None = None
        self.apps: list[App] = []

    async def redis_broker(self, fsync: str = "always", proxied: bool = False) -> str:
        """Start a Redis node (behind a proxy, if `proxied`); return the workers' URL."""
        self.redis = RedisNode(self.directory / "redis", fsync)
        await self.redis.start()
        if not proxied:
            return self.redis.url
        self.proxy = Proxy(self.redis.port)
        await self.proxy.start()
        return f"redis://127.0.0.1:{self.proxy.port}/0"

    async def broker(self, kind: str, fsync: str = "always", proxied: bool = False) -> str:
        """Start (or name) a broker of `kind` (see the module's docstring); return its URL."""
        if kind == "redis":
            return await self.redis_broker(fsync, proxied)
        if kind == "sqlite":
            return f"sqlite:///{self.directory / 'broker.db'}"
        if kind == "amqp":
            self.amqp_url = service_amqp.make_url(f"chaos{uuid.uuid4().hex[:10]}")
            return self.amqp_url
        if kind == "amqp-node":
            self.rabbit = service_amqp.PrivateNode()
            await anyio.to_thread.run_sync(self.rabbit.start)
            return self.rabbit.url
        raise ValueError(f"unknown broker {kind!r}")

    def write_tasks(self, url: str) -> None:
        s = self.settings
        text = TASKS.format(
            ledger=textwrap.dedent(TASK_LEDGER).format(path=str(self.ledger_path)),
            url=url,
            lease=s.lease,
            heartbeat=s.heartbeat,
            max_deliveries=s.max_deliveries,
            grace=s.grace,
            transport=s.transport_options(),
        )
        (self.directory / "tasks.py").write_text(text)

    def producer(self, url: str, **settings: Any) -> App:
        app = App(
            "tasks",
            set_as_current=False,
            broker=url,
            broker_transport_options=self.settings.transport_options(),
            **settings,
        )
        self.apps.append(app)
        return app

    async def workers(self, count: int, concurrency: int) -> Fleet:
        fleet = self.fleet = Fleet(self.directory, count, concurrency)
        await fleet.start_all()
        return fleet

    async def supervised(self, count: int, concurrency: int, standby: int) -> SupervisedFleet:
        """The workers under the product's supervisor (`aqueue worker --workers --standby`)."""
        fleet = self.fleet = SupervisedFleet(self.directory, count, concurrency, standby)
        await fleet.start_all()
        return fleet

    async def publish(
        self, app: App, durations: list[int], batch: int = 100, task: str = "tasks.work"
    ) -> list[str]:
        """Send `work(ms)` for each duration, in batches; a batch whose publish fails is sent
        again with the same ids until the broker confirms it. Returns the ids, all confirmed."""
        ids: list[str] = []
        for at in range(0, len(durations), batch):
            calls = [((ms,), {}) for ms in durations[at : at + batch]]
            task_ids = [f"{at + n:06d}-{os.urandom(4).hex()}" for n in range(len(calls))]
            await self.confirmed(app, task, calls, task_ids)
            ids += task_ids
        return ids

    async def confirmed(
        self, app: App, task: str, calls: list[Any], task_ids: list[str], **options: Any
    ) -> None:
        deadline = time.monotonic() + STEP * 2
        while True:
            try:
                await app.send_many(task, calls, task_ids=task_ids, **options)
            except (BrokerError, OSError):
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.2)  # the broker is down: try again shortly
                continue
            self.ledger.sent(task_ids)
            return

    async def drain(self, expected: int, within: float) -> float:
        """Wait until `expected` sent tasks finished (bounded); return the seconds it took."""
        started = time.monotonic()
        await until(lambda: self.ledger.finished() >= expected, within)
        return time.monotonic() - started

    async def close(self) -> None:
        for app in self.apps:
            await app.close()
        if self.fleet is not None:
            self.fleet.stop_all()
        if self.proxy is not None:
            await self.proxy.close()
        if self.redis is not None:
            self.redis.kill()
        if self.amqp_url is not None:
            await service_amqp.cleanup(self.amqp_url)
        if self.rabbit is not None:
            await anyio.to_thread.run_sync(self.rabbit.remove)
        self.ledger.close()


async def until(check: Callable[[], bool | Awaitable[bool]], within: float) -> bool:
    """Poll `check` (the ledger, the dead letters) until it holds or `within` s pass."""
    with anyio.move_on_after(within):
        while True:
            done = check()
            if not isinstance(done, bool):
                done = await done
            if done:
                return True
            await anyio.sleep(0.05)  # the poll
    return False


def durations(count: int, seed: int, long_share: float = 0.01) -> list[int]:
    """Task lengths in ms: 10-200 ms, and `long_share` of them 2-5 s."""
    rng = random.Random(seed)
    return [
        rng.randint(2000, 5000) if rng.random() < long_share else rng.randint(10, 200)
        for _ in range(count)
    ]


Scenario = Callable[..., Awaitable[Outcome]]
