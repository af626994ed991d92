"""What the machine allows many callers each sending one task at a time, with no aqueue code.

    python benchmarks/producers_floor.py [--brokers sqlite,redis] [--tasks 40000] [--repeat 5]
                                         [--redis-url URL]

`producers.py` measures aqueue: n coroutines (`c100`) or 8 threads (`t8`) each sending one
`delay()` at a time, against the bulk `delay_many`. This measures the same shapes stripped of
aqueue's per-call code, to tell how much of a gap is aqueue's and how much is the machine's:
the messages are built beforehand (or, where said, by aqueue's own `plain_message` in the call)
and go straight to the broker's blocking publisher (`Broker.blocking_publisher`: the sync
path's own SQLite connection, or a blocking Redis connection), each caller waiting until its
message is durably sent, as `delay()` does:

- `raw bulk`: 1,000 messages a publish, one thread;
- `raw t8, writer thread`: 8 threads queue one message each and wait on a lock of their own; a
  thread that does nothing else publishes what is queued and wakes them (aqueue's design);
- `raw t8, group commit`: 8 threads, one of which publishes what the others queued meanwhile,
  then hands the lead on and wakes them (aqueue's design before);
- `raw c100`: 100 coroutines each await a future that a flusher task settles once the group of
  messages queued meanwhile is published in a thread (aqueue's SQLite design), with messages
  built beforehand, and built in each call;
- `aqueue c100`, `aqueue t8`: `await noop.delay()` and `noop.sync.delay()`, as producers.py.

Every figure is over `delay_many`'s rate in the same run (`bulk`, 1,000 a call, as
producers.py): medians of the runs' ratios, with the lowest and highest. What it makes, it
deletes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from enqueue import QUEUE, broker_url, bulk, in_flight, make_app
from producers import threads

from aqueue import App
from aqueue.drivers.base import BlockingPublisher
from aqueue.message import OutgoingMessage
from aqueue.sending import plain_message

THREADS = 8
FLIGHT = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="sqlite,redis")
    parser.add_argument("--tasks", type=int, default=40_000, help="tasks per figure")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args(argv)
    args.brokers = [name.strip() for name in args.brokers.split(",") if name.strip()]
    if unknown := set(args.brokers) - {"sqlite", "redis"}:
        parser.error(f"unknown broker(s) {sorted(unknown)}: choose from sqlite, redis")
    return args


class _Waiter:
    __slots__ = ("lead", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.lead = False


class Writer:
    """Callers queue their message and wait; a writer thread publishes what is queued."""

    def __init__(self, publisher: BlockingPublisher) -> None:
        self.publisher = publisher
        self.queue: list[tuple[OutgoingMessage, threading.Lock]] = []
        self.lock, self.bell = threading.Lock(), threading.Lock()
        self.bell.acquire()
        self.sleeping = self.stopped = False
        self.thread = threading.Thread(target=self.write, daemon=True)
        self.thread.start()

    def call(self, message: OutgoingMessage) -> None:
        waiter = threading.Lock()
        waiter.acquire()
        with self.lock:
            self.queue.append((message, waiter))
            ring, self.sleeping = self.sleeping, False
        if ring:
            self.bell.release()
        waiter.acquire()

    def write(self) -> None:
        while True:
            with self.lock:
                batch, self.queue = self.queue, []
                if not batch:
                    if self.stopped:
                        return
                    self.sleeping = True
            if not batch:
                self.bell.acquire()
                continue
            self.publisher.publish([message for message, _ in batch])
            for _, waiter in batch:
                waiter.release()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            ring, self.sleeping = self.sleeping, False
        if ring:
            self.bell.release()
        self.thread.join()


def group_commit(publisher: BlockingPublisher) -> Callable[[OutgoingMessage], None]:
    """A call that publishes the group queued meanwhile if nobody does, else waits."""
    lock = threading.Lock()
    queue: list[tuple[OutgoingMessage, _Waiter]] = []
    state = {"leading": False}

    def call(message: OutgoingMessage) -> None:
        waiter = _Waiter()
        with lock:
            queue.append((message, waiter))
            leads, state["leading"] = not state["leading"], True
        if not leads:
            waiter.lock.acquire()
            if not waiter.lead:
                return
        with lock:
            group = list(queue)
            queue.clear()
        publisher.publish([queued for queued, _ in group])
        with lock:
            after = queue[0][1] if queue else None
            if after is None:
                state["leading"] = False
        if after is not None:
            after.lead = True
            after.lock.release()
        for _, queued in group:
            if queued is not waiter:
                queued.lock.release()

    return call


def in_threads(call: Callable[[OutgoingMessage], None], messages: list[OutgoingMessage]) -> float:
    """Send `messages` from THREADS threads, each one call at a time; return calls/s."""
    shares = [messages[index::THREADS] for index in range(THREADS)]

    def send(share: list[OutgoingMessage]) -> None:
        for message in share:
            call(message)

    threads = [threading.Thread(target=send, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(messages) / (time.perf_counter() - started)


async def raw_c100(
    publisher: BlockingPublisher, n: int, build: Callable[[], OutgoingMessage]
) -> float:
    """FLIGHT coroutines, each awaiting the group commit of one message at a time."""
    loop = asyncio.get_running_loop()
    pending: list[tuple[OutgoingMessage, asyncio.Future[None]]] = []
    flushing: list[asyncio.Task[None]] = []

    async def flush() -> None:
        while pending:
            group = list(pending)
            pending.clear()
            await loop.run_in_executor(None, publisher.publish, [m for m, _ in group])
            for _, future in group:
                future.set_result(None)
        flushing.clear()

    async def sender(count: int) -> None:
        for _ in range(count):
            future = loop.create_future()
            pending.append((build(), future))
            if not flushing:
                flushing.append(loop.create_task(flush()))
            await future

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for _ in range(FLIGHT):
            tasks.create_task(sender(n // FLIGHT))
    return n // FLIGHT * FLIGHT / (time.perf_counter() - started)


async def raw_figures(
    publisher: BlockingPublisher, n: int, build: Callable[[], OutgoingMessage]
) -> dict[str, float]:
    """The shapes with no aqueue code, on the broker's blocking publisher."""
    rates: dict[str, float] = {}
    messages = [build() for _ in range(n)]
    started = time.perf_counter()
    for start in range(0, n, 1000):
        await asyncio.to_thread(publisher.publish, messages[start : start + 1000])
    rates["raw bulk"] = n / (time.perf_counter() - started)
    writer = Writer(publisher)
    rates["raw t8, writer thread"] = await asyncio.to_thread(in_threads, writer.call, messages)
    writer.stop()
    rates["raw t8, group commit"] = await asyncio.to_thread(
        in_threads, group_commit(publisher), messages
    )
    prebuilt = iter(messages)
    rates["raw c100, prebuilt"] = await raw_c100(publisher, n, lambda: next(prebuilt))
    rates["raw c100, built in the call"] = await raw_c100(publisher, n, build)
    return rates


