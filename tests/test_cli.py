"""The `aqueue` command line: app paths, arguments, check-config, the banner, secret scrubbing.

Most tests call `aqueue.cli.main([...])` in-process; a few run `python -m aqueue` for real. Every
error a user can cause must end in exit code 2 and one `aqueue: error:` line, no traceback.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from aqueue import App, Worker, __version__, drivers
from aqueue.banner import banner
from aqueue.cli import main
from aqueue.exceptions import ConfigurationError
from aqueue.loader import load_app
from aqueue.logs import SecretFilter, setup_logging
from tests.helpers.cli import WriteModule, assert_one_error_line

pytestmark = pytest.mark.usefixtures("restore_logging")  # `aqueue worker` sets up logging


# -- --version --------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"aqueue {__version__}"


def test_version_as_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aqueue", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"aqueue {__version__}"


# -- app paths --------------------------------------------------------------------------------

GOOD_APP = """
    from aqueue import App

    app = App("tasks", broker="memory://", set_as_current=False)

    @app.task
    async def add(x, y):
        return x + y

    @app.task
    def mul(x, y):
        return x * y
"""


@pytest.mark.parametrize(
    ("source", "attribute", "fragment"),
    [
        pytest.param(None, ":app", "no module named", id="missing-module"),
        pytest.param(GOOD_APP, ":nope", "has no attribute 'nope'", id="missing-attribute"),
        pytest.param("app = 42\n", ":app", "not an aqueue App", id="not-an-app"),
        pytest.param(
            "def make():\n    return {'not': 'an app'}\n",
            ":make",
            "returned dict, not an aqueue App",
            id="factory-returns-non-app",
        ),
        pytest.param(GOOD_APP, ":app:extra", "not an app path", id="a:b:c"),
        pytest.param(
            "raise RuntimeError('boom at import')\n",
            ":app",
            "RuntimeError: boom at import",
            id="raises-on-import",
        ),
        pytest.param("def broken(:\n", ":app", "SyntaxError", id="syntax-error"),
        pytest.param(
            "import no_such_dependency_xyz\n",
            ":app",
            "no_such_dependency_xyz",
            id="missing-dependency-of-the-module",
        ),
        pytest.param(
            "raise ValueError('first line\\nsecond line')\n",
            ":app",
            "first line",
            id="multi-line-import-error",
        ),
        pytest.param(
            "def make():\n    raise RuntimeError('factory failed')\n",
            ":make",
            "factory failed",
            id="factory-raises",
        ),
        pytest.param("thing = 1\n", "", "has no 'app'", id="no-app-attribute"),
    ],
)
def test_bad_app_path_is_one_line_and_exit_2(
    write_module: WriteModule,
    capsys: pytest.CaptureFixture[str],
    source: str | None,
    attribute: str,
    fragment: str,
) -> None:
    name = write_module(source) if source is not None else f"mod_missing_{uuid.uuid4().hex[:8]}"
    assert main(["worker", f"{name}{attribute}", "--burst"]) == 2
    captured = capsys.readouterr()
    assert_one_error_line(captured.err, fragment)
    assert captured.out == ""  # no banner: nothing started


def test_empty_module_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", ":app"]) == 2
    assert_one_error_line(capsys.readouterr().err, "module:attribute")


def test_missing_submodule_names_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = f"pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["worker", f"{package}.nosuch:app"]) == 2
    finally:
        sys.modules.pop(package, None)
    assert_one_error_line(capsys.readouterr().err, f"no module named '{package}.nosuch'")


def test_module_whose_name_extends_a_missing_import_is_not_called_missing(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    # mod_xxx imports "mod" (missing): that is a failed import inside an existing module, not
    # a module that does not exist.
    name = write_module("import mod\n")
    assert main(["worker", f"{name}:app"]) == 2
    line = assert_one_error_line(capsys.readouterr().err)
    assert "no module named 'mod'" in line.lower(), line
    assert f"no module named {name!r}" not in line


def test_bad_app_path_as_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    done = subprocess.run(
        [sys.executable, "-m", "aqueue", "worker", "broken:app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert_one_error_line(done.stderr, "RuntimeError: boom at import")
    assert done.stdout == ""


def test_module_with_app_is_found_without_attribute(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module(GOOD_APP)
    assert main(["worker", name, "--burst"]) == 0
    out = capsys.readouterr().out
    assert f".> app:         {name}:app (tasks)" not in out  # the path as given is shown
    assert f".> app:         {name} (tasks)" in out
    assert f"  . {name}.add" in out
    assert f"  . {name}.mul" in out


def test_module_with_aqueue_attribute_is_found(write_module: WriteModule) -> None:
    name = write_module(GOOD_APP.replace("app = App", "aqueue = App").replace("@app", "@aqueue"))
    app = load_app(name)
    assert isinstance(app, App)
    assert app.main == "tasks"


def test_factory_returning_an_app_runs_a_burst_worker(
    write_module: WriteModule,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AQUEUE_BROKER_URL", "memory://")
    name = write_module(
        """
        from aqueue import App

        def create_app():
            app = App("factory", set_as_current=False)

            @app.task(name="factory.ping")
            async def ping():
                return "pong"

            return app
        """
    )
    assert main(["worker", f"{name}:create_app", "--burst", "-c", "3", "-n", "w1@test"]) == 0
    out = capsys.readouterr().out
    assert "w1@test" in out
    assert ".> transport:   memory://" in out
    assert ".> concurrency: 3 (asyncio)" in out
    assert "  . factory.ping" in out


def test_burst_worker_on_sqlite_runs_queued_tasks(
    write_module: WriteModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In-process `aqueue worker --burst` on a SQLite file: the task queued before runs."""
    monkeypatch.setenv("AQUEUE_BROKER_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    name = write_module(
        """
        from aqueue import App

        app = App("clitasks", set_as_current=False)

        @app.task(name="clitasks.add")
        async def add(x, y):
            return x + y
        """
    )
    app = load_app(f"{name}:app")

    async def send() -> str:
        async with app:
            return (await app.send_task("clitasks.add", [2, 3])).id

    task_id = anyio.run(send)
    assert main(["worker", f"{name}:app", "--burst", "-l", "INFO"]) == 0
    err = capsys.readouterr().err
    assert f"Task clitasks.add[{task_id}] received" in err
    assert f"Task clitasks.add[{task_id}] succeeded in " in err

    async def fetch() -> int:
        async with app:
            result: int = await app.AsyncResult(task_id).get(timeout=10)
            return result

    assert anyio.run(fetch) == 5


