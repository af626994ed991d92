"""`app.conf`: defaults, sources, their precedence, name checking and coercion."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import sys
import textwrap
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import App, ConfigurationError, Settings, UnknownSetting
from aqueue.config import DEFAULT_BROKER_URL
from aqueue.drivers.options import heartbeat_options

_numbers = itertools.count()

BuildApp = Callable[..., App]
MakeModule = Callable[[str], str]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    monkeypatch.delenv("AQUEUE_RESULT_BACKEND", raising=False)


@pytest.fixture
async def build_app() -> AsyncIterator[BuildApp]:
    apps: list[App] = []

    def make(*args: Any, **kwargs: Any) -> App:
        kwargs.setdefault("set_as_current", False)
        app = App(*args, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.close()


@pytest.fixture
def config_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeModule]:
    """Write a module with the given source in tmp_path; return its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(source: str) -> str:
        name = f"aqueue_test_config_{next(_numbers)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


# -- defaults and access ----------------------------------------------------------------------


def test_defaults() -> None:
    conf = Settings()
    assert conf.broker_url is None
    assert conf.result_backend is None
    assert conf.broker_transport_options == {}
    assert conf.result_backend_transport_options == {}
    assert conf.broker_visibility_timeout == 30.0
    assert conf.broker_max_deliveries == 5
    assert conf.task_serializer == "msgpack"
    assert conf.result_serializer == "msgpack"
    assert conf.accept_content == ["msgpack"]
    assert conf.result_expires == 86400.0
    assert conf.result_max_bytes == 1 << 20
    assert conf.message_max_bytes == 1 << 20
    assert conf.task_default_queue == "default"
    assert conf.task_default_priority == 0
    assert conf.task_routes is None
    assert conf.task_annotations is None
    assert conf.task_ignore_result is False
    assert conf.task_track_started is False
    assert conf.worker_concurrency == 100
    assert conf.worker_threads == 8
    assert conf.worker_shutdown_timeout == 10.0
    assert conf.worker_hostname is None


def test_mutable_defaults_are_not_shared() -> None:
    first, second = Settings(), Settings()
    first.broker_transport_options["x"] = 1
    first.accept_content.append("other")
    assert second.broker_transport_options == {}
    assert second.accept_content == ["msgpack"]


async def test_app_defaults_to_the_embedded_sqlite_broker(build_app: BuildApp) -> None:
    app = build_app("proj")
    assert DEFAULT_BROKER_URL == "sqlite:///aqueue.db"
    assert app.conf.broker_url is None
    assert app.broker_url == "sqlite:///aqueue.db"
    assert app.backend_url == "sqlite:///aqueue.db"


async def test_app_keyword_arguments_are_settings(build_app: BuildApp) -> None:
    app = build_app(
        "proj",
        broker="memory://",
        worker_concurrency=5,
        task_default_queue="work",
        result_expires=dt.timedelta(minutes=2),
    )
    assert app.conf.worker_concurrency == 5
    assert app.conf.task_default_queue == "work"
    assert app.conf.result_expires == 120.0
    assert app.conf.broker_url == "memory://"


async def test_broker_url_keyword_is_the_same_setting_as_broker(build_app: BuildApp) -> None:
    app = build_app("proj", broker_url="memory://", result_backend=False)
    assert app.broker_url == "memory://"
    assert app.backend_url is None


def test_update_with_a_mapping_and_keywords() -> None:
    conf = Settings()
    conf.update({"worker_concurrency": 3, "task_default_queue": "a"}, task_default_queue="b")
    assert conf.worker_concurrency == 3
    assert conf.task_default_queue == "b"  # keywords win over the mapping
    conf.update()
    assert conf.worker_concurrency == 3


def test_attribute_and_item_access_are_the_same() -> None:
    conf = Settings()
    conf.worker_threads = 4
    assert conf["worker_threads"] == 4
    conf["worker_threads"] = 6
    assert conf.worker_threads == 6
    conf["result_expires"] = dt.timedelta(seconds=90)  # item assignment coerces too
    assert conf.result_expires == 90.0


