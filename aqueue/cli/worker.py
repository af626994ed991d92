"""`aqueue worker MODULE:app`: run a worker, with its banner, logging and event loop.

`--beat` (`-B`) runs a beat in the same process too (several are safe: see aqueue/beat/).
The current directory stays importable while the worker runs (task modules are imported when
the app is finalized, and Django imports project modules lazily); `sys.path` is restored when
it returns. With `DJANGO_SETTINGS_MODULE` set, Django is set up before the app module loads.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from typing import Any

import anyio

from ..app import App
from ..banner import banner
from ..beat.scheduler import Beat
from ..drivers import preload
from ..exceptions import ConfigurationError
from ..loader import import_from_cwd, load_app
from ..logs import root_handlers, setup_logging
from ..loops import LOOPS, describe, loop_factory
from ..sizes import parse_memory
from ..urls import secrets_in
from ..worker import Worker
from ..worker.recycle import EXIT_RECYCLE
from ..worker.standby import standby_pipe, wait_for_assignment
from ..worker.supervisor import Supervisor, ready_pipe, tell_ready, watch_parent
from .beat import beat_banner

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    """Add `aqueue worker` to the CLI's subparsers."""
    worker = commands.add_parser("worker", help="run a worker")
    worker.add_argument("app", metavar="MODULE:ATTRIBUTE", help="the App, e.g. tasks:app")
    worker.add_argument("-c", "--concurrency", type=_positive, help="tasks in flight at once")
    worker.add_argument("--threads", type=_positive, help="threads for plain def tasks")
    worker.add_argument(
        "--processes", type=_positive, help='child processes for executor="process" tasks'
    )
    worker.add_argument("-Q", "--queues", help="comma-separated queues to consume")
    worker.add_argument(
        "-l",
        "--loglevel",
        default="WARNING",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )
    worker.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text (Celery's lines) or json (one object per line, with task id and name)",
    )
    worker.add_argument("-f", "--logfile", metavar="PATH", help="log to this file, not stderr")
    worker.add_argument("-n", "--hostname", help="this worker's name (default aqueue@HOST)")
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    worker.add_argument(
        "-E", "--task-events", action="store_true", help="send task events (aqueue events)"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (0: any free one), at /metrics",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address of --metrics-port (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    worker.add_argument(
        "--loop",
        choices=LOOPS,
        help="event loop: auto (uvloop when installed, the default), asyncio or uvloop",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="grace period for running tasks on the first SIGTERM/SIGINT",
    )

    worker.add_argument(
        "-B", "--beat", action="store_true", help="also send the periodic tasks (a beat)"
    )
    worker.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="worker processes under one supervisor (default 1; auto: one per core)",
    )
    worker.add_argument(
        "--max-tasks-per-child",
        type=_positive,
        metavar="N",
        help="replace a worker process after N tasks (warm; implies the supervisor)",
    )
    worker.add_argument(
        "--max-memory-per-child",
        type=_memory,
        metavar="KIB",
        help="replace a worker process past this resident memory (KiB, or e.g. 200MB)",
    )
    worker.add_argument(
        "--standby",
        type=_count,
        metavar="K",
        help="keep K loaded worker processes waiting to replace one that dies (implies the "
        "supervisor; default 0)",
    )
    worker.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(run=_worker)


def _positive(text: str) -> int:
    return _whole(text, 1, "must be at least 1")


def _count(text: str) -> int:
    return _whole(text, 0, "must not be negative")


def _whole(text: str, least: int, otherwise: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} {otherwise}")
    return value


def _workers(text: str) -> int:
    if text == "auto":
        return os.cpu_count() or 1
    return _positive(text)


