"""What tasks, results and the control plane need of an app, so that they need not import it.

`App` satisfies these protocols; `task`, `result`, `control`, `sending` and `current` are typed
against them, and the import graph has no cycle through `app`.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from .config import Settings
from .drivers.base import Broker, ResultBackend
from .options import TaskOptions

__all__ = ["AppLike", "TaskLike"]

T = TypeVar("T")


class TaskLike(Protocol):
    """What sending needs of a registered task."""

    @property
    def name(self) -> str:
        """The task's registered name."""
        ...

    @property
    def options(self) -> TaskOptions:
        """The task's options in force."""
        ...

    @property
    def ignore_result(self) -> bool:
        """Whether workers store no result for the task."""
        ...


class AppLike(Protocol):
    """What tasks, results and the control plane use of an `App`."""

    main: str | None
    conf: Settings

    @property
    def tasks(self) -> Mapping[str, TaskLike]:
        """The registered tasks, by name."""
        ...

    def get_task(self, name: str) -> TaskLike:
        """Return the task registered as `name`, or raise `NotRegistered`."""
        ...

    def add_task(self, task: Any) -> Any:
        """Register a task object made elsewhere (a shared task)."""
        ...

    def connected(self) -> tuple[Broker, ResultBackend | None] | None:
        """Return the broker and the result backend if the app is open now, else None."""
        ...

    async def broker(self) -> Broker:
        """Return the open broker, opening the app first if needed."""
        ...

    async def result_backend(self) -> ResultBackend | None:
        """Return the open result backend (None when results are disabled)."""
        ...

    def run_blocking(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the app's I/O thread and wait for it (the sync API)."""
        ...

    def send_blocking(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Send task `name` from the app's I/O thread and wait for its result handle."""
        ...

    def stop_io_thread(self) -> None:
        """Close the I/O thread's connections and stop it; blocking."""
        ...
