"""The examples run as the README says: `python examples/quickstart.py` from the checkout."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_quickstart(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("AQUEUE_BROKER_URL", None)
    env.pop("AQUEUE_RESULT_BACKEND", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def test_quickstart_runs_a_worker_and_a_producer(tmp_path: Path) -> None:
    done = run_quickstart(tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    assert "add(4, 4) = 8" in out
    checksum = hashlib.sha256((EXAMPLES / "quickstart.py").read_bytes()).hexdigest()
    assert f"checksum(quickstart.py) = {checksum[:16]}..." in out
    assert "divide(1, 0) raised ZeroDivisionError" in out
    assert "100 x add(i, i), fanned out and gathered: sum = 9900" in out
    assert "WRONG" not in out
    assert ".> transport:   sqlite:///aqueue.db" in out  # the worker's banner: the default
    assert "worker stopped (exit code 0)" in out
    assert "] Task tasks.add[" in out  # the worker's Celery-style log
    assert "] received" in out
    assert out.rstrip().endswith("all done")
    assert "Traceback" not in done.stderr
    # The SQLite file went to a temporary directory, not here and not into examples/.
    assert os.listdir(tmp_path) == []
    assert not [name for name in os.listdir(EXAMPLES) if ".db" in name]


@pytest.fixture
def example_tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    """examples/tasks.py imported in this process, under a private name."""
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("examples_tasks", EXAMPLES / "tasks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_example_tasks_are_plain_functions_too(example_tasks: ModuleType) -> None:
    app = example_tasks.app
    assert app.broker_url == "sqlite:///aqueue.db"  # the README's point: nothing to configure
    assert sorted(name.rsplit(".", 1)[1] for name in app.tasks) == [
        "add",
        "checksum",
        "divide",
        "whoami",
    ]
    assert await example_tasks.add(4, 4) == 8
    path = EXAMPLES / "tasks.py"
    assert example_tasks.checksum(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert example_tasks.add.is_async
    assert not example_tasks.checksum.is_async
