"""How aqueue scales with worker processes: `aqueue worker --workers N`, N = 1, 2, 4.

    python benchmarks/scale.py [--brokers redis,cluster,amqp] [--workers 1,2,4] [--repeat 3]
                               [--quick] [--amqp-url URL] [--json FILE]

The scenarios are compare.py's (benchmarks/comparing/):
  S1  10,000 no-op tasks, concurrency 100 per process;
  S2  5,000 tasks that each `await asyncio.sleep(0.01)`, concurrency 500 per process;
both with results off, on Redis (a `redis-server` of the benchmark's own, on a free port, so
that its CPU figures are aqueue's alone) and on RabbitMQ (the local server, names under a
prefix of the run's own, deleted afterwards); `cluster` is a 3-primary Redis Cluster of the
benchmark's own (`redis+cluster://`).

One run:
  1. `aqueue worker bench_tasks:app --workers N -c C` starts; the run waits for the banners of
     its N children (each prints one once connected, just before it consumes);
  2. the benchmark publishes the tasks, 1,000 per `delay_many`;
  3. each task stamps its start and its end (time.monotonic(), shared by every process) and
     each child reports its count and its first and last stamps on stdout, at most every
     10 ms; the clock runs from the first start in any child to the last end;
  4. the broker's CPU (Redis: INFO's used_cpu_user + used_cpu_sys; RabbitMQ: the beam.smp
     process's utime + stime from /proc) and Redis's commands (INFO's
     total_commands_processed) are read before step 2 and once the last task ended: they
     cover the publishing and the drain;
  5. SIGTERM to the supervisor; the run waits for it to exit.

Each figure is the median of R runs (3 by default). Efficiency is the rate with N processes
over N times the rate with one. The machine this was written on has 2 cores shared with other
work: N = 4 cannot go faster than N = 2 there, and say so beside the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TASKS = """
    import asyncio
    import os
    import signal
    import time

    from aqueue import App

    app = App("bench", broker={url!r}, backend=False)
    _count = 0
    _first = 0.0
    _last = 0.0
    _flush = None
    _open = False  # the gate: tasks wait until the benchmark sends SIGUSR1
    _gate = None


    def _opened(*_):
        global _open
        _open = True
        if _gate is not None:
            _gate.set()


    signal.signal(signal.SIGUSR1, _opened)  # from import on: the signal never kills the child


    async def _wait_gate():
        global _gate
        if _gate is None:
            _gate = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _opened)
            os.write(1, b"@@gated %d\\n" % os.getpid())
            if _open:
                return
        await _gate.wait()


    def _report():
        global _flush
        _flush = None
        os.write(1, b"@@bench %d %d %r %r\\n" % (os.getpid(), _count, _first, _last))


    def _done():
        global _count, _last, _flush
        _count += 1
        _last = time.monotonic()
        if _flush is None:  # at most every 10 ms: the benchmark reads counts, not each task
            _flush = asyncio.get_running_loop().call_later(0.01, _report)


    async def _begin():
        global _first
        if not _open:
            await _wait_gate()
        if not _first:
            _first = time.monotonic()


    @app.task(name="bench.noop")
    async def noop():
        await _begin()
        _done()


    @app.task(name="bench.sleep")
    async def sleep():
        await _begin()
        await asyncio.sleep(0.01)
        _done()
