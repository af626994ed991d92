"""`aqueue beat MODULE:app`: run a beat; `... list|add|remove|enable|disable|reset`: edit it.

Several beats may run on one broker: each run is claimed, then sent once (aqueue/beat/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from typing import Any

import anyio

from ..app import App
from ..beat.entries import Entry
from ..beat.scheduler import Beat, describe_entries
from ..beat.schedules import parse_schedule
from ..exceptions import ConfigurationError
from ..loader import load_app
from ..logs import setup_logging
from ..urls import redact, secrets_in
from .common import with_app

__all__ = ["add_commands", "beat_banner"]

LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def add_commands(commands: Any) -> None:
    """Add `aqueue beat` and its edits to the CLI's subparsers."""
    beat = commands.add_parser("beat", help="send periodic tasks (or edit them at runtime)")
    beat.add_argument("app", metavar="MODULE:ATTRIBUTE", help="the App, e.g. tasks:app")
    beat.add_argument("-l", "--loglevel", default="INFO", type=str.upper, choices=LEVELS)
    beat.set_defaults(run=_run)
    edits = beat.add_subparsers(dest="action", metavar="ACTION")
    edits.add_parser("list", help="list the entries and where each comes from").set_defaults(
        run=_list
    )
    add = edits.add_parser("add", help="add (or replace) an entry")
    add.add_argument("name")
    add.add_argument("task", help="a registered task name")
    add.add_argument("schedule", help='seconds, or a cron string: "*/5 * * * *"')
    add.add_argument("--args", type=_json_list, default=[], help="JSON list")
    add.add_argument("--kwargs", type=_json_dict, default={}, help="JSON object")
    add.add_argument("--queue", help="the queue to send to")
    add.add_argument("--disabled", action="store_true", help="keep it, but do not send it yet")
    add.set_defaults(run=_add)
    for action, text in (
        ("remove", "remove an entry"),
        ("enable", "send an entry's runs again"),
        ("disable", "stop sending an entry's runs"),
        ("reset", "drop the runtime edit of an entry (back to beat_schedule)"),
    ):
        parser = edits.add_parser(action, help=text)
        parser.add_argument("name")
        parser.set_defaults(run=_edit)


def _json_list(text: str) -> list[Any]:
    value = _json(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON list")
    return value


def _json_dict(text: str) -> dict[str, Any]:
    value = _json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
    return value


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON") from None


def beat_banner(app: App, beat: Beat, app_path: str) -> str:
    """Return the lines a beat prints when it starts: the broker, each entry and its next run."""
    lines = [f"aqueue beat {app_path}", f"  broker: {redact(app.broker_url)}"]
    lines.append(f"  catch-up: {beat.catch_up}; time zone: {beat.tz}")
    nexts = beat.next_runs()
    if not beat.entries:
        lines.append("  entries: none yet (add some: aqueue beat APP add ...)")
    for line, (_, when) in zip(describe_entries(beat.entries), nexts.items(), strict=True):
        shown = "-" if when is None else dt.datetime.fromtimestamp(when, beat.tz).isoformat()
        lines.append(f"  {line}; next {shown}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    setup_logging(args.loglevel, [*secrets_in(app.broker_url), *secrets_in(app.backend_url or "")])

    async def serve() -> None:
        try:
            await app.open()
            beat = Beat(app)
            await beat.load()  # bad entries: a one-line error before the banner
            print(beat_banner(app, beat, args.app), flush=True)
            async with anyio.create_task_group() as group:
                group.start_soon(_stop_on_signal, group.cancel_scope)
                await beat.run()
        finally:
            with anyio.CancelScope(shield=True):
                await app.close()

    anyio.run(serve)
    return 0


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    import signal

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logging.getLogger("aqueue.beat").warning("%s: stopping", signal.Signals(signum).name)
            scope.cancel()
            return


def _line(entry: Entry) -> str:
    return describe_entries({entry.name: entry})[0]


def _list(args: argparse.Namespace) -> int:
    async def body(app: App) -> int:
        entries = await app.beat.list()
        for entry in entries:
            print(_line(entry))
        if not entries:
            print("no entries")
        return 0

    return with_app(args, body)


def _add(args: argparse.Namespace) -> int:
    schedule = parse_schedule(args.schedule)
    options = {"queue": args.queue} if args.queue else {}

    async def body(app: App) -> int:
        entry = await app.beat.add(
            args.name,
            args.task,
            schedule,
            args=args.args,
            kwargs=args.kwargs,
            options=options,
            enabled=not args.disabled,
        )
        print(f"added {_line(entry)}")
        return 0

    return with_app(args, body)


def _edit(args: argparse.Namespace) -> int:
    async def body(app: App) -> int:
        if args.action == "remove":
            await app.beat.remove(args.name)
            print(f"removed {args.name}")
        elif args.action == "reset":
            await app.beat.reset(args.name)
            print(f"reset {args.name} to its settings")
        elif args.action in ("enable", "disable"):
            entry = await (app.beat.enable if args.action == "enable" else app.beat.disable)(
                args.name
            )
            print(f"{args.action}d {_line(entry)}")
        else:  # pragma: no cover - argparse allows no other
            raise ConfigurationError(f"unknown action {args.action!r}")
        return 0

    return with_app(args, body)
