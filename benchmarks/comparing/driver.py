"""The driver: the scenarios, run by run, with a worker process and a producer process each,
timed and gathered into cells whose medians the report shows."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from comparing.places import AmqpPlace, RedisPlace
from comparing.systems import (
    AMQP_SYSTEMS,
    BULK_SYSTEMS,
    LOOPS,
    PEER_LOOP,
    REDIS_SYSTEMS,
    SCRIPT,
    SYSTEM_ENV,
    env_python,
)


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

    async def start_worker(self, cfg: dict[str, Any], label: str) -> WorkerProcess:
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
        return WorkerProcess(process, stderr, log)

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


class WorkerProcess:
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
