"""The package's layout: no import cycles, no driver code outside `aqueue.drivers`, no driver
importing another, and every module importable on its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.layout import (
    DJANGO_SETUP,
    MODULES,
    PACKAGE,
    cycles,
    driver_of,
    imports_of,
    needs_django_ready,
)


def test_no_import_cycles() -> None:
    assert cycles() == []


def test_no_driver_imports_another_driver() -> None:
    crossings = [
        (name, imported)
        for name in MODULES
        if driver_of(name)
        for imported in imports_of(name)
        if driver_of(imported) not in (None, driver_of(name))
    ]
    assert crossings == []


def test_the_core_imports_no_driver() -> None:
    # Drivers are found through the scheme registry, never imported by the core by name.
    leaks = [
        (name, imported)
        for name in MODULES
        if not name.startswith("aqueue.drivers") and not name.startswith("aqueue.contrib")
        for imported in imports_of(name)
        if driver_of(imported)
    ]
    assert leaks == []


def test_no_driver_module_at_the_top_level() -> None:
    names = {path.stem for path in PACKAGE.glob("*.py")}
    assert not {n for n in names if n.lstrip("_").startswith(("redis", "amqp", "sqlite", "resp"))}
    assert not (PACKAGE / "brokers").exists()
    assert not (PACKAGE / "backends").exists()


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_imports_on_its_own(name: str) -> None:
    code = f"import importlib; importlib.import_module({name!r})"  # 0001_initial: no identifier
    if needs_django_ready(name):
        code = DJANGO_SETUP + code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
