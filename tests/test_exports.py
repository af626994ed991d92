"""The public API: `aqueue.__all__` is sorted, complete, and names only what exists."""

from __future__ import annotations
import __future__

import types

import aqueue
from tests.helpers.layout import needs_django_ready

#: Private-looking names that are public API all the same.
PUBLIC_DUNDERS = {"__version__"}


def public_names() -> set[str]:
    names = set()
    for name, value in vars(aqueue).items():
        if name.startswith("_") and name not in PUBLIC_DUNDERS:
            continue
        if isinstance(value, __future__._Feature):
            continue  # `from __future__ import annotations` binds a name; it is not API
        if isinstance(value, types.ModuleType) and name not in aqueue.__all__:
            continue  # submodules appear as attributes once imported; importing them is fine
        names.add(name)
    return names


def test_all_is_sorted_and_unique() -> None:
    assert aqueue.__all__ == sorted(aqueue.__all__)
    assert len(set(aqueue.__all__)) == len(aqueue.__all__)


def test_every_name_in_all_exists() -> None:
    missing = [name for name in aqueue.__all__ if not hasattr(aqueue, name)]
    assert missing == []


def test_every_public_name_is_in_all() -> None:
    assert sorted(public_names()) == aqueue.__all__


def test_exported_members_come_from_aqueue() -> None:
    for name in aqueue.__all__:
        value = getattr(aqueue, name)
        if isinstance(value, str):
            continue  # __version__
        module = value.__name__ if isinstance(value, types.ModuleType) else value.__module__
        assert module.split(".")[0] == "aqueue", (name, module)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from aqueue import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == aqueue.__all__


def test_version_is_a_string() -> None:
    assert isinstance(aqueue.__version__, str)
    assert aqueue.__version__.count(".") >= 1


def test_every_public_error_lives_in_exceptions_and_is_exported() -> None:
    import importlib
    import pkgutil

    import aqueue.exceptions

    stray = []
    for info in pkgutil.walk_packages(aqueue.__path__, "aqueue."):
        if info.name.endswith("__main__") or needs_django_ready(info.name):
            continue  # a Django app's models and admin need a configured Django
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, aqueue.AqueueError)
                and not name.startswith("_")
                and value.__module__ == info.name
                and info.name != "aqueue.exceptions"
            ):
                stray.append(f"{info.name}.{name}")
    assert stray == []
    errors = [
        name
        for name, value in vars(aqueue.exceptions).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == "aqueue.exceptions"
    ]
    assert sorted(errors) == sorted(aqueue.exceptions.__all__)
    assert set(errors) <= set(aqueue.__all__)
