"""The command line, and the whole run: environments, servers, the runs, the report."""

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
import time
from pathlib import Path

import comparing
from comparing.driver import Bench, Sizes
from comparing.harness import producer_main, worker_main
from comparing.places import AmqpPlace, RedisPlace
from comparing.report import report
from comparing.systems import (
    ALL_SYSTEMS,
    AMQP_SYSTEMS,
    HERE,
    REDIS_SYSTEMS,
    SYSTEM_ENV,
    ensure_envs,
    env_versions,
    versions_main,
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(comparing.__doc__ or "").splitlines()[0],
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
