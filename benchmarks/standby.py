"""How long a worker killed by a task leaves its slot empty: restarts against warm standbys.

    python benchmarks/standby.py [--standby 0,1,2] [--deaths 6] [--repeat 3]

For each `--standby` count K it runs `aqueue worker tasks:app --workers 1 --standby K` on a
SQLite file in a temporary folder, then `--deaths` times: sends a task that calls `os._exit(3)`
and waits for the slot's next `ready.` line (its replacement serving). It prints, per K, the
median time from the send to that line (and the range), over every death of every run; runs of
the different K alternate, so a noisy machine hits each alike. With K = 0 the supervisor
starts a new process after its 0.25 s restart wait; with K > 0 a loaded standby takes the slot.
The crashers come one after the other: with K = 1, the next death often comes before the new
standby has loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from aqueue import App

TASKS = """
    import os

    from aqueue import App

    app = App("tasks", broker={url!r})


    @app.task
    async def crash():
        os._exit(3)
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--standby", default="0,1,2", help="standby counts to compare")
    parser.add_argument("--deaths", type=int, default=6, help="crashers per run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args.standby = [int(value) for value in args.standby.split(",") if value.strip()]
    return args


class Supervisor:
    """`aqueue worker --workers 1 --standby K`, its output read line by line in a thread."""

    def __init__(self, cwd: Path, standby: int) -> None:
        command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO"]
        command += ["--workers", "1", "--standby", str(standby)]
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self) -> None:
        """Read lines until the next `ready.` (blocking: call it in a thread)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.rstrip().endswith(" ready."):
                return
        raise RuntimeError("the supervisor ended")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.send_signal(signal.SIGTERM)  # cold: nothing runs
        assert self.proc.stdout is not None
        self.proc.stdout.read()
        self.proc.wait(timeout=60)


async def one_run(standby: int, deaths: int) -> list[float]:
    """The replacement times of `deaths` deaths in a row (seconds, send to `ready.`)."""
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        url = f"sqlite:///{cwd / 'broker.db'}"
        (cwd / "tasks.py").write_text(textwrap.dedent(TASKS).format(url=url))
        supervisor = Supervisor(cwd, standby)
        times: list[float] = []
        try:
            await asyncio.to_thread(supervisor.wait_ready)
            async with App("caller", broker=url, set_as_current=False) as caller:
                for _ in range(deaths):
                    sent = time.perf_counter()
                    await caller.send_task("tasks.crash")
                    await asyncio.to_thread(supervisor.wait_ready)
                    times.append(time.perf_counter() - sent)
        finally:
            supervisor.stop()
        return times


async def main(args: argparse.Namespace) -> None:
    results: dict[int, list[float]] = {k: [] for k in args.standby}
    for index in range(args.repeat):
        for standby in args.standby:
            results[standby] += await one_run(standby, args.deaths)
            print(f"run {index + 1}/{args.repeat}: standby {standby} done", file=sys.stderr)
    print(
        f"{args.deaths} deaths in a row x {args.repeat} runs, `--workers 1 --standby K` on "
        f"SQLite; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(f"  {'K':>3} {'median s':>9} {'range s':>15}")
    for standby, times in results.items():
        spread = f"{min(times):.3f}-{max(times):.3f}"
        print(f"  {standby:>3} {statistics.median(times):9.3f} {spread:>15}")


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
