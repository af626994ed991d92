"""The event loop `aqueue worker` runs on: `auto`, `asyncio` or `uvloop`, as uvicorn's `--loop`.

`auto` (the default, the `worker_loop` setting) is uvloop when it is installed
(`pip install "aqueue-tasks[uvloop]"`) and the stock asyncio loop otherwise. aqueue works the
same on both; uvloop costs less CPU where tasks wait on timers and sockets
(`benchmarks/worker_cpu.py --loop` measures it). An app that runs its own loop (uvicorn,
`asyncio.run`) keeps it: this only chooses the loop of the `aqueue worker` command.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable
from types import ModuleType

from .exceptions import ConfigurationError

__all__ = ["LOOPS", "LoopFactory", "describe", "loop_factory", "resolve"]

#: The choices of `aqueue worker --loop` and of the `worker_loop` setting.
LOOPS = ("auto", "asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

INSTALL = 'pip install "aqueue-tasks[uvloop]"'


def resolve(name: str) -> str:
    """Return the loop `name` stands for, "asyncio" or "uvloop" (`auto`: uvloop if installed).

    Raises ConfigurationError for a name not in LOOPS, or for "uvloop" when it is not installed.
    """
    if name not in LOOPS:
        raise ConfigurationError(f"unknown event loop {name!r}; choose one of {', '.join(LOOPS)}")
    if name == "auto":
        return "asyncio" if _uvloop() is None else "uvloop"
    if name == "uvloop" and _uvloop() is None:
        raise ConfigurationError(f"the uvloop event loop is not installed: {INSTALL}")
    return name


def loop_factory(name: str) -> LoopFactory:
    """Return the factory of new loops for `name` (one of LOOPS), as `resolve` chooses it."""
    uvloop = _uvloop() if resolve(name) == "uvloop" else None
    if uvloop is not None:
        factory: LoopFactory = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def describe(loop: asyncio.AbstractEventLoop) -> str:
    """Name the loop that runs, for the banner: "uvloop 0.21.0" or "asyncio"."""
    if all(kind.__module__.partition(".")[0] != "uvloop" for kind in type(loop).__mro__):
        return "asyncio"  # neither a uvloop loop nor a subclass of one
    return f"uvloop {importlib.metadata.version('uvloop')}"


def _uvloop() -> ModuleType | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop
