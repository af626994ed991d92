"""aqueue in one minute: a real worker process and a real producer process, and no server.

    pip install .
    python examples/quickstart.py

This script starts `python -m aqueue worker tasks:app -l INFO` (the tasks of
`examples/tasks.py`) in a temporary directory, waits until the worker says it is ready, then
runs a producer, a second process, that sends tasks and prints their results. Both meet in the
SQLite default, `aqueue.db` in that directory, which goes away at the end. The worker is then
stopped with SIGTERM, as a service manager would. The exit code is 0 only if everything worked.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

THIS_FILE = str(Path(__file__).resolve())
HERE = Path(THIS_FILE).parent
#: The longest the worker may take to start, and the producer to finish.
READY_WITHIN = 30.0
PRODUCE_WITHIN = 120.0
#: How many worker log lines to show at the end.
SHOW_LOG_LINES = 8


def child_env() -> dict[str, str]:
    """Children import `tasks` from this directory, and use the SQLite default."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.pop("AQUEUE_BROKER_URL", None)  # the point of the example: no broker to configure
    env.pop("AQUEUE_RESULT_BACKEND", None)
    return env


class Lines:
    """The lines a child writes to a pipe, read by a thread so the pipe never fills up."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def wait_for(self, text: str, within: float) -> bool:
        """Wait until a line contains `text`: True, or False on end of output or timeout."""
        deadline = time.monotonic() + within
        while True:
            try:
                line = self.queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return False
            if line is None:
                return False
            self.seen.append(line)
            if text in line:
                return True

    def rest(self) -> list[str]:
        """Every line read so far (call once the child has exited)."""
        self._thread.join(timeout=5)
        while True:
            try:
                line = self.queue.get_nowait()
            except queue.Empty:
                return self.seen
            if line is not None:
                self.seen.append(line)


def stop(worker: subprocess.Popen[str]) -> int:
    """SIGTERM (a warm shutdown), then kill if it takes too long; return the exit code."""
    if worker.poll() is None:
        worker.terminate()
        try:
            return worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return worker.wait()


def main() -> int:
    try:
        import aqueue
    except ImportError:
        print("aqueue is not installed: run `pip install .` in the checkout first", file=sys.stderr)
        return 2
    print(f"aqueue {aqueue.__version__}, Python {sys.version.split()[0]}")
    env = child_env()
    with tempfile.TemporaryDirectory(prefix="aqueue-quickstart-") as workdir:
        print(f"the SQLite default, aqueue.db, lives in {workdir} for this run\n")
        command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO"]
        worker = subprocess.Popen(
            command, cwd=workdir, env=env, stderr=subprocess.PIPE, text=True
        )  # its banner goes to our stdout, its log to the pipe
        assert worker.stderr is not None
        log = Lines(worker.stderr)
        try:
            if not log.wait_for("ready.", READY_WITHIN):
                print(f"the worker did not become ready within {READY_WITHIN} s", file=sys.stderr)
                stop(worker)
                print("\n".join(log.rest()), file=sys.stderr)
                return 1
            print(f"worker ready (pid {worker.pid}); now a producer process sends tasks:\n")
            producer = subprocess.run(
                [sys.executable, THIS_FILE, "--produce"],
                cwd=workdir,
                env=env,
                timeout=PRODUCE_WITHIN,
                check=False,
            )
        finally:
            code = stop(worker)
        lines = log.rest()
        print(f"\nworker stopped (exit code {code}); the first lines of its log:")
        records = [line for line in lines if line.startswith("[") and "ready." not in line]
        after_ready = records[:SHOW_LOG_LINES]
        print("\n".join(f"  {line}" for line in after_ready))
        if producer.returncode != 0 or code != 0:
            print("\nsomething failed; the worker's whole log:", file=sys.stderr)
            print("\n".join(lines), file=sys.stderr)
            return 1
    print("\nall done")
    return 0


# -- the producer: a separate process -----------------------------------------------------------


async def produce() -> int:
    import anyio
    import tasks  # examples/tasks.py, importable through PYTHONPATH

    failures = 0

    def check(ok: bool, line: str) -> None:
        nonlocal failures
        failures += not ok
        print(line if ok else f"{line}   <-- WRONG")

    async with tasks.app:
        result = await tasks.add.delay(4, 4)
        check(await result.get(timeout=30) == 8, f"add(4, 4) = {await result.get(timeout=30)}")

        digest = await (await tasks.checksum.delay(THIS_FILE)).get(timeout=30)
        expected = tasks.checksum(THIS_FILE)  # a task is still a plain function, here
        check(digest == expected, f"checksum(quickstart.py) = {digest[:16]}... (run in a thread)")

        try:
            await (await tasks.divide.delay(1, 0)).get(timeout=30)
            check(False, "divide(1, 0) returned")
        except ZeroDivisionError as exc:
            check(True, f"divide(1, 0) raised ZeroDivisionError({str(exc)!r}) from the worker")

        me = await (await tasks.whoami.delay()).get(timeout=30)
        check(me["delivery"] == 1, f"whoami() ran on {me['hostname']}, delivery {me['delivery']}")

        started = time.perf_counter()
        sums = [0] * 100

        async def one(i: int) -> None:
            sums[i] = await (await tasks.add.delay(i, i)).get(timeout=60)

        async with anyio.create_task_group() as group:  # fan out 100 tasks, gather the results
            for i in range(100):
                group.start_soon(one, i)
        elapsed = time.perf_counter() - started
        total = sum(sums)
        check(total == 9900, f"100 x add(i, i), fanned out and gathered: sum = {total}")
        print(f"  (sent, run and collected in {elapsed:.2f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--produce"]:
        import anyio

        sys.exit(anyio.run(produce))
    sys.exit(main())
