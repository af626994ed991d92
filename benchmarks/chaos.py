"""The chaos scenarios at full size (tests/chaos runs them small in CI), and their table.

    python benchmarks/chaos.py [--scenarios kill_storm,kill_after_claim,...] [--tasks N]
                               [--brokers redis,sqlite,amqp] [--kills N] [--restarts N]
                               [--partitions N] [--length S] [--waiters N] [--fuzz N]
                               [--grace S] [--bad N] [--crashers N]
                               [--write benchmarks/results-chaos.md]

Every scenario starts its own broker (a `redis-server` with an append-only file: appendfsync
always, and everysec for the second restart run; a SQLite file; a name prefix on the shared
RabbitMQ, deleted after; for rabbit_restarts a RabbitMQ node of its own), its worker processes
and its SQLite ledger in a temporary directory, injects its faults, drains, and has the checker
count lost, duplicated, recovered and unexpected tasks (see tests/chaos/ledger.py). The kill
storm, the kill after a claim, SIGTERM and the poison mix run on each of `--brokers`. Prints
one table row per run; with --write, the table goes to that file too.

Sizes are the issue's by default where they have their own flag: SIGTERM with a 10 s grace
(`--tasks` / 10 tasks: `--tasks 10000` for its 1,000), and each unfinished task started again
within 1 s of its worker's exit; poison with 1,000 bad messages and 50 crashers among
`--tasks` good ones, run three times in a row (clean, bad messages alone, bad messages and
crashers: `scenarios.poison_throughput`) to compare the good tasks' rates and to read each
worker's resident set; partitions 3 x 30 s with a 15 s lease.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos import fuzz, scenarios
from tests.chaos.harness import Outcome, missing
from tests.chaos.ledger import Report

ALL = [
    "kill_storm",
    "kill_after_claim",
    "redis_always",
    "redis_everysec",
    "partitions",
    "sigterm",
    "poison",
    "rabbit_restarts",
    "waiters",
    "fuzz",
]
#: The scenarios that run on every broker of --brokers (the others have their own).
EVERY_BROKER = {"kill_storm", "kill_after_claim", "sigterm", "poison"}
HEADER = (
    "| scenario | broker | tasks | faults injected | lost | duplicated | recovered | "
    "time to recover | pass line held | reproduce |\n|---|---|---|---|---|---|---|---|---|---|"
)


async def one(name: str, args: argparse.Namespace, where: Path, broker: str) -> Outcome:
    n = args.tasks
    if name == "kill_storm":
        return await scenarios.kill_storm(
            where, tasks=n, workers=4, concurrency=10, kills=args.kills, broker=broker
        )
    if name == "kill_after_claim":
        return await scenarios.kill_after_claim(
            where, kills=args.claim_kills, others=n // 10, broker=broker
        )
    if name in ("redis_always", "redis_everysec"):
        fsync = name.split("_")[1]
        return await scenarios.redis_restarts(where, tasks=n, restarts=args.restarts, fsync=fsync)
    if name == "partitions":
        return await scenarios.partitions(
            where, tasks=n, count=args.partitions, length=args.length, lease=args.lease
        )
    if name == "sigterm":
        return await scenarios.sigterm(
            where,
            tasks=max(n // 10, 30),
            terms=args.kills,
            grace=args.grace,
            broker=broker,
            requeue_within=1.0,
        )
    if name == "poison":
        return await scenarios.poison_throughput(
            where,
            good=n,
            bad=args.bad,
            crashers=args.crashers,
            broker=broker,
            spread=args.spread_crashers,
            standby=args.supervised,
        )
    if name == "rabbit_restarts":
        return await scenarios.rabbit_restarts(where, tasks=n, restarts=args.restarts)
    if name == "waiters":
        return await scenarios.waiters(where, count=args.waiters, workers=4, concurrency=100)
    if name == "fuzz":
        started = time.monotonic()
        count, slowest = fuzz.run(args.fuzz)
        report = Report(sent=count, finished=count)
        return Outcome(
            "fuzzer over the envelope decoder",
            "none",
            count,
            f"{count} mutated bodies, half signed; slowest decode {slowest * 1000:.2f} ms",
            report,
            time.monotonic() - started,
            slowest < 0.010,
            "no crash, no hang, each decode < 10 ms",
        )
    raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(ALL)}")


def command(name: str, args: argparse.Namespace, broker: str) -> str:
    """The command that runs this scenario again, with this run's sizes."""
    on = f" --brokers {broker}" if name in EVERY_BROKER else ""
    sizes = {
        "kill_storm": f"--tasks {args.tasks} --kills {args.kills}",
        "kill_after_claim": f"--tasks {args.tasks} --claim-kills {args.claim_kills}",
        "rabbit_restarts": f"--tasks {args.tasks} --restarts {args.restarts}",
        "waiters": f"--waiters {args.waiters}",
        "redis_always": f"--tasks {args.tasks} --restarts {args.restarts}",
        "redis_everysec": f"--tasks {args.tasks} --restarts {args.restarts}",
        "partitions": f"--tasks {args.tasks} --partitions {args.partitions} "
        f"--length {args.length:g} --lease {args.lease:g}",
        "sigterm": f"--tasks {args.tasks} --kills {args.kills} --grace {args.grace:g}",
        "poison": f"--tasks {args.tasks} --bad {args.bad} --crashers {args.crashers}"
        + ("" if args.supervised is None else f" --supervised {args.supervised}"),
        "fuzz": f"--fuzz {args.fuzz}",
    }
    return f"python benchmarks/chaos.py --scenarios {name}{on} {sizes.get(name, '')}".strip()


async def main(args: argparse.Namespace) -> int:
    rows: list[str] = []
    notes: list[str] = []
    failed = 0
    runs = [
        (name, broker)
        for name in args.scenarios.split(",")
        for broker in (args.brokers.split(",") if name in EVERY_BROKER else [""])
    ]
    for name, broker in runs:
        needs = broker or {"rabbit_restarts": "amqp-node", "fuzz": "sqlite"}.get(name, "redis")
        if reason := await missing(needs):
            print(f"skipped {name} {broker}: {reason}", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as where:
            outcome = await one(name, args, Path(where), broker or "redis")
        row = outcome.row(command(name, args, broker))
        print(row, flush=True)
        print(f"    {outcome.report.line()}; {outcome.seconds:.1f} s; {outcome.notes}", flush=True)
        rows.append(row)
        notes.append(
            f"- **{outcome.scenario}** ({outcome.broker}): {outcome.report.line()}; "
            f"ran {outcome.seconds:.1f} s. Pass line: {outcome.pass_line}. {outcome.notes or ''}"
        )
        failed += not outcome.passed
    if args.write:
        machine = f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
        text = "\n".join(
            [
                "# Chaos runs (benchmarks/chaos.py)",
                "",
                f"Last run {time.strftime('%Y-%m-%d')}, on {machine}, a machine shared with "
                "other jobs (2 cores). Times are wall-clock.",
                "",
                HEADER,
                *rows,
                "",
                *notes,
                "",
            ]
        )
        await anyio.Path(args.write).write_text(text)
    return 1 if failed else 0


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(ALL))
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--brokers", default="redis,sqlite,amqp")
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--claim-kills", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--length", type=float, default=30.0, help="seconds per blackhole")
    parser.add_argument("--lease", type=float, default=15.0)
    parser.add_argument("--grace", type=float, default=10.0, help="SIGTERM: shutdown grace (s)")
    parser.add_argument("--bad", type=int, default=1000, help="poison: bad messages")
    parser.add_argument("--crashers", type=int, default=50, help="poison: os._exit tasks")
    parser.add_argument(
        "--spread-crashers",
        action="store_true",
        help="poison: one crasher before each 1/N of the second half of the good tasks, not "
        "all together",
    )
    parser.add_argument(
        "--supervised",
        type=int,
        metavar="K",
        help="poison: run the workers under `aqueue worker --workers 2 --standby K` (the "
        "product's supervisor replaces a dead one), not the harness's own restarts",
    )
    parser.add_argument("--fuzz", type=int, default=100_000)
    parser.add_argument("--write", help="write the table (markdown) to this file")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(anyio.run(main, parse()))
