"""What the core needs of an app and of a task, so that it need not import either.

`App` and `Task` satisfy these protocols. The modules below them (`result`, `control`,
`sending`, `sync`, `runner`, `hooks`, events, tracing, metrics) are typed against them, so the
import graph runs one way: `app` -> `task` -> the rest.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Literal, NoReturn, Protocol, TypeVar

from .config import Settings
from .drivers.base import Broker, ResultBackend
from .options import TaskOptions

__all__ = ["AppLike", "RunnableTask", "TaskLike"]

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


class RunnableTask(TaskLike, Protocol):
    """What a worker needs of a registered task to run it (`Task` is one)."""

    @property
    def app(self) -> AppLike:
        """The app the task sends through."""
        ...

    @property
    def is_async(self) -> bool:
        """Whether the function is an `async def` (run on the loop, not in a thread)."""
        ...

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise `TypeError` if the task does not take these arguments."""
        ...

    def invoke(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Call the function with these arguments (a coroutine for an async task)."""
        ...

    def retry(
        self,
        exc: Exception | None = None,
        *,
        countdown: float | None = None,
        max_retries: int | Literal["default"] | None = "default",
    ) -> NoReturn:
        """Raise `Retry` (or `exc` once retries are spent)."""
        ...

    def backoff(self, retries: int) -> float:
        """Return the countdown before retry number `retries + 1` under `autoretry_for`."""
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
