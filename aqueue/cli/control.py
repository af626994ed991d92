"""The control plane's commands: `aqueue inspect`, `control`, `purge`, `result` and `call`.

    aqueue inspect tasks:app [-d HOST,...] [--timeout S] ping|active|scheduled|registered|stats
    aqueue inspect tasks:app scheduled [-Q QUEUE,...] [--limit N]   (workers' and the broker's)
    aqueue inspect tasks:app queues [-Q QUEUE,...]
    aqueue control tasks:app rate_limit tasks.add 10/m
    aqueue control tasks:app [-d HOST,...] revoke TASK_ID [--terminate]
    aqueue control tasks:app [-d HOST,...] shutdown
    aqueue purge tasks:app [-Q QUEUE,...] [--force]
    aqueue result tasks:app TASK_ID
    aqueue call tasks:app tasks.add --args '[4, 4]' [--kwargs '{}'] [--queue Q] [--countdown S]

Bad input (an unknown task, a malformed rate, a worker that does not answer) is one line on
stderr and a non-zero exit code, as everywhere in the CLI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from .. import states
from ..app import App
from ..control import require_replies
from ..exceptions import ConfigurationError
from ..loader import load_app
from .common import confirm, with_app

__all__ = ["add_commands"]

INSPECT = ("ping", "active", "scheduled", "registered", "stats", "queues")


def add_commands(commands: Any) -> None:
    """Add the operator commands to the CLI's subparsers."""
    inspect = commands.add_parser("inspect", help="ask live workers a question")
    _app_and_targets(inspect)
    inspect.add_argument("what", choices=INSPECT)
    inspect.add_argument(
        "-Q",
        "--queues",
        help="queues, scheduled: comma-separated queues (queues: default all known; "
        "scheduled: default the default queue)",
    )
    inspect.add_argument("--limit", type=int, default=100, help="scheduled: at most this many")
    inspect.set_defaults(run=_inspect)

    control = commands.add_parser("control", help="change live workers")
    _app_and_targets(control)
    actions = control.add_subparsers(dest="action", required=True, metavar="ACTION")
    rate = actions.add_parser("rate_limit", help="set a task's rate limit (e.g. 10/m; 0: none)")
    rate.add_argument("task")
    rate.add_argument("rate")
    revoke = actions.add_parser("revoke", help="stop a task from running")
    revoke.add_argument("task_id")
    revoke.add_argument("--terminate", action="store_true", help="cancel it if it runs now")
    actions.add_parser("shutdown", help="warm shutdown of workers")
    control.set_defaults(run=_control)

    purge = commands.add_parser("purge", help="delete the waiting messages of queues")
    purge.add_argument("app", metavar="MODULE:ATTRIBUTE")
    purge.add_argument("-Q", "--queues", help="comma-separated queues (default: the default)")
    purge.add_argument("-f", "--force", action="store_true", help="do not ask first")
    purge.set_defaults(run=_purge)

    result = commands.add_parser("result", help="show a task's state and result")
    result.add_argument("app", metavar="MODULE:ATTRIBUTE")
    result.add_argument("task_id")
    result.set_defaults(run=_result)

    call = commands.add_parser("call", help="send a task by name")
    call.add_argument("app", metavar="MODULE:ATTRIBUTE")
    call.add_argument("task")
    call.add_argument("--args", default="[]", help="a JSON list of positional arguments")
    call.add_argument("--kwargs", default="{}", help="a JSON object of keyword arguments")
    call.add_argument("--queue")
    call.add_argument("--countdown", type=float)
    call.set_defaults(run=_call)


def _app_and_targets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", metavar="MODULE:ATTRIBUTE")
    parser.add_argument("-d", "--destination", help="comma-separated worker hostnames")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for replies")


def _destination(args: argparse.Namespace) -> list[str] | None:
    if not args.destination:
        return None
    return [name.strip() for name in args.destination.split(",") if name.strip()]


def _print(value: Any) -> None:
    print(value if isinstance(value, str) else json.dumps(value, indent=2, default=repr))


