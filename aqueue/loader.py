"""Finding the app a command line names: `module:attribute`, as `aqueue worker tasks:app`."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from .app import App
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
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise ConfigurationError(
                    f"no module named {module_name!r} (looked in the current directory and "
                    "sys.path); check the spelling, or cd to the project first"
                ) from None
            raise ConfigurationError(f"importing {module_name!r} failed: {exc}") from None
        except Exception as exc:
            raise ConfigurationError(
                f"importing {module_name!r} raised {type(exc).__name__}: {exc}"
            ) from None


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
        made = obj()
        if isinstance(made, App):
            return made
        raise ConfigurationError(f"{where}() returned {type(made).__name__}, not an aqueue App")
    raise ConfigurationError(f"{where} is a {type(obj).__name__}, not an aqueue App")
