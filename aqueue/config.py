"""`app.conf`: typed settings with Celery's lowercase names.

Settings come from the defaults below, then the environment (`AQUEUE_BROKER_URL`,
`AQUEUE_RESULT_BACKEND`), then the keyword arguments of `App(...)`; later `conf.update` calls
change anything, and `app.config_from_object` anything but what `App(...)` was given. A name
aqueue does not know is an error that names the closest one it does, so a typo never silently
falls back to a default. Celery's setting names are read too (`aqueue.celery_settings`): each is
implemented, mapped to its aqueue meaning, or ignored with a reason (`Settings.ignored`, which
`aqueue worker` logs in one warning at start-up); under `namespace="CELERY"` a name neither
knows is ignored the same way, with the closest name it may have meant.
"""

from __future__ import annotations
import __future__

import dataclasses
import datetime as dt
import difflib
import importlib
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

from . import celery_settings
from .drivers.base import DEAD_LETTER_MAX_BYTES
from .drivers.options import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    MAX_DELIVERIES,
    VISIBILITY_TIMEOUT,
)
from .exceptions import ConfigurationError, UnknownSetting
from .formats import check_formats
from .loops import LOOPS
from .sizes import parse_memory
from .urls import redact_text

__all__ = ["DEFAULT_BROKER_URL", "ENVIRONMENT", "Settings", "load_object"]

#: The embedded default: a SQLite file in the current directory, shared by every process there.
DEFAULT_BROKER_URL = "sqlite:///aqueue.db"

#: Settings read from the environment when nothing else sets them.
ENVIRONMENT = {
    "broker_url": "AQUEUE_BROKER_URL",
    "result_backend": "AQUEUE_RESULT_BACKEND",
}

Router = Callable[..., Any]


