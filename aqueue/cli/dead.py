"""`aqueue dead list|retry|purge`: the dead letters of a queue, for an operator.

    aqueue dead list tasks:app [-Q QUEUE] [--limit N]
    aqueue dead retry tasks:app (ID... | --all) [-Q QUEUE]
    aqueue dead purge tasks:app (ID... | --all) [-Q QUEUE] [--yes]

`list` shows each dead letter's id, when it was dead-lettered (UTC), its task (name and id, or
`?` when its body cannot be read) and its reason, oldest first, then what the queue keeps.
`retry` puts dead letters back on their queue (at priority 0, as never delivered); `purge`
deletes them, and asks first unless given `--yes`. The broker does the work
(`Broker.dead_letters`, `dead_letter_stats`, `retry_dead_letters`, `purge_dead_letters`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from ..app import App
from ..drivers.base import DeadLetter, DeadLetterStats
from ..exceptions import ConfigurationError
from ..message import Envelope, InvalidMessage
from ..signing import payload_of
from .common import confirm, with_app

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    """Add `aqueue dead` and its actions to the CLI's subparsers."""
    dead = commands.add_parser("dead", help="list, retry or purge dead letters")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show the dead letters of a queue, oldest first")
    _app_and_queue(listing)
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.set_defaults(run=_list)
    retry = actions.add_parser("retry", help="put dead letters back on their queue")
    _app_and_queue(retry)
    _ids(retry)
    retry.set_defaults(run=_retry)
    purge = actions.add_parser("purge", help="delete dead letters")
    _app_and_queue(purge)
    _ids(purge)
    purge.add_argument("-y", "--yes", action="store_true", help="do not ask first")
    purge.set_defaults(run=_purge)


def _app_and_queue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", metavar="MODULE:ATTRIBUTE")
    parser.add_argument("-Q", "--queue", help="the queue (default: the app's default queue)")


def _ids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID", help="dead letters, as `list` shows")
    parser.add_argument("--all", action="store_true", help="every dead letter of the queue")


def _queue(args: argparse.Namespace, app: App) -> str:
    return str(args.queue or app.conf.task_default_queue)


def _chosen(args: argparse.Namespace, doing: str) -> list[str] | None:
    """Return the ids named, or None for --all (one of them, never both)."""
    if args.all and args.ids:
        raise ConfigurationError(f"name dead letters to {doing}, or pass --all; not both")
    if not args.all and not args.ids:
        raise ConfigurationError(
            f"name the dead letters to {doing} (see `aqueue dead list`), or pass --all"
        )
    return None if args.all else list(args.ids)


def _list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigurationError(f"--limit must be at least 1, not {args.limit}")

    async def body(app: App) -> int:
        broker = await app.broker()
        queue = _queue(args, app)
        letters = await broker.dead_letters(queue, limit=args.limit)
        stats = await broker.dead_letter_stats(queue)
        if letters:
            print(f"{'ID':<24} {'TIME (UTC)':<19}  {'TASK':<50} REASON")
        for letter in letters:
            when = dt.datetime.fromtimestamp(letter.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{letter.id:<24} {when:<19}  {_task(letter):<50} {_reason(letter)}")
        print(_summary(queue, stats, len(letters)))
        return 0

    return with_app(args, body)


def _task(letter: DeadLetter) -> str:
    try:
        envelope = Envelope.decode(payload_of(letter.body))
    except InvalidMessage:
        return "?"
    return f"{envelope.task}[{envelope.id}]"


def _reason(letter: DeadLetter, width: int = 120) -> str:
    text = f"{letter.reason}: {letter.detail}" if letter.detail else letter.reason
    text = " ".join(text.split())  # one line, whatever the detail holds
    return text if len(text) <= width else f"{text[: width - 3]}..."


def _summary(queue: str, stats: DeadLetterStats, shown: int) -> str:
    if not stats.kept:
        return f"{queue}: no dead letters"
    parts = [f"{queue}: {stats.kept:,} dead letter(s)"]
    if stats.bytes is not None:
        parts.append(f"{stats.bytes:,} bytes")
    if stats.dropped:
        parts.append(f"{stats.dropped:,} older one(s) dropped over broker_dead_letter_max_bytes")
    more = f" (showing the oldest {shown:,}; --limit shows more)" if shown < stats.kept else ""
    return ", ".join(parts) + more


def _retry(args: argparse.Namespace) -> int:
    ids = _chosen(args, "retry")

    async def body(app: App) -> int:
        queue = _queue(args, app)
        count = await (await app.broker()).retry_dead_letters(queue, ids)
        print(f"{queue}: {count} dead letter(s) sent back")
        return _all_found(queue, ids, count)

    return with_app(args, body)


def _all_found(queue: str, ids: list[str] | None, count: int) -> int:
    """Exit code 1 (and say so) when some of the ids named matched no dead letter."""
    missing = 0 if ids is None else len(set(ids)) - count
    if missing > 0:
        print(
            f"aqueue: {missing} of the ids named matched no dead letter of {queue}", file=sys.stderr
        )
        return 1
    return 0


def _purge(args: argparse.Namespace) -> int:
    ids = _chosen(args, "purge")
    what = "every dead letter" if ids is None else f"{len(ids)} dead letter(s)"
    if not args.yes and not confirm(f"Delete {what} of {args.queue or 'the default queue'}?"):
        raise ConfigurationError("nothing purged; pass --yes to purge without being asked")

    async def body(app: App) -> int:
        queue = _queue(args, app)
        count = await (await app.broker()).purge_dead_letters(queue, ids)
        print(f"{queue}: {count} dead letter(s) deleted")
        return _all_found(queue, ids, count)

    return with_app(args, body)
