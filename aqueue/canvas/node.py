"""The base of every workflow: a tree of signatures that is data, frozen, then sent.

A workflow (a `Signature`, a `Chain`, a `Group` or a `Chord`) is built in the caller's process,
then *frozen*: every task in it gets its id, once, before anything is sent. The frozen tree
travels in messages as plain data (`to_data`, read back by `aqueue.canvas.data`), so every id
a worker sends a continuation with was fixed by the caller: a redelivered step sends the same
ids again, never a second, divergent workflow.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, Generic, Self, TypeVar

from .. import current
from ..interfaces import AppLike

__all__ = ["Workflow"]

R = TypeVar("R")


class Workflow(abc.ABC, Generic[R]):
    """A signature, chain, group or chord: send it with `await workflow.delay()`."""

    def __init__(self, app: AppLike | None) -> None:
        self._app = app

    @property
    def app(self) -> AppLike:
        """The app it is sent through: its tasks' app, else the current one."""
        return self._app if self._app is not None else current.current_app()

    @abc.abstractmethod
    def frozen(self) -> Self:
        """Return a copy whose every task has its id (ids already given are kept)."""

    @abc.abstractmethod
    def to_data(self) -> dict[str, Any]:
        """Return the workflow as plain data (what messages carry)."""

    @abc.abstractmethod
    def ids(self) -> list[str]:
        """Return every task id in the (frozen) workflow."""

    @abc.abstractmethod
    def handle(self, app: AppLike) -> Any:
        """Return the result handle of the (frozen) workflow."""

    @abc.abstractmethod
    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Self:
        """Return a copy, with `args` put before the first task's arguments (a partial)."""

    async def _send(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> Any:
        from .launch import launch  # launch imports every kind of workflow

        app = self.app
        frozen = self.frozen()
        await launch(app, frozen, tuple(args), kwargs or {})
        return frozen.handle(app)
