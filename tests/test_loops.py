"""The event loops: `aqueue worker --loop auto|asyncio|uvloop`, `worker_loop`, and the tests' own
`--loop` option (tests/helpers/loops.py) that runs the driver suites on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import sys
from pathlib import Path

import anyio
import pytest

import aqueue
from aqueue import App, Settings
from aqueue.exceptions import ConfigurationError
from aqueue.loader import load_app
from aqueue.loops import LOOPS, describe, loop_factory, resolve
from tests.helpers.cli import WriteModule, assert_one_error_line

pytestmark = pytest.mark.usefixtures("restore_logging")  # the worker sets up logging

uvloop = pytest.importorskip("uvloop", reason="uvloop is in the test extra")

INSTALL = 'pip install "aqueue-tasks[uvloop]"'


@pytest.fixture
def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import uvloop` fail, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


# -- aqueue.loops -------------------------------------------------------------------------------


def test_auto_is_uvloop_when_installed() -> None:
    assert resolve("auto") == "uvloop"
    assert resolve("uvloop") == "uvloop"
    assert resolve("asyncio") == "asyncio"


@pytest.mark.usefixtures("without_uvloop")
def test_auto_is_asyncio_without_uvloop() -> None:
    assert resolve("auto") == "asyncio"
    assert resolve("asyncio") == "asyncio"
    assert loop_factory("auto") is asyncio.new_event_loop


@pytest.mark.usefixtures("without_uvloop")
def test_uvloop_without_uvloop_says_what_to_install() -> None:
    with pytest.raises(ConfigurationError) as info:
        loop_factory("uvloop")
    assert str(info.value) == f"the uvloop event loop is not installed: {INSTALL}"


def test_unknown_loop_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^unknown event loop 'trio'; choose one of auto"):
        resolve("trio")


@pytest.mark.parametrize(
    ("name", "shown"),
    [("auto", "uvloop "), ("uvloop", "uvloop "), ("asyncio", "asyncio")],
)
def test_factories_make_the_loop_named(name: str, shown: str) -> None:
    loop = loop_factory(name)()
    try:
        assert describe(loop).startswith(shown)
        assert isinstance(loop, uvloop.Loop) == (shown != "asyncio")
    finally:
        loop.close()


def test_loops_lists_uvicorns_choices() -> None:
    assert LOOPS == ("auto", "asyncio", "uvloop")
    assert Settings().worker_loop == "auto"


# -- aqueue worker --loop -------------------------------------------------------------------------

LOOP_APP = """
    import asyncio

    from aqueue import App
    from aqueue.loops import describe

    app = App("looptasks", set_as_current=False{settings})

    @app.task(name="looptasks.which")
    async def which():
        return describe(asyncio.get_running_loop())