@dataclasses.dataclass(eq=False)
class Settings:
    """Every setting aqueue reads; attribute and item access both work (`conf["broker_url"]`)."""

    broker_url: str | None = None
    #: None: the broker's own store; False or "disabled": no results.
    result_backend: str | bool | None = None
    broker_transport_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    result_backend_transport_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    broker_visibility_timeout: float = VISIBILITY_TIMEOUT
    broker_max_deliveries: int = MAX_DELIVERIES
    #: SQLite and Redis: how often a consuming process records that it is alive (from a thread
    #: of its own, so a task blocking the event loop does not stop it).
    broker_heartbeat_interval: float = HEARTBEAT_INTERVAL
    #: SQLite and Redis: a consumer whose last heartbeat is older than this is dead, and the
    #: messages it held are reclaimed at once instead of when their leases run out; None: no
    #: heartbeats, leases only. Must be more than `broker_heartbeat_interval`.
    broker_heartbeat_timeout: float | None = HEARTBEAT_TIMEOUT
    #: The bytes of dead letters each queue keeps (bodies, reasons, details): past it, the
    #: oldest are dropped. RabbitMQ leaves this to a policy (see the README).
    broker_dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES
    task_serializer: str = "msgpack"
    result_serializer: str = "msgpack"
    accept_content: list[str] = dataclasses.field(default_factory=lambda: ["msgpack"])
    result_expires: float = 86400.0
    result_max_bytes: int = 1 << 20
    message_max_bytes: int = 1 << 20
    task_default_queue: str = "default"
    task_default_priority: int = 0
    task_routes: Any = None
    task_annotations: Any = None
    task_ignore_result: bool = False
    task_track_started: bool = False
    #: Celery's testing switch: `delay()` / `apply_async()` run the task here at once, as
    #: `apply()` does, instead of sending it (arguments still round-trip through the codec).
    task_always_eager: bool = False
    task_time_limit: float | None = None
    task_soft_time_limit: float | None = None
    worker_concurrency: int = 100
    worker_threads: int = 8
    #: Child processes for executor="process" tasks; None: one per CPU (os.cpu_count()).
    worker_processes: int | None = None
    #: Child processes that run redelivered messages (suspects: their worker died while they
    #: ran), one at a time each, so that a task that kills its process kills a child, not the
    #: worker (see aqueue/worker/quarantine.py); 0: suspects run alone in the worker instead.
    worker_quarantine_processes: int = 2
    #: Seconds a task that killed a quarantine process stays suspected by every worker (its
    #: first deliveries run in quarantine too); 0: only its redelivered messages do.
    worker_suspect_window: float = 60.0
    worker_shutdown_timeout: float = 10.0
    #: How many tasks a worker holds outside its slots (waiting for a rate limit or a place)
    #: before it stops taking messages; a fetch under way may add one batch beyond it.
    worker_held_limit: int = 1000
    worker_hostname: str | None = None
    #: Retire a worker process (warm stop; its supervisor starts another) after this many
    #: tasks, or once its resident memory passes this many KiB (Celery's names and units).
    worker_max_tasks_per_child: int | None = None
    worker_max_memory_per_child: int | None = None
    #: Warn (naming the task) when the event loop was blocked longer than this many seconds,
    #: which only code that does not await can do (see aqueue/worker/loopwatch.py); 0 turns it off.
    worker_loop_block_warning: float = 1.0
    #: `aqueue worker` (`Worker.serve`) freezes its start-up heap for the garbage collector
    #: and collects young objects less often (aqueue/worker/gc_tuning.py); False leaves it alone.
    worker_tune_gc: bool = True
    #: `aqueue worker` serves blocks of this many bytes and more with mappings of their own,
    #: given back to the system when freed (glibc: aqueue/worker/malloc_tuning.py), so that a
    #: worker handling large messages does not keep its peak; None leaves malloc alone.
    worker_malloc_mmap_threshold: int | None = 128 * 1024
    #: The event loop of `aqueue worker`: "auto" (uvloop when installed), "asyncio" or "uvloop"
    #: (see aqueue/loops.py); `aqueue worker --loop` overrides it.
    worker_loop: str = "auto"
    #: `aqueue worker` configures the root logger (Celery's name); False leaves logging to
    #: the app. It never does when importing the app added handlers to the root logger.
    worker_hijack_root_logger: bool = True
    #: Workers emit task and worker events (`aqueue worker -E` turns it on): aqueue/events/.
    worker_send_task_events: bool = False
    #: Workers keep recent runtimes per task, for the percentiles of `inspect stats`.
    worker_runtime_stats: bool = False
    #: The OpenTelemetry tracer provider of aqueue's spans; None: the global one, once
    #: configured (aqueue/tracing.py). Without opentelemetry-api, nothing is traced.
    otel_tracer_provider: Any = None
    #: Producers emit a task-sent event for every task they send (one publish per send).
    task_send_sent_event: bool = False
    #: Sign every message and result with HMAC-SHA256 under this key (str or bytes, 16 bytes
    #: at least), and refuse (dead-letter) any message not signed with it: see aqueue/signing.py.
    task_message_key: str | bytes | None = None
    #: Keys rotated out: messages and results signed with them are still accepted.
    task_message_old_keys: list[str | bytes] = dataclasses.field(default_factory=list)
    #: With a key: a message signed longer ago than this (from its eta, if later) is refused
    #: as stale, which bounds a replay; None: no limit.
    task_message_max_age: float | None = None
    #: Periodic tasks, as Celery writes them: {name: {"task", "schedule", "args", "kwargs",
    #: "options"}}; `schedule` is seconds, a timedelta, a `crontab(...)` or a cron string.
    beat_schedule: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Where beat's entries come from: "default" (beat_schedule, then the edits kept in the
    #: broker) or "module:Class", a `aqueue.beat.Source` of one's own (a database scheduler).
    beat_scheduler: str = "default"
    #: Runs missed while no beat was alive: "one" (a single catch-up run), "all" or "none".
    beat_catch_up: str = "one"
    #: The built-in housekeeping entry (expired-result cleanup, for stores that need one).
    beat_housekeeping: bool = True
    #: The time zone of crontab schedules (an IANA name); None: UTC, or the local time zone
    #: when `enable_utc` is False.
    timezone: str | None = None
    enable_utc: bool = True
    #: Modules a worker imports at start-up (and an app when it is finalized), as Celery's
    #: `imports`; then those of `include`.
    imports: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ignored", {})

    @property
    def ignored(self) -> dict[str, str]:
        """Celery settings read and ignored (and, under CELERY, unknown names), with why."""
        ignored: dict[str, str] = self._ignored  # type: ignore[attr-defined]
        return ignored

    def __repr__(self) -> str:
        """Every setting, with the password of any URL among them shown as `***`."""
        shown = ", ".join(f"{name}={_shown(name, getattr(self, name))}" for name in _FIELD_ORDER)
        return redact_text(f"{type(self).__name__}({shown})")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _FIELDS:
            self.update({name: value})  # a Celery name, or an error naming the closest
            return
        coerce = _COERCE.get(name)
        super().__setattr__(name, coerce(name, value) if coerce else value)

    def __getitem__(self, name: str) -> Any:
        if name not in _FIELDS:
            raise unknown_setting(name)
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def update(self, mapping: Mapping[str, Any] | None = None, /, **settings: Any) -> None:
        """Set several settings at once; every name is checked before any is set.

        Celery's names are taken too: see `aqueue.celery_settings`.
        """
        self._apply({**(mapping or {}), **settings}, strict=True)

    def _apply(self, found: Mapping[str, Any], *, strict: bool, keep: Collection[str] = ()) -> None:
        translation = celery_settings.translate(found, _FIELDS)
        if strict and translation.unknown:
            raise unknown_setting(translation.unknown[0])
        for name in translation.unknown:
            translation.ignored[name] = _not_a_setting(name)
        for name, value in translation.settings.items():
            if name not in keep:
                coerce = _COERCE.get(name)
                object.__setattr__(self, name, coerce(name, value) if coerce else value)
        self.ignored.update(translation.ignored)

    def from_environment(self, environ: Mapping[str, str] = os.environ) -> None:
        """Take the settings listed in `ENVIRONMENT` from environment variables, where set."""
        for name, variable in ENVIRONMENT.items():
            if environ.get(variable):
                setattr(self, name, environ[variable])

    def from_object(
        self, obj: object, namespace: str | None = None, *, keep: Collection[str] = ()
    ) -> None:
        """Read settings from a module, a `"module"`/`"module:attr"` path, or any object.

        Without a namespace, lowercase public names are settings. With `namespace="AQUEUE"`,
        names like `AQUEUE_BROKER_URL` are (as in a Django settings module), and others are
        ignored. Settings named in `keep` are checked but not changed. Celery's names are
        read as `aqueue.celery_settings` says; with `namespace="CELERY"` an unknown name is
        ignored (listed in `ignored`) where elsewhere it is an error.
        """
        if isinstance(obj, str):
            obj = load_object(obj)
        source = _attributes(obj)
        prefix = f"{namespace.upper()}_" if namespace else None
        found: dict[str, Any] = {}
        for key, value in source.items():
            if prefix is not None:
                if key.startswith(prefix):
                    found[key[len(prefix) :].lower()] = value
            elif _is_setting_name(key, value):
                found[key] = value
        strict = prefix != "CELERY_"
        self._apply(found, strict=strict, keep=keep)

    def as_dict(self) -> dict[str, Any]:
        """Return every setting and its value."""
        return {name: getattr(self, name) for name in _FIELDS}


