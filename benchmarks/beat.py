"""Send-time error of a 1 s beat entry with three `aqueue beat` processes, per broker.

    python benchmarks/beat.py [--seconds 60] [--beats 3] [--brokers sqlite,redis,amqp]

Three beat processes share one broker and one entry due every whole second. Each message
carries its due time (`beat-due`) and the time its beat sent it (`beat-sent`, taken after the
claim, before the publish). At the end the queue is drained and the script prints the median,
p99 and max of `sent - due`, and checks that every due time in the window was sent exactly once.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

from aqueue import App
from aqueue.message import Envelope

PROJECT = """
from aqueue import App
app = App("tasks")
app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 1.0}}

@app.task
async def tick():
    return None
"""

ROOT = Path(__file__).resolve().parent.parent

URLS = {
    "sqlite": None,  # a file in the temporary directory
    "redis": "redis://127.0.0.1:6379/15?prefix=aqueue-bench-{unique}",
    "amqp": "amqp://guest:guest@127.0.0.1:5672//?prefix=tmp-aqueue-bench-{unique}.",
}


def start_beats(cwd: Path, url: str, count: int) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "AQUEUE_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
    env.pop("AQUEUE_RESULT_BACKEND", None)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "aqueue", "beat", "tasks:app", "-l", "WARNING"],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(count)
    ]


async def drain(name: str, url: str) -> list[Envelope]:
    async with App("bench", broker=url, set_as_current=False) as app:
        broker = await app.broker()
        envelopes = []
        async for delivery in broker.consume(["default"], _Credit(), burst=True):
            envelopes.append(Envelope.decode(delivery.body))
            await delivery.ack()
    if name != "sqlite":  # the test suite's helpers remove the prefix's keys and queues
        sys.path.insert(0, str(ROOT))
        from tests.helpers import service_amqp, service_redis

        await {"redis": service_redis, "amqp": service_amqp}[name].cleanup(url)
    return envelopes


class _Credit:
    async def wait(self) -> int:
        return 100


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(name: str, seconds: float, beats: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "tasks.py").write_text(PROJECT)
        template = URLS[name]
        url = (
            f"sqlite:///{cwd / 'aqueue.db'}"
            if template is None
            else template.format(unique=uuid.uuid4().hex[:8])
        )
        procs = start_beats(cwd, url, beats)
        time.sleep(seconds)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        envelopes = anyio.run(drain, name, url)
    dues = sorted(e.headers["beat-due"] for e in envelopes)
    errors = [(e.headers["beat-sent"] - e.headers["beat-due"]) * 1000 for e in envelopes]
    expected = round(dues[-1] - dues[0]) + 1 if dues else 0
    duplicates = len(dues) - len(set(dues))
    return (
        f"| {name} | {beats} | {len(dues)} | {expected - len(set(dues))} | {duplicates} | "
        f"{statistics.median(errors):.1f} | {percentile(errors, 0.99):.1f} | {max(errors):.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--beats", type=int, default=3)
    parser.add_argument("--brokers", default="sqlite,redis,amqp")
    args = parser.parse_args()
    print("| broker | beats | runs sent | gaps | duplicates | median ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.brokers.split(","):
        print(measure(name, args.seconds, args.beats), flush=True)


if __name__ == "__main__":
    main()