def _inspect(args: argparse.Namespace) -> int:
    destination = _destination(args)
    if args.what == "queues":
        return _inspect_queues(args, destination)

    async def body(app: App) -> int:
        inspector = app.control.inspect(destination=destination, timeout=args.timeout)
        answers: dict[str, Any] = await getattr(inspector, args.what)()
        if args.what == "scheduled" and not destination:
            await _print_delayed(app, _queues(args, app), args.limit)
            if not answers:
                print("(no worker replied, so none holds tasks for later)")
                return 0
        if not answers:
            require_replies([], destination, args.timeout)
        missing = sorted(set(destination or ()) - set(answers))
        if missing:
            require_replies([], missing, args.timeout)
        for hostname, answer in sorted(answers.items()):
            print(f"{hostname}:", end=" " if isinstance(answer, str) else "\n")
            _print(answer)
        return 0

    return with_app(args, body)


def _queues(args: argparse.Namespace, app: App) -> list[str]:
    named = [q.strip() for q in (args.queues or "").split(",") if q.strip()]
    return named or [app.conf.task_default_queue]


async def _print_delayed(app: App, queues: list[str], limit: int) -> None:
    """Print what the broker holds until it is due (countdown, ETA, retries), per queue."""
    for queue in queues:
        delayed = await app.control.delayed(queue, limit)
        print(f"{queue} (in the broker, not due yet): {len(delayed)}")
        for each in delayed:
            each["due"] = dt.datetime.fromtimestamp(each["due"], dt.UTC).isoformat()
        if delayed:
            _print(delayed)


def _inspect_queues(args: argparse.Namespace, destination: list[str] | None) -> int:
    """Print one line per queue: its counts and how many workers consume it."""
    names = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None

    async def body(app: App) -> int:
        found = await app.control.queues(names, destination=destination, timeout=args.timeout)
        columns = ("waiting", "delayed", "running", "dead", "consumers")
        width = max([5, *(len(name) for name in found)])
        print(f"{'queue':<{width}}  " + "  ".join(f"{c:>9}" for c in columns))
        for name, counts in found.items():
            cells = ("-" if counts[c] is None else str(counts[c]) for c in columns)
            print(f"{name:<{width}}  " + "  ".join(f"{cell:>9}" for cell in cells))
        return 0

    return with_app(args, body)


def _control(args: argparse.Namespace) -> int:
    destination = _destination(args)

    async def body(app: App) -> int:
        control = app.control
        if args.action == "rate_limit":
            replies = await control.rate_limit(
                args.task, args.rate, destination=destination, timeout=args.timeout
            )
        elif args.action == "revoke":
            replies = await control.revoke(
                args.task_id,
                destination=destination,
                terminate=args.terminate,
                timeout=args.timeout,
            )
        else:
            replies = await control.shutdown(destination=destination, timeout=args.timeout)
        require_replies(replies, destination, args.timeout)
        failed = [reply for reply in replies if not reply.ok]
        for reply in sorted(replies, key=lambda reply: reply.hostname):
            print(f"{reply.hostname}: {reply.result if reply.ok else 'error: ' + str(reply.error)}")
        return 1 if failed else 0

    return with_app(args, body)


def _purge(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    queues = [q.strip() for q in (args.queues or "").split(",") if q.strip()] or [
        app.conf.task_default_queue
    ]
    if not args.force and not confirm(f"Delete every waiting message of {', '.join(queues)}?"):
        raise ConfigurationError("nothing purged; pass --force to purge without being asked")

    async def body(app: App) -> int:
        broker = await app.broker()
        for queue in queues:
            print(f"{queue}: {await broker.purge(queue)} message(s) deleted")
        return 0

    return with_app(args, body)


def _result(args: argparse.Namespace) -> int:
    async def body(app: App) -> int:
        result = app.AsyncResult(args.task_id)
        state = await result.state()
        print(f"state: {state}")
        if state == states.SUCCESS:
            _print(await result.get(timeout=1))
        elif state in (states.FAILURE, states.RETRY):
            print((await result.traceback() or "").rstrip())
        elif state == states.REVOKED:
            print(await result.get(timeout=1, propagate=False))
        return 0

    return with_app(args, body)


def _call(args: argparse.Namespace) -> int:
    positional, keywords = _json(args.args, list, "--args"), _json(args.kwargs, dict, "--kwargs")

    async def body(app: App) -> int:
        task = app.get_task(args.task)
        result = await task.apply_async(
            positional, keywords, queue=args.queue, countdown=args.countdown
        )
        print(result.id)
        return 0

    return with_app(args, body)


def _json(text: str, kind: type, option: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{option} is not JSON: {exc.msg}") from None
    if not isinstance(value, kind):
        raise ConfigurationError(f"{option} must be a JSON {kind.__name__}, not {text!r}")
    return value
