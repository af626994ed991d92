"""Which event loop each async test runs on: `--loop asyncio|uvloop|all`.

By default (CI), a module marked `pytestmark = pytest.mark.both_loops` runs each async test
twice, on the stock asyncio loop and on uvloop (test ids end in `[asyncio]` / `[uvloop]`);
every other test runs on asyncio. `--loop asyncio` or `--loop uvloop` runs every async test on
that loop alone, `--loop all` every async test on both.

The loops come through pytest-asyncio's `pytest_asyncio_loop_factories` hook (pytest-asyncio
>= 1.4): each test gets a fresh loop from the factory, as `asyncio.Runner(loop_factory=...)`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import warnings
from collections.abc import Callable, Mapping

import pytest

__all__ = ["pytest_addoption", "pytest_asyncio_loop_factories", "pytest_configure"]

CHOICES = ("asyncio", "uvloop", "all")
MARKER = "both_loops"
MISSING = 'uvloop is not installed: pip install "aqueue-tasks[uvloop]"'

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--loop",
        choices=CHOICES,
        default=None,
        help=(
            "event loop(s) for async tests: asyncio, uvloop or all (both); default: "
            f"modules marked {MARKER} on both, the rest on asyncio"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--loop") == "uvloop" and not _have_uvloop():
        raise pytest.UsageError(f"--loop uvloop: {MISSING}")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    """The loops `item` runs on (one name: the test id does not change)."""
    choice = config.getoption("--loop")
    if choice is None:
        choice = "all" if item.get_closest_marker(MARKER) else "asyncio"
    factories: dict[str, LoopFactory] = {}
    if choice in ("asyncio", "all"):
        factories["asyncio"] = asyncio.new_event_loop
    if choice in ("uvloop", "all"):
        factories["uvloop"] = _uvloop_factory()
    return factories


def _have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def _uvloop_factory() -> LoopFactory:
    if _have_uvloop():
        import uvloop

        class Loop(uvloop.Loop):  # type: ignore[misc]
            """uvloop whose `close` cannot hang on a leaked transport.

            uvloop's `close` warns about each handle left open, then closes it, then runs
            until no handle is active. Under `filterwarnings = error` the warning is raised
            inside a callback that cannot raise: the handle is never closed, stays reading,
            and `close` waits for it forever. So the warnings are caught while it closes and
            raised afterwards: a leak still fails the test, and the run goes on.
            """

            def close(self) -> None:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    super().close()
                for each in caught:
                    warnings.warn_explicit(
                        each.message, each.category, each.filename, each.lineno, source=each.source
                    )

        return Loop
    return _skip_without_uvloop


def _skip_without_uvloop() -> asyncio.AbstractEventLoop:
    # Called as the test's loop is made: the test is skipped, or fails in CI.
    from tests.helpers.drivers import service_unavailable

    service_unavailable(MISSING)
    raise AssertionError("unreachable")  # pragma: no cover
