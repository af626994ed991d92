"""The report: the markdown table of medians, the ratios against the best peer, every run,
and how each system was set up."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from comparing.common import BULK_CHUNK, FANOUT
from comparing.peers.docket import DOCKET_CONNECTIONS
from comparing.peers.saq import SAQ_WAIT
from comparing.systems import AMQP_SYSTEMS, LOOPS, PEER_LOOP, REDIS_SYSTEMS

if TYPE_CHECKING:
    from comparing.driver import Bench, Cell


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