def test_iteration_and_as_dict_list_every_setting() -> None:
    conf = Settings(worker_threads=2)
    names = set(conf)
    assert {"broker_url", "result_backend", "worker_threads", "task_routes"} <= names
    assert {
        "task_time_limit",
        "task_soft_time_limit",
        "worker_processes",
        "worker_tune_gc",
        "worker_malloc_mmap_threshold",
        "broker_heartbeat_interval",
        "broker_heartbeat_timeout",
        "worker_loop_block_warning",
        "broker_dead_letter_max_bytes",
        "worker_loop",
        "worker_max_tasks_per_child",
        "worker_max_memory_per_child",
        "worker_suspect_window",
    } <= names
    assert len(names) == 54  # 42, imports and include, the recycling limits, observability (5),
    # worker_malloc_mmap_threshold, worker_quarantine_processes, worker_suspect_window
    assert conf.as_dict()["worker_threads"] == 2
    assert set(conf.as_dict()) == names


# -- unknown names ----------------------------------------------------------------------------

BROKER_UR = "unknown setting 'broker_ur'; did you mean 'broker_url'?"


def test_unknown_setting_by_attribute_names_the_closest() -> None:
    conf = Settings()
    with pytest.raises(UnknownSetting) as info:
        conf.broker_ur = "memory://"
    assert str(info.value) == BROKER_UR
    assert conf.broker_url is None


def test_unknown_setting_by_item_names_the_closest() -> None:
    conf = Settings()
    with pytest.raises(UnknownSetting) as info:
        conf["broker_ur"] = "memory://"
    assert str(info.value) == BROKER_UR
    with pytest.raises(UnknownSetting) as info:
        conf["broker_ur"]
    assert str(info.value) == BROKER_UR


def test_unknown_setting_read_as_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="broker_ur"):
        Settings().broker_ur  # type: ignore[attr-defined]  # noqa: B018


def test_unknown_setting_in_update_sets_nothing() -> None:
    conf = Settings()
    with pytest.raises(UnknownSetting) as info:
        conf.update({"worker_concurrency": 3}, broker_ur="memory://")
    assert str(info.value) == BROKER_UR
    assert conf.worker_concurrency == 100


async def test_unknown_setting_as_app_keyword(build_app: BuildApp) -> None:
    with pytest.raises(UnknownSetting) as info:
        build_app("proj", broker="memory://", worker_concurency=3)
    assert str(info.value) == (
        "unknown setting 'worker_concurency'; did you mean 'worker_concurrency'?"
    )


def test_unknown_setting_in_upper_case_suggests_the_lower_case_name() -> None:
    with pytest.raises(UnknownSetting, match=r"did you mean 'result_backend'\?$"):
        Settings().update(RESULT_BACKEND="memory://")


def test_unknown_setting_with_nothing_close() -> None:
    with pytest.raises(UnknownSetting) as info:
        Settings().update(zzzzzz=1)
    assert str(info.value) == "unknown setting 'zzzzzz'; see aqueue.Settings for the list"


def test_unknown_setting_is_a_configuration_and_attribute_error() -> None:
    assert issubclass(UnknownSetting, ConfigurationError)
    assert issubclass(UnknownSetting, AttributeError)
    assert issubclass(ConfigurationError, ValueError)