"""

SCENARIOS = {"S1": ("noop", 10_000, 100), "S2": ("sleep", 5_000, 500)}


@dataclass
class Outcome:
    rate: float
    publish: tuple[float | None, int | None]  # broker CPU seconds, Redis commands
    drain: tuple[float | None, int | None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RedisPlace:
    """A redis-server of the benchmark's own (no persistence), flushed before every run."""

    def __init__(self, directory: Path, *, cluster: bool = False) -> None:
        while (port := free_port()) > 55535:  # a cluster node's bus port is port + 10000
            pass
        self.port = port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        directory.mkdir(parents=True, exist_ok=True)
        extra = ("--cluster-enabled", "yes", "--cluster-port", str(free_port())) if cluster else ()
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(directory), *extra),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                break
        self.process.stdout.close()

    def prepare(self, run: int) -> str:
        self._redis("FLUSHALL")
        return self.url

    def counters(self) -> tuple[float, int]:
        info = self._redis("INFO", "all")
        values = dict(
            line.split(":", 1)
            for line in info.splitlines()
            if ":" in line and not line.startswith("#")
        )
        cpu = float(values["used_cpu_user"]) + float(values["used_cpu_sys"])
        return cpu, int(values["total_commands_processed"])

    def _redis(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def cleanup(self, run: int) -> None:
        pass

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


class ClusterPlace:
    """A 3-primary Redis Cluster of the benchmark's own (`redis+cluster://`), flushed per run.

    Its CPU and commands are summed over the three nodes. One queue is one hash slot: the
    benchmark's tasks all go to the one primary that serves the queue `default`.
    """

    def __init__(self, directory: Path) -> None:
        self.nodes = [RedisPlace(directory / str(n), cluster=True) for n in range(3)]
        ports = [node.port for node in self.nodes]
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create"),
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
        )
        for node in self.nodes:  # each node agrees that every slot is served
            while "cluster_state:ok" not in node._redis("CLUSTER", "INFO"):
                time.sleep(0.05)  # a one-off start-up wait, outside any measurement
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports) + "/"

    def prepare(self, run: int) -> str:
        for node in self.nodes:
            node.prepare(run)
        return self.url

    def counters(self) -> tuple[float, int]:
        readings = [node.counters() for node in self.nodes]
        return sum(cpu for cpu, _ in readings), sum(count for _, count in readings)

    def cleanup(self, run: int) -> None:
        pass

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class AmqpPlace:
    """The local RabbitMQ, each run's queues under a prefix of its own, deleted afterwards."""

    def __init__(self, url: str) -> None:
        self.base = url
        self.ctl = shutil.which("rabbitmqctl")
        found = subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True)
        self.beam = int(found.stdout.split()[0]) if found.stdout.strip() else None

    def _prefix(self, run: int) -> str:
        return f"aqscale-{os.getpid()}-{run}-"

    def prepare(self, run: int) -> str:
        separator = "&" if "?" in self.base else "?"
        return f"{self.base}{separator}prefix={self._prefix(run)}"

    def counters(self) -> tuple[float | None, None]:
        if self.beam is None:
            return None, None
        try:
            fields = Path(f"/proc/{self.beam}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None, None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks, None

    def cleanup(self, run: int) -> None:
        if self.ctl is None:
            return
        listed = subprocess.run(
            [self.ctl, "-q", "list_queues", "name"], capture_output=True, text=True, check=False
        )
        for name in listed.stdout.split():
            if name.startswith(self._prefix(run)):
                subprocess.run(
                    [self.ctl, "-q", "delete_queue", name], capture_output=True, check=False
                )

    def close(self) -> None:
        pass


async def publish(url: str, kind: str, total: int) -> None:
    from aqueue import App

    app = App("bench-producer", broker=url, backend=False, set_as_current=False)

    @app.task(name=f"bench.{kind}")
    async def body() -> None:
        return None

    async with app:
        for start in range(0, total, 1000):
            await body.delay_many([() for _ in range(min(1000, total - start))])


def one_run(place: Any, run: int, scenario: str, workers: int, directory: Path) -> Outcome:
    kind, total, concurrency = SCENARIOS[scenario]
    url = place.prepare(run)
    (directory / "bench_tasks.py").write_text(textwrap.dedent(TASKS).format(url=url))
    before = place.counters()
    asyncio.run(publish(url, kind, total))  # pre-enqueued, before any worker starts
    published = place.counters()
    command = [sys.executable, "-m", "aqueue", "worker", "bench_tasks:app", "-l", "WARNING"]
    command += ["--workers", str(workers), "-c", str(concurrency)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("AQUEUE_BROKER_URL", None)
    log = (directory / "worker.log").open("a")  # the supervisor's and children's log lines
    supervisor = subprocess.Popen(
        command,
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    log.close()
    assert supervisor.stdout is not None
    try:
        gated: list[int] = []
        for line in supervisor.stdout:  # every child holds its first tasks at the gate
            if line.startswith("@@gated "):
                gated.append(int(line.split()[1]))
                if len(gated) == workers:
                    break
        started = place.counters()
        for pid in gated:
            os.kill(pid, signal.SIGUSR1)  # open the gates: the clock starts at the first task
        counts: dict[str, tuple[int, float, float]] = {}
        for line in supervisor.stdout:
            if not line.startswith("@@bench "):
                continue
            pid, count, first, last = line.split()[1:]
            counts[pid] = (int(count), float(first), float(last))
            if sum(c for c, _, _ in counts.values()) >= total:
                break
        drained = place.counters()
        first = min(f for _, f, _ in counts.values())
        last = max(lt for _, _, lt in counts.values())
        return Outcome(
            rate=total / (last - first),
            publish=_difference(before, published),
            drain=_difference(started, drained),
        )
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.communicate()
        place.cleanup(run)


def _difference(
    before: tuple[float | None, int | None], after: tuple[float | None, int | None]
) -> tuple[float | None, int | None]:
    """(broker CPU seconds, Redis commands) between two readings; None where unknown."""
    cpu = None if before[0] is None or after[0] is None else after[0] - before[0]
    commands = None if before[1] is None or after[1] is None else after[1] - before[1]
    return cpu, commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="redis,amqp")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--scenarios", default="S1,S2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run each")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--json", help="also write the medians to this file")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    counts = [int(n) for n in args.workers.split(",")]
    rows: list[dict[str, Any]] = []
    run = 0
    with tempfile.TemporaryDirectory(prefix="aqueue-scale-") as tmp:
        directory = Path(tmp)
        for broker in args.brokers.split(","):
            place: Any = (
                RedisPlace(directory)
                if broker == "redis"
                else ClusterPlace(directory / "cluster")
                if broker == "cluster"
                else AmqpPlace(args.amqp_url)
            )
            try:
                for scenario in args.scenarios.split(","):
                    base: float | None = None
                    for workers in counts:
                        outcomes = []
                        for _ in range(repeat):
                            run += 1
                            outcomes.append(one_run(place, run, scenario, workers, directory))
                        row = summarise(broker, scenario, workers, outcomes, base)
                        if workers == 1:
                            base = row["rate"]
                        rows.append(row)
                        print(line_of(row), flush=True)
            finally:
                place.close()
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def summarise(
    broker: str, scenario: str, workers: int, outcomes: list[Outcome], base: float | None
) -> dict[str, Any]:
    total = SCENARIOS[scenario][1]
    rate = statistics.median(o.rate for o in outcomes)

    def per_task(values: list[float | int | None], scale: float) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) / total * scale if known else None

    return {
        "broker": broker,
        "scenario": scenario,
        "workers": workers,
        "rate": rate,
        "rates": [round(o.rate) for o in outcomes],
        "efficiency": None if base is None or workers == 1 else rate / (workers * base),
        "publish_cpu_us": per_task([o.publish[0] for o in outcomes], 1e6),
        "drain_cpu_us": per_task([o.drain[0] for o in outcomes], 1e6),
        "publish_commands": per_task([o.publish[1] for o in outcomes], 1),
        "drain_commands": per_task([o.drain[1] for o in outcomes], 1),
    }


