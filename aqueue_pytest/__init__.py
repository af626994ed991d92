"""aqueue's pytest plugin, registered by the `pytest11` entry point: `aqueue_worker`.

A module apart from `aqueue`, so that pytest loading it imports nothing of aqueue before
coverage starts; see `aqueue.testing` for what the fixtures give.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from aqueue import App
    from aqueue.testing import InProcessWorker

__all__ = ["aqueue_app", "aqueue_worker"]


@pytest.fixture
def aqueue_app() -> App:
    """Return the app the worker fixture runs: the current app; override it in a conftest."""
    from aqueue import current_app

    return current_app()


@pytest.fixture
def aqueue_worker(aqueue_app: App) -> Iterator[InProcessWorker]:
    """Run an in-process worker for `aqueue_app` during the test; `join()` drains it."""
    from aqueue.testing import InProcessWorker

    worker = InProcessWorker(aqueue_app)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
