"""`aqueue dashboard MODULE:app`: serve the web dashboard.

    aqueue dashboard MODULE:app [--port 5555] [--host 127.0.0.1] [--auth USER:PASS | --token T]

Serves the web dashboard (aqueue/dashboard/) with uvicorn, on 127.0.0.1 unless `--host` says
otherwise. `--auth` asks for HTTP Basic credentials, which over plain HTTP are as safe as the
network between browser and dashboard; `--token` asks for a token instead (open the dashboard
once with `?token=TOKEN`). Both may also come from the environment
(`AQUEUE_DASHBOARD_AUTH`, `AQUEUE_DASHBOARD_TOKEN`), which keeps them out of `ps`.
Workers must send events (`-E`) for the tasks page to fill.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from ..app import App
from ..exceptions import ConfigurationError, MissingDependency
from .common import with_app

__all__ = ["add_commands"]

GRACE = 2  # seconds
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_commands(commands: Any) -> None:
    """Add `aqueue dashboard` to the CLI's subparsers."""
    dashboard = commands.add_parser("dashboard", help="serve the web dashboard")
    dashboard.add_argument("app", metavar="MODULE:ATTRIBUTE", help="the App, e.g. tasks:app")
    dashboard.add_argument("--port", type=int, default=5555, help="the port (5555)")
    dashboard.add_argument("--host", default="127.0.0.1", help="the address (127.0.0.1)")
    guard = dashboard.add_mutually_exclusive_group()
    guard.add_argument("--auth", metavar="USER:PASSWORD", help="ask for HTTP Basic credentials")
    guard.add_argument("--token", help="ask for this token (?token=, a cookie, or Bearer)")
    dashboard.set_defaults(run=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..dashboard import create_app
        from ..dashboard.guard import parse_credentials
    except ImportError as exc:
        raise MissingDependency(
            f"the dashboard needs {exc.name}: pip install 'aqueue-tasks[dashboard]'"
        ) from None
    auth_text = args.auth or os.environ.get("AQUEUE_DASHBOARD_AUTH")
    token = args.token or os.environ.get("AQUEUE_DASHBOARD_TOKEN")
    if auth_text and token:
        raise ConfigurationError("give the dashboard --auth or --token, not both")
    try:
        auth = parse_credentials(auth_text) if auth_text else None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    if args.host not in LOOPBACK and not (auth or token):
        print(
            f"aqueue: warning: the dashboard on {args.host} lets anyone who reaches it act on "
            "your tasks; pass --auth or --token",
            file=sys.stderr,
        )

    try:  # bound here: listening when the line below is printed (--port 0 picks a free one)
        listener = socket.create_server((args.host, args.port), backlog=128)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {args.host}:{args.port}: {exc}") from None

    async def serve(app: App) -> int:
        web = create_app(app, auth=auth, token=token)
        config = uvicorn.Config(
            web,
            log_level="warning",
            timeout_graceful_shutdown=GRACE,  # the live pages' streams never end by themselves
        )
        host = f"[{args.host}]" if ":" in args.host else args.host
        port = listener.getsockname()[1]
        print(f"aqueue dashboard on http://{host}:{port}/", file=sys.stderr, flush=True)
        await uvicorn.Server(config).serve([listener])
        return 0

    try:
        return with_app(args, serve)
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()
