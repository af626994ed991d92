"""Checking the command line as users meet it: one-line errors, app modules, logging restored.

`write_module` and `restore_logging` are fixtures (registered in tests/conftest.py).
"""

from __future__ import annotations

import logging
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

WriteModule = Callable[[str], str]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Write a module into tmp_path (the current directory) under a fresh name; return the name.

    Fresh names keep `sys.modules` from handing one test another test's module; each is
    forgotten again afterwards.
    """
    monkeypatch.chdir(tmp_path)
    names: list[str] = []

    def write(source: str) -> str:
        name = f"mod_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`aqueue worker` reconfigures the root logger; put it back as pytest had it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def error_lines(stderr: str) -> list[str]:
    """The non-blank lines of `stderr`."""
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    """Check that `stderr` is one `aqueue: error:` line holding `fragments`; return it."""
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("aqueue: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
