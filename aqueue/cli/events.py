"""`aqueue events MODULE:app`: tail the workers' task and worker events, one line each.

Workers emit events when started with `-E` (or `worker_send_task_events = True`). On a
terminal the event type is coloured (green success, red failure, yellow retry, ...);
`--json` prints one JSON object per event instead, for scripts; `--count N` exits after N.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any, TextIO

from ..app import App
from ..events import Event
from .common import with_app

__all__ = ["add_commands", "format_event"]

COLOURS = {
    "task-sent": "\x1b[2m",
    "task-received": "\x1b[36m",
    "task-started": "\x1b[34m",
    "task-succeeded": "\x1b[32m",
    "task-failed": "\x1b[31m",
    "task-retried": "\x1b[33m",
    "task-revoked": "\x1b[35m",
    "task-rejected": "\x1b[1;31m",
    "worker-online": "\x1b[1;32m",
    "worker-heartbeat": "\x1b[2m",
    "worker-offline": "\x1b[1;33m",
}
RESET = "\x1b[0m"


def add_commands(commands: Any) -> None:
    """Add `aqueue events` to the CLI's subparsers."""
    events = commands.add_parser("events", help="tail the workers' events (workers need -E)")
    events.add_argument("app", metavar="MODULE:ATTRIBUTE", help="the App, e.g. tasks:app")
    events.add_argument("--json", action="store_true", help="one JSON object per event")
    events.add_argument(
        "--no-heartbeats", action="store_true", help="leave out worker-heartbeat events"
    )
    events.add_argument("--count", type=int, metavar="N", help="exit after N events")
    events.set_defaults(run=_events)


def _events(args: argparse.Namespace) -> int:
    out = sys.stdout
    colour = out.isatty()

    async def tail(app: App) -> int:
        seen = 0
        async with app.events.receive() as stream:
            print("Listening for events (workers send them with -E) ...", file=sys.stderr)
            async for event in stream:
                if args.no_heartbeats and event.type == "worker-heartbeat":
                    continue
                _print(out, event, as_json=args.json, colour=colour)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
        return 0

    try:
        return with_app(args, tail)
    except KeyboardInterrupt:
        return 0


def _print(out: TextIO, event: Event, *, as_json: bool, colour: bool) -> None:
    if as_json:
        line = {
            "type": event.type,
            "timestamp": event.timestamp,
            "hostname": event.hostname,
            "task_id": event.task_id,
            "task_name": event.task_name,
            **event.fields,
        }
        print(json.dumps(line, default=repr), file=out, flush=True)
    else:
        print(format_event(event, colour=colour), file=out, flush=True)


def format_event(event: Event, *, colour: bool = False) -> str:
    """Return one line for an event: time, host, type, task, and its fields as key=value."""
    when = dt.datetime.fromtimestamp(event.timestamp).strftime("%H:%M:%S.%f")[:-3]
    kind = event.type
    if colour:
        kind = f"{COLOURS.get(event.type, '')}{kind}{RESET}"
    task = f" {event.task_name}[{event.task_id}]" if event.task_id else ""
    fields = " ".join(f"{key}={_value(value)}" for key, value in event.fields.items())
    return f"{when} {event.hostname} {kind}{task} {fields}".rstrip()


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