def _memory(text: str) -> int:
    try:
        return parse_memory(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _worker(args: argparse.Namespace) -> int:
    with import_from_cwd():
        return _run_worker(args)


def _run_worker(args: argparse.Namespace) -> int:
    ready = ready_pipe() if args.child else None  # the supervisor's, taken before anything starts
    standby = standby_pipe() if args.child else None  # a standby's, where its slot comes
    before = root_handlers()  # handlers added from here on are the project's own
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        # Before the app module: one that imports models at the top then loads too.
        from ..contrib.django.fixup import setup_django

        setup_django()
    app = load_app(args.app)
    configured = [handler for handler in root_handlers() if handler not in before]
    supervised = (
        args.workers or args.max_tasks_per_child or args.max_memory_per_child or args.standby
    )
    if supervised and not args.child:
        return _supervise(app, args)
    factory = loop_factory(args.loop or app.conf.worker_loop)
    secrets = [*secrets_in(app.broker_url), *secrets_in(app.backend_url or "")]
    if app.conf.worker_hijack_root_logger and not configured:
        setup_logging(args.loglevel, secrets, log_format=args.log_format, logfile=args.logfile)
    _warn_ignored(app)
    app.setup_worker()  # Django's set-up (if any), then the task modules
    if standby is not None:  # loaded: wait for a slot, without connecting to anything
        preload(app.broker_url, app.backend_url)
        assignment = wait_for_assignment(standby)
        if assignment is None:
            return 0  # the supervisor let this standby go
        args.hostname, args.beat = assignment.hostname, assignment.beat
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    worker = Worker(
        app,
        queues=queues,
        concurrency=args.concurrency,
        threads=args.threads,
        shutdown_timeout=args.shutdown_timeout,
        burst=args.burst,
        hostname=args.hostname,
        processes=args.processes,
        app_path=args.app,
        max_tasks_per_child=args.max_tasks_per_child,
        max_memory_per_child=args.max_memory_per_child,
        send_events=True if args.task_events else None,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )

    async def serve() -> None:
        try:
            await app.open()  # connection errors surface here, as one line, not in a group
            limits = await _limits_scope(app)
            loop = describe(asyncio.get_running_loop())
            print(banner(worker, args.app, limits=limits, loop=loop), flush=True)
            async with anyio.create_task_group() as group:
                if args.child:  # the supervisor holds our stdin: its end means it died
                    group.start_soon(watch_parent, worker.stop)
                if args.beat:
                    beat = Beat(app)
                    await beat.load()
                    print(beat_banner(app, beat, args.app), flush=True)
                    group.start_soon(beat.run)
                async with anyio.create_task_group() as serving:
                    await serving.start(worker.serve)
                    tell_ready(ready)  # to the supervisor, if any: it was serving from now on
                group.cancel_scope.cancel()  # the worker stopped: so does its beat
        finally:
            with anyio.CancelScope(shield=True):
                await app.close()

    anyio.run(serve, backend_options={"loop_factory": factory})
    status = EXIT_RECYCLE if worker.recycled else 0
    if worker.runner is not None and worker.runner.threads_busy:
        _exit_past_blocked_threads(worker.runner.threads_busy, status)
    return status


def _supervise(app: App, args: argparse.Namespace) -> int:
    """Run `--workers N` child workers under a supervisor (aqueue/worker/supervisor.py)."""
    hostname = args.hostname or app.conf.worker_hostname or f"aqueue@{socket.gethostname()}"
    setup_logging(args.loglevel, [*secrets_in(app.broker_url), *secrets_in(app.backend_url or "")])

    def command(name: str, beat: bool) -> list[str]:
        line = [sys.executable, "-m", "aqueue", "worker", args.app, "--child", "-n", name]
        line += ["-l", args.loglevel]
        for flag, value in (
            ("-c", args.concurrency),
            ("--threads", args.threads),
            ("--processes", args.processes),
            ("-Q", args.queues),
            ("--loop", args.loop),
            ("--shutdown-timeout", args.shutdown_timeout),
            ("--max-tasks-per-child", args.max_tasks_per_child),
            ("--max-memory-per-child", args.max_memory_per_child),
        ):
            if value is not None:
                line += [flag, str(value)]
        if args.burst:
            line.append("--burst")
        if beat:  # slot 1's child only: one beat is enough
            line.append("--beat")
        return line

    supervisor = Supervisor(
        command,
        args.workers or 1,
        hostname=hostname,
        burst=args.burst,
        beat=args.beat,
        standby=args.standby or 0,
    )
    return anyio.run(supervisor.run)


def _warn_ignored(app: App) -> None:
    """Log, in one warning, the settings read and ignored (Celery's), each with its reason."""
    ignored = app.conf.ignored
    if ignored:
        lines = "".join(f"\n  {name}: {why}" for name, why in sorted(ignored.items()))
        logging.getLogger("aqueue.worker").warning(
            "%d setting(s) read and ignored:%s", len(ignored), lines
        )


async def _limits_scope(app: App) -> str:
    broker, backend = await app.broker(), await app.result_backend()
    if broker.rate_limiter() or (backend is not None and backend.rate_limiter()):
        return "global (across all workers)"
    return "per worker (no Redis for a global limiter)"


def _exit_past_blocked_threads(count: int, status: int) -> None:
    """Exit now: sync tasks are still blocked in threads after shutdown.

    Their messages are back on the queue already; Python would otherwise wait for the threads
    (which cannot be interrupted) before the process could end.
    """
    logging.getLogger("aqueue.worker").warning(
        "%d task thread(s) still blocked after shutdown; exiting without them", count
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