_FIELD_ORDER = tuple(field.name for field in dataclasses.fields(Settings))
_FIELDS = frozenset(_FIELD_ORDER)


_SECRETS = frozenset({"task_message_key", "task_message_old_keys"})


def _shown(name: str, value: Any) -> str:
    """Return a setting's value for `repr`: keys never show, only whether there are any."""
    if name in _SECRETS and value:
        return repr(["***"] * len(value)) if isinstance(value, list) else repr("***")
    return repr(value)


def _not_a_setting(name: str) -> str:
    close = difflib.get_close_matches(
        name, sorted(_FIELDS | celery_settings.CELERY_NAMES), n=1, cutoff=0.5
    )
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"neither a Celery nor an aqueue setting{hint}"


def unknown_setting(name: str) -> UnknownSetting:
    """Build the error for an unknown setting name, naming the closest known one."""
    close = difflib.get_close_matches(name.lower(), sorted(_FIELDS), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "; see aqueue.Settings for the list"
    return UnknownSetting(f"unknown setting {name!r}{hint}")


def _attributes(obj: object) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, ModuleType):
        return vars(obj)
    # A class or an instance: its own attributes and those it inherits (dir, not vars). dir()
    # may list names that getattr refuses (Django's settings after `settings.configure()`).
    found: dict[str, Any] = {}
    for name in dir(obj):
        if not name.startswith("_"):
            try:
                found[name] = getattr(obj, name)
            except AttributeError:
                continue
    return found


_NOISE = (ModuleType, FunctionType, BuiltinFunctionType, MethodType, type, __future__._Feature)


def _is_setting_name(key: str, value: object) -> bool:
    if not key.islower() or key.startswith("_"):
        return False
    return key in _FIELDS or not _is_module_noise(value)


def _is_module_noise(value: object) -> bool:
    # Modules used as config carry their imports along (`import os`, `from __future__ import
    # annotations`), classes their methods; skip those unless named like a setting.
    return isinstance(value, _NOISE)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:  # NaN too
        raise ConfigurationError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _positive_seconds(name: str, value: Any) -> float:
    seconds = _seconds(name, value)
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
    return seconds


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1, not {value!r}")
    return value