@pytest.mark.parametrize(
    ("variable", "url", "fragment"),
    [
        pytest.param("AQUEUE_BROKER_URL", "localhost", "not a URL", id="broker-not-a-url"),
        pytest.param(
            "AQUEUE_BROKER_URL", "nosuch://u:s3cret-pw@h/0", "no broker driver", id="no-driver"
        ),
        pytest.param(
            "AQUEUE_RESULT_BACKEND",
            "nosuch://u:s3cret-pw@h/0",
            "no result backend driver",
            id="no-backend-driver",
        ),
        pytest.param(
            "AQUEUE_BROKER_URL",
            "sqlite:////nonexistent-dir-aqueue/x.db",
            "/nonexistent-dir-aqueue/x.db",
            id="sqlite-in-a-missing-directory",
        ),
        pytest.param(
            "AQUEUE_BROKER_URL", "sqlite:///x.db?mode=ro", "take no query", id="sqlite-query"
        ),
    ],
)
def test_broker_that_cannot_open_is_one_line_and_exit_2(
    write_module: WriteModule,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    url: str,
    fragment: str,
) -> None:
    """A wrong URL found only when the worker connects is still one line, not a traceback."""
    monkeypatch.setenv(variable, url)
    name = write_module(GOOD_APP.replace(', broker="memory://"', ""))
    assert main(["worker", f"{name}:app", "--burst"]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, fragment)
    assert "s3cret-pw" not in err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["worker", "tasks:app", "-c", "0"], id="concurrency-0"),
        pytest.param(["worker", "tasks:app", "-c", "x"], id="concurrency-x"),
        pytest.param(["worker", "tasks:app", "--threads", "0"], id="threads-0"),
        pytest.param(["worker", "tasks:app", "--shutdown-timeout", "-1"], id="timeout-negative"),
        pytest.param(["worker", "tasks:app", "--shutdown-timeout", "soon"], id="timeout-text"),
        pytest.param(["worker", "tasks:app", "-l", "LOUD"], id="bad-loglevel"),
        pytest.param(["frobnicate"], id="unknown-subcommand"),
        pytest.param([], id="no-subcommand"),
        pytest.param(["worker"], id="worker-without-app"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], chdir_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err


