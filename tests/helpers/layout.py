"""The package's import graph, read from its source (imports in functions and TYPE_CHECKING too).

`tests/test_layout.py` checks it: no cycles, no driver importing another, the core importing no
driver, every module importable on its own.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import aqueue

PACKAGE = Path(aqueue.__file__).parent


def module_name(path: Path) -> str:
    """The dotted name of a module of the package, from its path."""
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


def driver_of(name: str) -> str | None:
    """The driver package a module belongs to (`redis` for aqueue.drivers.redis.x), else None."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[1] == "drivers":
        return parts[2] if (PACKAGE / "drivers" / parts[2]).is_dir() else None
    return None


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
