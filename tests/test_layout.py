"""The package's layout: no import cycles, no driver code outside `aqueue.drivers`, no driver
importing another, and every module importable on its own."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

import aqueue

PACKAGE = Path(aqueue.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The aqueue modules `name` imports anywhere (functions and TYPE_CHECKING blocks too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    found.add(f"{target}.{alias.name}")
                elif target in MODULES:
                    found.add(target)
    found |= {parent for target in found for parent in packages_run(target, name)}
    found.discard(name)
    return found


def packages_run(target: str, importer: str) -> set[str]:
    """The packages whose `__init__` importing `target` runs first, for a module `importer`.

    Importing `aqueue.worker.runner` runs `aqueue/worker/__init__.py`: that counts as an import,
    except for the packages `importer` itself sits in (Python is importing those already).
    """
    parts = target.split(".")
    parents = {".".join(parts[:end]) for end in range(2, len(parts))}
    return {
        parent
        for parent in parents
        if parent in MODULES and not (importer == parent or importer.startswith(parent + "."))
    }


def cycles() -> list[str]:
    """One import cycle among aqueue's modules, or [] when there is none."""
    sorter = graphlib.TopologicalSorter({name: imports_of(name) for name in MODULES})
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        cycle: list[str] = error.args[1]
        return cycle
    return []


def test_no_import_cycles() -> None:
    assert cycles() == []


def driver_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) >= 3 and parts[1] == "drivers":
        return parts[2] if (PACKAGE / "drivers" / parts[2]).is_dir() else None
    return None


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


#: Modules of Django apps that Django imports only once its app registry is ready.
DJANGO_PARTS = ("models", "admin", "migrations", "management")
DJANGO_SETUP = (
    "import django; from django.conf import settings; settings.configure(INSTALLED_APPS=["
    "'django.contrib.admin', 'django.contrib.auth', 'django.contrib.contenttypes', "
    "'django.contrib.messages', 'django.contrib.sessions', 'aqueue.contrib.django', "
    "'aqueue.contrib.django.beat']); "
    "django.setup(); "
)


def needs_django_ready(name: str) -> bool:
    """Whether `name` is a module Django imports only once its app registry is ready."""
    parts = name.split(".")
    return name.startswith("aqueue.contrib.django.") and any(p in DJANGO_PARTS for p in parts)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_imports_on_its_own(name: str) -> None:
    code = f"import importlib; importlib.import_module({name!r})"  # 0001_initial: no identifier
    if needs_django_ready(name):
        code = DJANGO_SETUP + code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