def test_lowercase_loglevel_is_accepted(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module(GOOD_APP)
    assert main(["worker", f"{name}:app", "--burst", "-l", "info"]) == 0
    assert "ready." in capsys.readouterr().err


def test_sys_path_is_restored_after_loading(write_module: WriteModule) -> None:
    before = list(sys.path)
    name = write_module(GOOD_APP)
    assert isinstance(load_app(f"{name}:app"), App)
    assert sys.path == before
    with pytest.raises(ConfigurationError):
        load_app(f"{write_module('raise KeyError(1)')}:app")
    assert sys.path == before
    with pytest.raises(ConfigurationError):
        load_app("mod_nowhere_at_all:app")
    assert sys.path == before


def test_sys_path_is_restored_after_the_cli_ran(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    before = list(sys.path)
    assert main(["worker", f"{write_module(GOOD_APP)}:app", "--burst"]) == 0
    assert sys.path == before
    assert main(["check-config", write_module("worker_concurrency = 4\n")]) == 0
    assert sys.path == before
    capsys.readouterr()


# -- check-config -----------------------------------------------------------------------------


@pytest.fixture
def redis_backend_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let `redis://` resolve to an in-process class, so no Redis client library is needed."""
    monkeypatch.setitem(
        drivers._BACKENDS, "redis", ("aqueue.drivers.memory.results:MemoryBackend", None)
    )


@pytest.mark.usefixtures("redis_backend_resolves")
def test_check_config_ok_lists_non_default_settings_redacted(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module(
        """
        import os
        from datetime import timedelta

        broker_url = "sqlite:///x.db"
        result_backend = "redis://:s3cret-pw@h/0"
        worker_concurrency = 50
        result_expires = timedelta(hours=1)
        """
    )
    assert main(["check-config", name]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == f"{name}: configuration OK"
    assert "s3cret-pw" not in captured.out
    shown = {line.split(" = ")[0].strip(): line.split(" = ", 1)[1] for line in lines[1:]}
    assert shown == {
        "broker_url": "sqlite:///x.db",
        "result_backend": "redis://:***@h/0",
        "result_expires": "3600.0",
        "worker_concurrency": "50",
    }


def test_check_config_unknown_setting_names_the_closest(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module('broker_url = "memory://"\nworker_concurency = 4\n')
    assert main(["check-config", name]) == 2
    captured = capsys.readouterr()
    assert_one_error_line(captured.err, "'worker_concurency'", "'worker_concurrency'")
    assert captured.out == ""


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        pytest.param("worker_concurrency = 0\n", "worker_concurrency", id="bad-value"),
        pytest.param('task_serializer = "pickle"\n', "msgpack", id="pickle"),
        pytest.param('broker_url = "nosuch://u:s3cret-pw@h/0"\n', "nosuch://", id="no-driver"),
        pytest.param('broker_url = "localhost"\n', "not a URL", id="not-a-url"),
    ],
)
def test_check_config_bad_values_are_one_line(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str], source: str, fragment: str
) -> None:
    assert main(["check-config", write_module(source)]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, fragment)
    assert "s3cret-pw" not in err


def test_check_config_missing_module(chdir_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "mod_no_such_config"]) == 2
    assert_one_error_line(capsys.readouterr().err, "mod_no_such_config")


def test_check_config_module_that_raises_on_import(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module("raise RuntimeError('config exploded')\n")
    assert main(["check-config", name]) == 2
    assert_one_error_line(capsys.readouterr().err, "config exploded")


def test_check_config_with_namespace(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module(
        """
        AQUEUE_BROKER_URL = "sqlite:///ns.db"
        AQUEUE_WORKER_THREADS = 3
        DEBUG = True
        SECRET_KEY = "django-thing"
        """
    )
    assert main(["check-config", name, "--namespace", "AQUEUE"]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out
    assert "  broker_url = sqlite:///ns.db" in out
    assert "  worker_threads = 3" in out
    assert "django-thing" not in out


def test_check_config_with_namespace_unknown_setting(
    write_module: WriteModule, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module('AQUEUE_BROKER_URLS = "memory://"\n')
    assert main(["check-config", name, "--namespace", "AQUEUE"]) == 2
    assert_one_error_line(capsys.readouterr().err, "'broker_urls'", "'broker_url'")


def test_check_config_as_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "aqueueconfig.py").write_text('brokr_url = "memory://"\n')
    done = subprocess.run(
        [sys.executable, "-m", "aqueue", "check-config", "aqueueconfig"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert_one_error_line(done.stderr, "did you mean 'broker_url'")


# -- the banner -------------------------------------------------------------------------------


def test_banner_lists_the_worker_and_redacts_passwords() -> None:
    app = App(
        "tasks",
        broker="redis://user:hunter2-pw@broker.example:6379/0",
        backend="redis://:s3cret-pw@results.example/1",
        set_as_current=False,
    )

    @app.task(name="tasks.zeta")
    async def zeta() -> None: ...

    @app.task(name="tasks.alpha")
    def alpha() -> None: ...

    @app.task(name="tasks.mid")
    async def mid() -> None: ...

    worker = Worker(
        app, queues=["default", "emails"], concurrency=7, threads=3, hostname="w1@example"
    )
    text = banner(worker, "tasks:app")
    assert "hunter2-pw" not in text
    assert "s3cret-pw" not in text
    assert "w1@example" in text
    assert ".> app:         tasks:app (tasks)" in text
    assert ".> transport:   redis://user:***@broker.example:6379/0" in text
    assert ".> results:     redis://:***@results.example/1" in text
    assert ".> concurrency: 7 (asyncio), threads: 3" in text
    lines = text.splitlines()
    queues = lines[lines.index("[queues]") + 1 : lines.index("[tasks]") - 1]
    assert queues == [".> default", ".> emails"]
    tasks = [line for line in lines[lines.index("[tasks]") + 1 :] if line.strip()]
    assert tasks == ["  . tasks.alpha", "  . tasks.mid", "  . tasks.zeta"]


def test_banner_shows_disabled_results_and_default_transport(chdir_tmp: Path) -> None:
    app = App("tasks", backend=False, set_as_current=False)
    text = banner(Worker(app), "tasks:app")
    assert ".> transport:   sqlite:///aqueue.db" in text
    assert ".> results:     disabled://" in text
    assert ".> default" in text


def test_worker_log_lines_scrub_the_broker_password(
    write_module: WriteModule, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(
        drivers._BROKERS, "redis", ("aqueue.drivers.memory.broker:MemoryBroker", None)
    )
    monkeypatch.setitem(
        drivers._BACKENDS, "redis", ("aqueue.drivers.memory.results:MemoryBackend", None)
    )
    name = write_module(
        """
        import logging
        from aqueue import App

        app = App("tasks", broker="redis://:s3cret-pw@h/0", set_as_current=False)

        @app.task
        async def add(x, y):
            return x + y
        """
    )
    assert main(["worker", f"{name}:app", "--burst", "-l", "INFO"]) == 0
    logging.getLogger("user").warning("password is s3cret-pw")
    captured = capsys.readouterr()
    assert "redis://:***@h/0" in captured.out
    assert "password is ***" in captured.err
    assert "s3cret-pw" not in captured.out + captured.err


# -- SecretFilter -----------------------------------------------------------------------------


def scrubbed_logger(secrets: list[str]) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(SecretFilter(secrets))
    logger = logging.getLogger(f"test.secrets.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, stream


def test_secret_filter_scrubs_messages_and_arguments() -> None:
    logger, stream = scrubbed_logger(["s3cret-pw", "", "pw"])
    logger.info("connecting to redis://:s3cret-pw@h/0")
    logger.warning("connecting to %s as %r", "redis://:s3cret-pw@h/0", "s3cret-pw")
    text = stream.getvalue()
    assert "s3cret" not in text
    # The longest secret is replaced first, so "pw" does not leave "s3cret-***" behind.
    assert "INFO connecting to redis://:***@h/0" in text
    assert "WARNING connecting to redis://:***@h/0 as '***'" in text


def test_secret_filter_scrubs_exception_text() -> None:
    logger, stream = scrubbed_logger(["s3cret-pw"])
    try:
        raise ConnectionError("auth failed for redis://:s3cret-pw@h/0")
    except ConnectionError:
        logger.exception("broker down: %s", "s3cret-pw")
    text = stream.getvalue()
    assert "s3cret-pw" not in text
    assert "broker down: ***" in text
    assert "ConnectionError: auth failed for redis://:***@h/0" in text
    assert "Traceback" in text


def test_secret_filter_without_secrets_changes_nothing() -> None:
    logger, stream = scrubbed_logger([])
    logger.info("nothing %s here", "secret")
    assert stream.getvalue() == "INFO nothing secret here\n"


def test_setup_logging_scrubs_and_uses_celery_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("INFO", ["s3cret-pw"])
    logging.getLogger("aqueue.test").info("url redis://:s3cret-pw@h/0")
    logging.getLogger("aqueue.test").debug("not shown at INFO")
    err = capsys.readouterr().err
    assert "s3cret-pw" not in err
    assert "INFO/MainProcess] url redis://:***@h/0" in err
    assert "not shown" not in err
    assert err.startswith("[")


def test_no_stray_files_left_by_the_cli(write_module: WriteModule, tmp_path: Path) -> None:
    name = write_module(GOOD_APP)
    assert main(["worker", f"{name}:app", "--burst"]) == 0
    assert sorted(os.listdir(tmp_path)) in (
        [f"{name}.py"],
        sorted([f"{name}.py", "__pycache__"]),
    )
