"""Finding the app a command line names: `module:attribute`, as `aqueue worker tasks:app`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from .app import App
from .config import first_line, import_module
from .exceptions import ConfigurationError

__all__ = ["import_from_cwd", "load_app"]


@contextlib.contextmanager
def import_from_cwd() -> Iterator[None]:
    """Make the current directory importable for the duration, then restore `sys.path`."""
    saved = list(sys.path)
    sys.path.insert(0, os.getcwd())
    try:
        yield
    finally:
        sys.path[:] = saved


def _import(module_name: str) -> Any:
    with import_from_cwd():
        return import_module(module_name)


def load_app(path: str) -> App:
    """Return the `App` at `path` ("module:attr", or "module" holding `app`); call a factory."""
    module_name, _, attr = path.partition(":")
    if not module_name or path.count(":") > 1:
        raise ConfigurationError(f"{path!r} is not an app path; write it as module:attribute")
    module = _import(module_name)
    names = [attr] if attr else ["app", "aqueue"]
    for name in names:
        if hasattr(module, name):
            return _as_app(getattr(module, name), f"{module_name}:{name}")
    if attr:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}")
    raise ConfigurationError(
        f"module {module_name!r} has no 'app'; name the App: aqueue worker {module_name}:NAME"
    )


def _as_app(obj: Any, where: str) -> App:
    if isinstance(obj, App):
        return obj
    if callable(obj):
        try:
            made = obj()
        except Exception as exc:
            raise ConfigurationError(
                f"{where}() raised {type(exc).__name__}: {first_line(exc)}"
            ) from None
        if isinstance(made, App):
            return made
        raise ConfigurationError(f"{where}() returned {type(made).__name__}, not an aqueue App")
    raise ConfigurationError(f"{where} is a {type(obj).__name__}, not an aqueue App")
