"""What the CLI's commands share: the parser that redacts, loading an app, asking first."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

import anyio

from ..app import App
from ..loader import load_app
from ..urls import redact_text

__all__ = ["Parser", "confirm", "with_app"]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors never echo a URL's password (its subparsers too)."""

    def error(self, message: str) -> NoReturn:
        """Print the usage and the error, passwords redacted, and exit with code 2."""
        super().error(redact_text(message))


def with_app(args: argparse.Namespace, body: Callable[[App], Awaitable[int]]) -> int:
    """Load `args.app`, open it, and run `body(app)` in an event loop; return its exit code."""
    app = load_app(args.app)

    async def run() -> int:
        async with app:
            return await body(app)

    return anyio.run(run)


def confirm(question: str) -> bool:
    """Ask a yes/no question on a terminal; False without one (a script must say --yes)."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False