# -- coercion ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "result_expires",
        "broker_visibility_timeout",
        "worker_shutdown_timeout",
        "worker_loop_block_warning",
    ],
)
@pytest.mark.parametrize(
    ("value", "seconds"),
    [(dt.timedelta(hours=1, milliseconds=500), 3600.5), (10, 10.0), (0, 0.0), (2.5, 2.5)],
)
def test_durations_accept_timedelta_and_numbers(name: str, value: object, seconds: float) -> None:
    conf = Settings()
    conf[name] = value
    assert conf[name] == seconds
    assert type(conf[name]) is float


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (-1, "-1"),
        (dt.timedelta(seconds=-1), "-1.0"),
        (math.nan, "nan"),
        ("10", "'10'"),
        (True, "True"),
        (None, "None"),
    ],
)
def test_durations_refuse_other_values(value: object, shown: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(result_expires=value)  # type: ignore[arg-type]
    assert str(info.value) == f"result_expires must be a number of seconds >= 0, not {shown}"


@pytest.mark.parametrize("value", [0, -3, "x", "4", True, False, 1.5, None])
def test_worker_concurrency_must_be_a_positive_int(value: object) -> None:
    conf = Settings()
    with pytest.raises(ConfigurationError) as info:
        conf.worker_concurrency = value  # type: ignore[assignment]
    assert str(info.value) == f"worker_concurrency must be a whole number >= 1, not {value!r}"
    assert conf.worker_concurrency == 100


async def test_bad_setting_as_app_keyword(build_app: BuildApp) -> None:
    with pytest.raises(ConfigurationError, match=r"^worker_concurrency must be a whole number"):
        build_app("proj", broker="memory://", worker_concurrency=0)


@pytest.mark.parametrize(
    "name",
    [
        "broker_max_deliveries",
        "broker_dead_letter_max_bytes",
        "result_max_bytes",
        "message_max_bytes",
        "worker_threads",
    ],
)
def test_other_counts_must_be_positive_ints(name: str) -> None:
    conf = Settings()
    conf[name] = 1
    assert conf[name] == 1
    with pytest.raises(ConfigurationError, match=rf"^{name} must be a whole number >= 1, not 0$"):
        conf[name] = 0


def test_heartbeat_settings_are_positive_seconds() -> None:
    conf = Settings()
    assert (conf.broker_heartbeat_interval, conf.broker_heartbeat_timeout) == (1.0, 5.0)
    conf.broker_heartbeat_interval = dt.timedelta(milliseconds=500)
    conf.broker_heartbeat_timeout = None  # leases only
    assert (conf.broker_heartbeat_interval, conf.broker_heartbeat_timeout) == (0.5, None)
    for name in ("broker_heartbeat_interval", "broker_heartbeat_timeout"):
        for bad in (0, -1.0, float("nan"), float("inf"), "5", True):
            with pytest.raises(ConfigurationError, match=rf"^{name} must be a number of seconds"):
                conf[name] = bad
    with pytest.raises(ConfigurationError, match=r"^broker_heartbeat_interval"):
        conf.broker_heartbeat_interval = None


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, (1.0, 5.0)),
        ({"heartbeat_interval": 0.2, "heartbeat_timeout": "2"}, (0.2, 2.0)),
        ({"heartbeat_timeout": None}, (1.0, None)),
    ],
)
def test_heartbeat_options_of_a_broker(options: dict[str, object], expected: object) -> None:
    assert heartbeat_options(options) == expected


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"heartbeat_interval": 2.0, "heartbeat_timeout": 2.0}, "must be more than"),
        ({"heartbeat_interval": 0}, "^heartbeat_interval must be a number of seconds > 0"),
        ({"heartbeat_timeout": "soon"}, "^heartbeat_timeout must be a number of seconds > 0"),
        ({"heartbeat_timeout": False}, "^heartbeat_timeout must be a number of seconds > 0"),
    ],
)
def test_bad_heartbeat_options_are_refused(options: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        heartbeat_options(options)


@pytest.mark.parametrize("value", ["auto", "asyncio", "uvloop"])
def test_worker_loop_takes_a_loop_name(value: str) -> None:
    assert Settings().worker_loop == "auto"
    assert Settings(worker_loop=value).worker_loop == value


@pytest.mark.parametrize("value", ["trio", "UVLOOP", "", None, 1, ["uvloop"]])
def test_worker_loop_refuses_other_values(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(worker_loop=value)  # type: ignore[arg-type]
    assert str(info.value) == f"worker_loop must be one of auto, asyncio, uvloop, not {value!r}"


@pytest.mark.parametrize("value", [0, 5, 9])
def test_priority_in_range(value: int) -> None:
    assert Settings(task_default_priority=value).task_default_priority == value


@pytest.mark.parametrize("value", [-1, 10, True, "5", 4.0])
def test_priority_out_of_range(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(task_default_priority=value)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"task_default_priority must be a whole number from 0 to 9, not {value!r}"
    )


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("task_serializer", "pickle", "is refused: unpickling runs code named by the message"),
        ("result_serializer", "pickle", "is refused: unpickling runs code named by the message"),
        ("accept_content", ["msgpack", "pickle"], "is refused: unpickling runs code named"),
        ("accept_content", ["application/x-python-serialize"], "is refused: unpickling runs"),
        ("task_serializer", "yaml", "is refused: YAML can build arbitrary objects"),
        ("accept_content", ["pickle"], "is refused: unpickling runs code named by the message"),
        ("accept_content", [], "is not supported: aqueue speaks msgpack and json only"),
        ("task_serializer", None, "is not supported: aqueue speaks msgpack and json only"),
        ("accept_content", 5, "is not supported: aqueue speaks msgpack and json only"),
        ("task_serializer", "xml", "is not supported: aqueue speaks msgpack and json only"),
    ],
)
def test_serializers_other_than_msgpack_and_json_are_refused(
    name: str, value: object, why: str
) -> None:
    conf = Settings()
    with pytest.raises(ConfigurationError) as info:
        conf[name] = value
    assert str(info.value).startswith(f"{name}={value!r} {why}")
    assert "\n" not in str(info.value)


