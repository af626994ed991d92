"""Finding an app's task modules: `autodiscover_tasks()` and the `imports`/`include` settings.

As in Celery, discovery is lazy: `app.autodiscover_tasks()` notes what to import, and the app
imports it when it is finalized, on first use of its task registry (`app.tasks`, which a worker
reads as it starts, and `delay()` as it sends) or when a worker starts. Without a list of
packages, the packages come from the app's package sources: a framework's installed apps
(`aqueue.contrib.django` gives Django's, once Django is ready; until then discovery waits).
Finalizing is idempotent and thread-safe; a task module that uses the registry while it is
imported does not start it again.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

from .config import Settings, import_module
from .exceptions import ConfigurationError

__all__ = ["Discovery", "PackageSource", "package_of"]

#: Returns the packages to look in (a framework's installed apps), or None when not ready yet.
PackageSource = Callable[[], Sequence[str] | None]


class Discovery:
    """The modules an app still has to import, and the lock that imports them once."""

    def __init__(self) -> None:
        #: Where `autodiscover_tasks()` without packages looks (see `aqueue.fixups`).
        self.package_sources: list[PackageSource] = []
        self._pending: list[tuple[tuple[str, ...] | None, str]] = []
        self._imported_settings = False
        self._lock = threading.RLock()
        self._busy = False
        self.finalized = False

    def add(self, packages: Iterable[str] | None, related_name: str) -> None:
        """Note packages (None: the installed apps) whose `related_name` module to import."""
        if packages is None and not self.package_sources:
            raise ConfigurationError(
                "autodiscover_tasks() without packages needs Django "
                "(set DJANGO_SETTINGS_MODULE before creating the App), or name the "
                'packages: app.autodiscover_tasks(["app1", "app2"])'
            )
        with self._lock:
            self._pending.append((None if packages is None else tuple(packages), related_name))
            self.finalized = False

    def finalize(self, conf: Settings) -> None:
        """Import what is pending: `imports`, `include`, then the discovered task modules.

        Nothing, until the package sources are ready (Django's app registry).
        """
        if self.finalized:
            return
        with self._lock:
            if self.finalized or self._busy:  # done meanwhile, or a module imported now asks
                return
            if self.package_sources and self._installed() is None:
                return  # a framework not ready yet (Django): its modules may need it
            self._busy = True
            try:
                if not self._imported_settings:
                    for name in (*conf.imports, *conf.include):
                        import_module(name)
                    self._imported_settings = True
                self._pending = [entry for entry in self._pending if not self._discover(*entry)]
                self.finalized = not self._pending
            finally:
                self._busy = False

    def _discover(self, packages: tuple[str, ...] | None, related_name: str) -> bool:
        """Import the task modules of `packages`; False if their list is not ready yet."""
        names = packages if packages is not None else self._installed()
        if names is None:
            return False
        for entry in names:
            import_related(package_of(entry), related_name)
        return True

    def _installed(self) -> Sequence[str] | None:
        found: list[str] = []
        for source in self.package_sources:
            packages = source()
            if packages is None:
                return None
            found.extend(packages)
        return found


def package_of(entry: str) -> str:
    """Return the package an installed-apps entry names: itself, or an app config's `name`.

    `"polls.apps.PollsConfig"` names a class whose `name` is the package (`"polls"`).
    """
    try:
        importlib.import_module(entry)
    except ModuleNotFoundError as exc:
        module_name, _, attr = entry.rpartition(".")
        if not module_name or exc.name != entry:
            raise
        config: Any = getattr(_module(module_name), attr, None)
        name = getattr(config, "name", None)
        if not isinstance(name, str):
            raise ConfigurationError(
                f"{entry!r} is neither a package nor an app config with a `name`"
            ) from None
        return name
    return entry


def _module(name: str) -> ModuleType:
    return import_module(name)


def import_related(package: str, related_name: str) -> None:
    """Import `<package>.<related_name>` if there is one (as Celery does)."""
    name = f"{package}.{related_name}"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