def _shown(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{unit}" if unit else f"{value:.2f}"


def line_of(row: dict[str, Any]) -> str:
    efficiency = f"{row['efficiency']:.0%}" if row["efficiency"] is not None else "-"
    return (
        f"{row['broker']:5} {row['scenario']} N={row['workers']}: {row['rate']:8.0f} tasks/s "
        f"(runs {row['rates']}), efficiency {efficiency}; broker CPU per task: publish "
        f"{_shown(row['publish_cpu_us'], ' us')}, drain {_shown(row['drain_cpu_us'], ' us')}; "
        f"Redis commands per task: publish {_shown(row['publish_commands'])}, "
        f"drain {_shown(row['drain_commands'])}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| broker | scenario | worker processes | tasks/s (median; runs) | efficiency vs N x 1 | "
        "broker CPU per task: publish, drain | Redis commands per task: publish, drain |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        efficiency = f"{row['efficiency']:.0%}" if row["efficiency"] is not None else "-"
        runs = ", ".join(f"{r:,}" for r in row["rates"])
        out.append(
            f"| {row['broker']} | {row['scenario']} | {row['workers']} | "
            f"{row['rate']:,.0f} ({runs}) | {efficiency} | "
            f"{_shown(row['publish_cpu_us'], ' µs')}, {_shown(row['drain_cpu_us'], ' µs')} | "
            f"{_shown(row['publish_commands'])}, {_shown(row['drain_commands'])} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