"""


def run_worker(
    write_module: WriteModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
    settings: str = "",
) -> str:
    """Queue `which()` on a SQLite file, run `aqueue worker --burst ARGUMENTS` in-process;
    return the loop the task saw."""
    from aqueue.cli import main

    monkeypatch.setenv("AQUEUE_BROKER_URL", f"sqlite:///{tmp_path / 'loops.db'}")
    name = write_module(LOOP_APP.format(settings=settings))
    app = load_app(f"{name}:app")

    async def send() -> str:
        async with app:
            return (await app.send_task("looptasks.which")).id

    async def fetch(task_id: str) -> str:
        async with app:
            value: str = await app.AsyncResult(task_id).get(timeout=10)
            return value

    task_id = anyio.run(send)
    assert main(["worker", f"{name}:app", "--burst", *arguments]) == 0
    return anyio.run(fetch, task_id)


@pytest.mark.parametrize(
    ("arguments", "settings", "expected"),
    [
        pytest.param([], "", "uvloop", id="default-auto"),
        pytest.param(["--loop", "auto"], "", "uvloop", id="auto"),
        pytest.param(["--loop", "uvloop"], "", "uvloop", id="uvloop"),
        pytest.param(["--loop", "asyncio"], "", "asyncio", id="asyncio"),
        pytest.param([], ", worker_loop='asyncio'", "asyncio", id="setting"),
        pytest.param(["--loop", "uvloop"], ", worker_loop='asyncio'", "uvloop", id="flag-wins"),
    ],
)
def test_worker_runs_on_the_loop_chosen(
    write_module: WriteModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    settings: str,
    expected: str,
) -> None:
    seen = run_worker(write_module, tmp_path, monkeypatch, arguments, settings)
    banner = capsys.readouterr().out
    assert seen.split()[0] == expected  # the task ran on that loop
    assert f".> event loop:  {seen}\n" in banner  # and the banner says so
    if expected == "uvloop":
        assert seen == f"uvloop {importlib.metadata.version('uvloop')}"


@pytest.mark.usefixtures("without_uvloop")
def test_worker_without_uvloop_runs_on_asyncio_by_default(
    write_module: WriteModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen = run_worker(write_module, tmp_path, monkeypatch, [])
    assert seen == "asyncio"
    assert ".> event loop:  asyncio\n" in capsys.readouterr().out


@pytest.mark.usefixtures("without_uvloop")
def test_worker_loop_uvloop_without_uvloop_is_one_line(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    from aqueue.cli import main

    name = write_module(LOOP_APP.format(settings=", broker='memory://'"))
    assert main(["worker", f"{name}:app", "--burst", "--loop", "uvloop"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing started
    assert_one_error_line(captured.err, INSTALL)


def test_worker_loop_setting_is_checked_before_start(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    from aqueue.cli import main

    name = write_module(LOOP_APP.format(settings=", broker='memory://', worker_loop='trio'"))
    assert main(["worker", f"{name}:app", "--burst"]) == 2
    assert_one_error_line(capsys.readouterr().err, "worker_loop must be one of auto, asyncio")


def test_bad_loop_flag_exits_2(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    from aqueue.cli import main

    with pytest.raises(SystemExit) as info:
        main(["worker", "x:app", "--loop", "trio"])
    assert info.value.code == 2
    assert "invalid choice: 'trio'" in capsys.readouterr().err


# -- the tests' --loop option ------------------------------------------------------------------


@pytest.mark.both_loops
async def test_marked_tests_run_on_each_loop(request: pytest.FixtureRequest) -> None:
    running = describe(asyncio.get_running_loop()).split()[0]
    choice = request.config.getoption("--loop")
    callspec = getattr(request.node, "callspec", None)
    if choice in (None, "all"):
        assert callspec is not None
        assert request.node.name.endswith(f"[{running}]")
    else:
        assert running == choice


async def test_unmarked_tests_run_on_asyncio_by_default(request: pytest.FixtureRequest) -> None:
    running = describe(asyncio.get_running_loop()).split()[0]
    choice = request.config.getoption("--loop")
    if choice in (None, "asyncio"):
        assert running == "asyncio"
        assert request.node.name == "test_unmarked_tests_run_on_asyncio_by_default"
    elif choice == "uvloop":
        assert running == "uvloop"
    else:
        assert request.node.name.endswith(f"[{running}]")


def test_app_keyword_sets_worker_loop() -> None:
    app = App("x", broker="memory://", set_as_current=False, worker_loop="asyncio")
    assert app.conf.worker_loop == "asyncio"


def test_no_code_checks_transport_classes() -> None:
    """uvloop's transports implement asyncio's interfaces without subclassing them: code that
    asks `isinstance(t, asyncio.Transport)` breaks on uvloop (it broke every Redis connection)."""
    package = Path(aqueue.__file__).parent
    check = re.compile(r"isinstance\([^)]*\b(asyncio\.)?\w*(Transport|Protocol)\b\s*\)")
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if check.search(line)
    ]
    assert offenders == []


_LEAK = """
import asyncio, socket, sys, warnings
from tests.helpers.loops import _uvloop_factory
warnings.simplefilter("error")
server = socket.create_server(("127.0.0.1", 0))
async def leak():
    leak.writer = (await asyncio.open_connection(*server.getsockname()[:2]))[1]  # never closed
loop = _uvloop_factory()()
loop.run_until_complete(leak())
try:
    loop.close()
except ResourceWarning:
    print("warned")
"""


def test_uvloop_close_with_a_leaked_transport_warns_and_does_not_hang() -> None:
    pytest.importorskip("uvloop")
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", _LEAK],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=30,  # uvloop without the guard hangs here
    )
    assert done.stdout.strip() == "warned", done.stderr
