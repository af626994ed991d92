"""The `aqueue` command: `aqueue worker tasks:app`, `check-config`, and the operator commands.

`aqueue inspect|control|purge|result|call` live in `aqueue.operate`, `aqueue dead
list|retry|purge` in `aqueue.dead`.

Every error a user can cause (a bad app path, a bad setting, a bad argument) ends in one line
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import anyio

from . import dead, operate
from ._version import __version__
from .app import App
from .banner import banner
from .config import Settings
from .drivers import create_backend, create_broker
from .exceptions import AqueueError
from .loader import import_from_cwd, load_app
from .logs import setup_logging
from .loops import LOOPS, describe, loop_factory
from .urls import redact, redact_text, secrets_in
from .worker import Worker

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors never echo a URL's password (its subparsers too)."""

    def error(self, message: str) -> NoReturn:
        """Print the usage and the error, passwords redacted, and exit with code 2."""
        super().error(redact_text(message))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aqueue", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aqueue {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    worker.add_argument("-n", "--hostname", help="this worker's name (default aqueue@HOST)")
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")
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

    check = commands.add_parser("check-config", help="validate a configuration module")
    check.add_argument("module", help="the config module, e.g. aqueueconfig")
    check.add_argument("--namespace", help='read NAMESPACE_SETTING names, e.g. "AQUEUE"')
    operate.add_commands(commands)
    dead.add_commands(commands)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _worker(args: argparse.Namespace) -> int:
    app = load_app(args.app)
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
    )
    factory = loop_factory(args.loop or app.conf.worker_loop)
    secrets = [*secrets_in(app.broker_url), *secrets_in(app.backend_url or "")]
    setup_logging(args.loglevel, secrets)

    async def serve() -> None:
        try:
            await app.open()  # connection errors surface here, as one line, not in a group
            limits = await _limits_scope(app)
            loop = describe(asyncio.get_running_loop())
            print(banner(worker, args.app, limits=limits, loop=loop), flush=True)
            await worker.serve()
        finally:
            with anyio.CancelScope(shield=True):
                await app.close()

    anyio.run(serve, backend_options={"loop_factory": factory})
    if worker.runner is not None and worker.runner.threads_busy:
        _exit_past_blocked_threads(worker.runner.threads_busy)
    return 0


async def _limits_scope(app: App) -> str:
    broker, backend = await app.connection(), await app.result_backend()
    if broker.rate_limiter() or (backend is not None and backend.rate_limiter()):
        return "global (across all workers)"
    return "per worker (no Redis for a global limiter)"


def _exit_past_blocked_threads(count: int) -> None:
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
    os._exit(0)


def _check_config(args: argparse.Namespace) -> int:
    settings = Settings()
    with import_from_cwd():
        settings.from_object(args.module, namespace=args.namespace)
    for url in (settings.broker_url, settings.result_backend):
        if isinstance(url, str) and url not in ("disabled", "disabled://"):
            # Resolves the driver (and its optional dependency) without connecting.
            factory = create_broker if url is settings.broker_url else create_backend
            factory(url, {})
    print(f"{args.module}: configuration OK")
    for name, value in settings.as_dict().items():
        if value != getattr(Settings(), name):
            shown = redact(value) if isinstance(value, str) else repr(value)
            print(f"  {name} = {shown}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "worker":
            return _worker(args)
        if args.command == "check-config":
            return _check_config(args)
        return operate.run(args)
    except AqueueError as exc:
        print(f"aqueue: error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        errors = group.exceptions
        if len(errors) == 1 and isinstance(errors[0], AqueueError):
            print(f"aqueue: error: {errors[0]}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:  # only before the worker's own signal handling is in place
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