def _whole_number(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be a whole number >= 0, not {value!r}")
    return value


def _priority(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ConfigurationError(f"{name} must be a whole number from 0 to 9, not {value!r}")
    return value


def _key(name: str, value: Any) -> str | bytes:
    if not isinstance(value, str | bytes) or len(_key_bytes(value)) < 16:
        raise ConfigurationError(f"{name} must be a str or bytes of 16 bytes or more")
    return value


def _key_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _old_keys(name: str, value: Any) -> list[str | bytes]:
    if not isinstance(value, list | tuple):
        raise ConfigurationError(f"{name} must be a list of keys, not a {type(value).__name__}")
    return [_key(name, key) for key in value]


def _loop(name: str, value: Any) -> str:
    if not isinstance(value, str) or value not in LOOPS:
        raise ConfigurationError(f"{name} must be one of {', '.join(LOOPS)}, not {value!r}")
    return value


def _catch_up(name: str, value: Any) -> str:
    if value not in ("one", "all", "none"):
        raise ConfigurationError(f"{name} must be 'one', 'all' or 'none', not {value!r}")
    return str(value)


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a dict of entries, not {value!r}")
    return dict(value)


def _timezone(name: str, value: Any) -> str | None:
    if value is None:
        return None
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(str(value))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"{name}: unknown time zone {value!r}") from None
    return str(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {value!r}")
    return value


def _serializers(name: str, value: Any) -> Any:
    formats = check_formats(name, value)
    if name != "accept_content" and (not isinstance(value, str) or len(formats) != 1):
        raise ConfigurationError(f"{name} must be 'msgpack' or 'json', not {value!r}")
    return value


def _modules(name: str, value: Any) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, list | tuple | set | frozenset) or not all(
        isinstance(module, str) for module in names
    ):
        raise ConfigurationError(f"{name} must be a list of module names, not {value!r}")
    return tuple(names)


def _backend(name: str, value: Any) -> Any:
    if value is False or value is None or isinstance(value, str):
        return value
    raise ConfigurationError(f"{name} must be a URL, None or False, not {value!r}")


def _memory(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigurationError(
            f"a memory size must be KiB or a string like '200MB', not {value!r}"
        )
    return parse_memory(value)


def _optional_url(name: str, value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    raise ConfigurationError(f"{name} must be a URL string, not {value!r}")


_COERCE: dict[str, Callable[[str, Any], Any]] = {
    "broker_url": _optional_url,
    "result_backend": _backend,
    "broker_visibility_timeout": _seconds,
    "broker_max_deliveries": _positive_int,
    "broker_heartbeat_interval": _positive_seconds,
    "broker_heartbeat_timeout": lambda name, value: (
        None if value is None else _positive_seconds(name, value)
    ),
    "broker_dead_letter_max_bytes": _positive_int,
    "task_serializer": _serializers,
    "result_serializer": _serializers,
    "accept_content": _serializers,
    "imports": _modules,
    "include": _modules,
    "result_expires": _seconds,
    "result_max_bytes": _positive_int,
    "message_max_bytes": _positive_int,
    "task_default_priority": _priority,
    "worker_concurrency": _positive_int,
    "worker_threads": _positive_int,
    "worker_processes": lambda name, value: None if value is None else _positive_int(name, value),
    "worker_quarantine_processes": _whole_number,
    "worker_suspect_window": _seconds,
    "worker_shutdown_timeout": _seconds,
    "worker_held_limit": _positive_int,
    "worker_max_tasks_per_child": lambda name, value: (
        None if value is None else _positive_int(name, value)
    ),
    "worker_max_memory_per_child": lambda name, value: None if value is None else _memory(value),
    "worker_malloc_mmap_threshold": lambda name, value: (
        None if value is None else _positive_int(name, value)
    ),
    "worker_loop_block_warning": _seconds,
    "worker_loop": _loop,
    "worker_hijack_root_logger": _bool,
    "worker_send_task_events": _bool,
    "worker_runtime_stats": _bool,
    "task_send_sent_event": _bool,
    "beat_schedule": _mapping,
    "beat_catch_up": _catch_up,
    "beat_housekeeping": _bool,
    "timezone": _timezone,
    "enable_utc": _bool,
    "task_time_limit": lambda name, value: None if value is None else _seconds(name, value),
    "task_soft_time_limit": lambda name, value: None if value is None else _seconds(name, value),
    "task_message_key": lambda name, value: None if value is None else _key(name, value),
    "task_message_old_keys": _old_keys,
    "task_message_max_age": lambda name, value: (
        None if value is None else _positive_seconds(name, value)
    ),
}


def import_module(name: str) -> ModuleType:
    """Import a module named in configuration (never in a message); errors are one line."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == name or name.startswith(f"{missing}."):
            raise ConfigurationError(
                f"no module named {name!r} (looked in the current directory and sys.path); "
                "check the spelling, or cd to the project first"
            ) from None
        raise ConfigurationError(f"importing {name!r} failed: {first_line(exc)}") from None
    except Exception as exc:
        raise ConfigurationError(
            f"importing {name!r} raised {type(exc).__name__}: {first_line(exc)}"
        ) from None


def first_line(exc: BaseException) -> str:
    """Return the first line of an exception message, for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""


def load_object(path: str) -> Any:
    """Import `"module"` or `"module:attr"` (a name from configuration, never from a message)."""
    module_name, _, attr = path.partition(":")
    module = import_module(module_name)
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from None