def test_a_serializer_is_one_format() -> None:
    with pytest.raises(ConfigurationError, match=r"^task_serializer must be 'msgpack' or 'json'"):
        Settings(task_serializer=["json", "msgpack"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("task_serializer", "msgpack"),
        ("result_serializer", "msgpack"),
        ("accept_content", ["msgpack"]),
        ("accept_content", ("msgpack",)),
        ("accept_content", "msgpack"),
        ("task_serializer", "json"),
        ("result_serializer", "json"),
        ("accept_content", ["json"]),
        ("accept_content", {"application/json", "msgpack"}),
    ],
)
def test_msgpack_and_json_are_accepted(name: str, value: object) -> None:
    conf = Settings()
    conf[name] = value
    assert conf[name] == value


@pytest.mark.parametrize("value", [5, ["memory://"], True])
def test_result_backend_must_be_a_url_none_or_false(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(result_backend=value)  # type: ignore[arg-type]
    assert str(info.value) == f"result_backend must be a URL, None or False, not {value!r}"


@pytest.mark.parametrize("value", [5, False, b"memory://"])
def test_broker_url_must_be_a_string(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(broker_url=value)  # type: ignore[arg-type]
    assert str(info.value) == f"broker_url must be a URL string, not {value!r}"


# -- config_from_object -----------------------------------------------------------------------


async def test_config_from_a_module_ignores_imports_functions_and_private_names(
    build_app: BuildApp, config_module: MakeModule
) -> None:
    name = config_module(
        """
        from __future__ import annotations

        import os
        import datetime as dt
        from datetime import timedelta
        from os.path import join
        from math import sqrt

        broker_url = "memory://"
        result_expires = timedelta(minutes=5)
        worker_concurrency = 7
        BROKER_URL = "sqlite:///upper-case-is-not-a-setting.db"
        _private = "x"

        def helper():
            return os.getcwd()

        class Helper:
            pass
        """
    )
    app = build_app("proj")
    app.config_from_object(name)
    assert app.conf.broker_url == "memory://"
    assert app.conf.result_expires == 300.0
    assert app.conf.worker_concurrency == 7


async def test_config_module_with_a_typo_is_an_error(
    build_app: BuildApp, config_module: MakeModule
) -> None:
    name = config_module("broker_url = 'memory://'\nworker_concurency = 3\n")
    app = build_app("proj")
    with pytest.raises(UnknownSetting, match=r"did you mean 'worker_concurrency'\?$"):
        app.config_from_object(name)
    assert app.conf.broker_url is None  # nothing was set


async def test_config_module_may_set_a_router_function(
    build_app: BuildApp, config_module: MakeModule
) -> None:
    name = config_module(
        """
        def route_task(name, args, kwargs, options):
            return "fast"

        task_routes = route_task
        """
    )
    app = build_app("proj")
    app.config_from_object(name)
    assert callable(app.conf.task_routes)
    assert app.conf.task_routes("x", (), {}, {}) == "fast"


async def test_config_from_module_attribute(build_app: BuildApp, config_module: MakeModule) -> None:
    name = config_module(
        """
        class Config:
            broker_url = "memory://"
            task_default_queue = "from-class"

            def method(self):
                return 1

        other = {"worker_threads": 2}
        """
    )
    app = build_app("proj")
    app.config_from_object(f"{name}:Config")
    assert app.conf.broker_url == "memory://"
    assert app.conf.task_default_queue == "from-class"
    app.config_from_object(f"{name}:other")
    assert app.conf.worker_threads == 2


async def test_config_from_a_class_and_its_bases(build_app: BuildApp) -> None:
    class Base:
        broker_url = "memory://"
        worker_threads = 3

    class Production(Base):
        worker_threads = 4
        task_default_queue = "prod"

        @staticmethod
        def helper() -> int:
            return 1

    app = build_app("proj")
    app.config_from_object(Production)
    assert app.conf.broker_url == "memory://"
    assert app.conf.worker_threads == 4
    assert app.conf.task_default_queue == "prod"


async def test_config_from_an_instance_reads_class_attributes(build_app: BuildApp) -> None:
    class Config:
        broker_url = "memory://"

        def __init__(self) -> None:
            self.worker_threads = 5

        def method(self) -> int:
            return 1

    app = build_app("proj")
    app.config_from_object(Config())
    assert app.conf.broker_url == "memory://"
    assert app.conf.worker_threads == 5


async def test_config_from_a_plain_object_and_a_dict(build_app: BuildApp) -> None:
    app = build_app("proj")
    app.config_from_object(types.SimpleNamespace(broker_url="memory://", worker_threads=2))
    assert app.conf.broker_url == "memory://"
    assert app.conf.worker_threads == 2
    app.config_from_object({"worker_threads": 3, "result_backend": False})
    assert app.conf.worker_threads == 3
    assert app.backend_url is None


async def test_config_from_a_dict_checks_names(build_app: BuildApp) -> None:
    app = build_app("proj")
    with pytest.raises(UnknownSetting, match=r"^unknown setting 'broker_ur'; did you mean"):
        app.config_from_object({"broker_ur": "memory://"})


async def test_config_with_a_namespace(build_app: BuildApp, config_module: MakeModule) -> None:
    name = config_module(
        """
        import os

        AQUEUE_BROKER_URL = "memory://"
        AQUEUE_WORKER_CONCURRENCY = 9
        CELERY_BROKER_URL = "amqp://celery//"
        DEBUG = True
        broker_url = "sqlite:///lower-case-ignored-with-a-namespace.db"
        SECRET_KEY = "s"
        """
    )
    app = build_app("proj")
    app.config_from_object(name, namespace="AQUEUE")
    assert app.conf.broker_url == "memory://"
    assert app.conf.worker_concurrency == 9
    assert app.conf.as_dict() == {
        **Settings().as_dict(),
        "broker_url": "memory://",
        "worker_concurrency": 9,
    }


async def test_namespace_is_case_insensitive_and_checks_names(build_app: BuildApp) -> None:
    app = build_app("proj")
    app.config_from_object({"AQUEUE_WORKER_THREADS": 2}, namespace="aqueue")
    assert app.conf.worker_threads == 2
    with pytest.raises(UnknownSetting, match=r"^unknown setting 'broker_ur'; did you mean"):
        app.config_from_object({"AQUEUE_BROKER_UR": "memory://"}, namespace="AQUEUE")


async def test_config_from_a_missing_module(build_app: BuildApp) -> None:
    app = build_app("proj")
    with pytest.raises(ConfigurationError) as info:
        app.config_from_object("aqueue_no_such_module_here")
    assert str(info.value) == (
        "no module named 'aqueue_no_such_module_here' (looked in the current directory and "
        "sys.path); check the spelling, or cd to the project first"
    )


async def test_config_from_a_missing_attribute(
    build_app: BuildApp, config_module: MakeModule
) -> None:
    name = config_module("broker_url = 'memory://'\n")
    app = build_app("proj")
    with pytest.raises(ConfigurationError) as info:
        app.config_from_object(f"{name}:Missing")
    assert str(info.value) == f"module {name!r} has no attribute 'Missing'"


# -- the environment --------------------------------------------------------------------------


async def test_environment_gives_broker_and_backend(
    build_app: BuildApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AQUEUE_BROKER_URL", "memory://")
    monkeypatch.setenv("AQUEUE_RESULT_BACKEND", "redis://results:6379/1")
    app = build_app("proj")
    assert app.broker_url == "memory://"
    assert app.conf.result_backend == "redis://results:6379/1"
    assert app.backend_url == "redis://results:6379/1"


async def test_explicit_app_arguments_beat_the_environment(
    build_app: BuildApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AQUEUE_BROKER_URL", "redis://env-broker")
    monkeypatch.setenv("AQUEUE_RESULT_BACKEND", "redis://env-backend")
    app = build_app("proj", broker="memory://", backend="sqlite:///results.db")
    assert app.broker_url == "memory://"
    assert app.backend_url == "sqlite:///results.db"
    app = build_app("proj", broker_url="memory://", result_backend=False)
    assert app.broker_url == "memory://"
    assert app.backend_url is None
    app = build_app("proj", backend=False)
    assert app.broker_url == "redis://env-broker"
    assert app.backend_url is None


async def test_config_from_object_and_update_beat_the_environment(
    build_app: BuildApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AQUEUE_BROKER_URL", "redis://env-broker")
    app = build_app("proj")
    app.config_from_object({"broker_url": "memory://"})
    assert app.broker_url == "memory://"
    app.conf.update(broker_url="sqlite:///x.db")
    assert app.broker_url == "sqlite:///x.db"


async def test_empty_environment_variables_are_ignored(
    build_app: BuildApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AQUEUE_BROKER_URL", "")
    monkeypatch.setenv("AQUEUE_RESULT_BACKEND", "")
    app = build_app("proj")
    assert app.conf.broker_url is None
    assert app.conf.result_backend is None
    assert app.broker_url == DEFAULT_BROKER_URL


def test_from_environment_reads_the_given_mapping() -> None:
    conf = Settings()
    conf.from_environment({"AQUEUE_BROKER_URL": "memory://", "AQUEUE_OTHER": "x"})
    assert conf.broker_url == "memory://"
    assert conf.result_backend is None


# -- the result backend in force --------------------------------------------------------------


@pytest.mark.parametrize(
    ("broker", "backend", "expected"),
    [
        ("sqlite:///jobs.db", None, "sqlite:///jobs.db"),
        ("memory://", None, "memory://"),
        ("redis://localhost:6379/0", None, "redis://localhost:6379/0"),
        ("amqp://guest:guest@localhost//", None, "rpc://"),
        ("AMQP://localhost//", None, "rpc://"),
        ("amqps://localhost//", None, "rpc://"),
        ("pyamqp://localhost//", None, "rpc://"),
        ("memory://", False, None),
        ("memory://", "disabled", None),
        ("memory://", "disabled://", None),
        ("amqp://localhost//", "redis://r/1", "redis://r/1"),
        ("sqlite:///jobs.db", "sqlite:///results.db", "sqlite:///results.db"),
    ],
)
async def test_backend_url(
    build_app: BuildApp, broker: str, backend: str | bool | None, expected: str | None
) -> None:
    app = build_app("proj", broker=broker, backend=backend)
    assert app.backend_url == expected


async def test_backend_url_follows_a_later_broker_change(build_app: BuildApp) -> None:
    app = build_app("proj")
    app.conf.broker_url = "memory://"
    assert app.backend_url == "memory://"


def test_the_malloc_threshold_is_a_positive_size_or_none() -> None:
    assert Settings().worker_malloc_mmap_threshold == 128 * 1024
    assert Settings(worker_malloc_mmap_threshold=None).worker_malloc_mmap_threshold is None
    with pytest.raises(ConfigurationError, match="worker_malloc_mmap_threshold must be"):
        Settings(worker_malloc_mmap_threshold=-1)


def test_the_suspect_window_is_seconds() -> None:
    conf = Settings()
    assert conf.worker_suspect_window == 60.0
    conf.worker_suspect_window = dt.timedelta(minutes=2)
    assert conf.worker_suspect_window == 120.0
    conf.worker_suspect_window = 0  # off: only redeliveries run in quarantine
    for bad in (-1, float("nan"), "60", True):
        with pytest.raises(ConfigurationError, match=r"^worker_suspect_window must be a number"):
            conf.worker_suspect_window = bad