async def one_run(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Every figure, once, as rates (calls/s), on a broker URL of the run's own."""
    n = args.tasks
    async with broker_url(name, args) as url:
        app = make_app(url)
        noop: Any = app.tasks["bench.noop"]
        broker = await app.broker()
        await noop.delay()
        publisher = broker.blocking_publisher()
        assert publisher is not None
        try:
            rates = {"bulk (delay_many)": await bulk(app, n)}
            rates.update(await raw_figures(publisher, n, functools.partial(_built, app)))
            rates["aqueue c100"] = await in_flight(app, n, FLIGHT)
            rates["aqueue t8"] = (await asyncio.to_thread(threads, app, n, THREADS))[0]
        finally:
            publisher.close()
            await broker.purge(QUEUE)
            await app.close()  # this loop's connections and the I/O thread's
    return rates


def _built(app: App) -> OutgoingMessage:
    return plain_message(app, None, "bench.noop", (), {})[0]


def main(args: argparse.Namespace) -> None:
    print(
        f"python {sys.version.split()[0]}, {args.tasks} tasks a figure, {args.repeat} runs; "
        "calls/s (median, lowest-highest) and over bulk (median of the runs' ratios)"
    )
    for name in args.brokers:
        runs = [asyncio.run(one_run(name, args)) for _ in range(args.repeat)]
        print(f"\n{name}")
        for figure in runs[0]:
            rates = [run[figure] for run in runs]
            ratio = statistics.median(run[figure] / run["bulk (delay_many)"] for run in runs)
            spread = f"({min(rates):,.0f}-{max(rates):,.0f})"
            print(f"  {figure:30} {statistics.median(rates):>10,.0f}/s {spread:>19}  {ratio:5.2f}")


if __name__ == "__main__":
    main(parse_args())
