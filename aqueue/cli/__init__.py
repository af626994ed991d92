"""The `aqueue` command: `aqueue worker tasks:app`, `check-config`, and the operator commands.

One module per command group, each adding its subcommands with `add_commands`: `worker`,
`beat` (`beat`, `beat APP list|add|remove|enable|disable|reset`), `config` (`check-config`),
`control` (`inspect`, `control`, `purge`, `result`, `call`), `dead` (`dead list|retry|purge`)
`events` (tails task events) and `dashboard` (the web dashboard). A new command goes in a
module of its own here.

Every error a user can cause (a bad app path, a bad setting, a bad argument) ends in one line
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .._version import __version__
from ..exceptions import AqueueError
from . import beat, config, control, dashboard, dead, events, worker
from .common import Parser

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="aqueue", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aqueue {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (worker, beat, config, control, dead, events, dashboard):
        module.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        command: Callable[[argparse.Namespace], int] = args.run
        return command(args)
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
