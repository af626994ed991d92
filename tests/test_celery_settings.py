"""Celery's setting names: every one is implemented, mapped or ignored with a reason."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from aqueue import ConfigurationError, Settings, UnknownSetting
from aqueue.celery_settings import CELERY_NAMES, IGNORED, IMPLEMENTED, MAPPED, describe


def test_the_table_covers_every_celery_name_once() -> None:
    assert len(CELERY_NAMES) == 222
    assert len(IMPLEMENTED) + len(MAPPED) + len(IGNORED) == 222
    assert not (IMPLEMENTED & MAPPED.keys())
    assert not (IMPLEMENTED & IGNORED.keys())
    assert not (MAPPED.keys() & IGNORED.keys())
    assert set(Settings()) >= IMPLEMENTED
    for name in CELERY_NAMES:
        kind, why = describe(name)
        assert kind in ("implemented", "mapped", "ignored"), name
        assert why, name


def celery_guide_settings() -> types.SimpleNamespace:
    """What Celery's Django guide and the seed's notes put in settings.py."""
    return types.SimpleNamespace(
        CELERY_BROKER_URL="memory://",
        CELERY_TIMEZONE="Asia/Seoul",
        CELERY_ENABLE_UTC=False,
        CELERY_TASK_ACKS_LATE=True,
        CELERY_TASK_ALWAYS_EAGER=True,
        CELERY_WORKER_PREFETCH_MULTIPLIER=1,
        CELERY_IMPORTS=("json",),
        CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP=True,
        CELERY_TASK_SERIALIZER="json",
        CELERY_RESULT_SERIALIZER="json",
        CELERY_ACCEPT_CONTENT=["application/json"],
        CELERY_TASK_TIME_LIMIT=30 * 60,
        CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT=7.5,
        CELERY_WORKER_MAX_TASKS_PER_CHILD=100,
        CELERY_TASK_TRACK_STARTED=True,
        CELERY_BEAT_SCHEDULE={},
        CELERY_RESULT_EXPIRE=5,  # a typo: warned about, not fatal
        DEBUG=True,  # not in the namespace: not read
    )


def test_a_celery_guide_settings_file_loads() -> None:
    conf = Settings()
    conf.from_object(celery_guide_settings(), namespace="CELERY")
    assert conf.broker_url == "memory://"
    assert (conf.timezone, conf.enable_utc) == ("Asia/Seoul", False)
    assert conf.task_always_eager is True
    assert conf.imports == ("json",)
    assert (conf.task_serializer, conf.result_serializer) == ("json", "json")
    assert conf.task_time_limit == 1800.0
    assert conf.worker_shutdown_timeout == 7.5  # mapped from worker_soft_shutdown_timeout
    assert conf.worker_max_tasks_per_child == 100  # implemented (--workers recycling)
    assert set(conf.ignored) == {
        "worker_prefetch_multiplier",
        "broker_connection_retry_on_startup",
        "result_expire",
    }
    assert conf.ignored["result_expire"].endswith("did you mean 'result_expires'?")
    assert conf.result_expires == 86400.0
    assert conf.ignored["worker_prefetch_multiplier"].startswith("prefetch follows")
    assert "task_acks_late" not in conf.ignored  # what aqueue always does


def test_an_unknown_name_under_celery_warns_and_elsewhere_fails() -> None:
    conf = Settings()
    conf.from_object({"CELERY_WORKER_CONCURENCY": 3}, namespace="CELERY")
    assert conf.ignored == {
        "worker_concurency": "neither a Celery nor an aqueue setting; "
        "did you mean 'worker_concurrency'?"
    }
    with pytest.raises(UnknownSetting, match="did you mean 'worker_concurrency'"):
        Settings().from_object({"AQUEUE_WORKER_CONCURENCY": 3}, namespace="AQUEUE")
    with pytest.raises(UnknownSetting, match="did you mean 'worker_concurrency'"):
        Settings().update(worker_concurency=3)


def test_celery_names_work_in_plain_conf_too() -> None:
    conf = Settings()
    conf.update(task_acks_late=True, worker_prefetch_multiplier=4)
    conf.worker_soft_shutdown_timeout = 3  # type: ignore[attr-defined]
    assert conf.worker_shutdown_timeout == 3.0
    assert list(conf.ignored) == ["worker_prefetch_multiplier"]
    conf.update(task_acks_late=False)
    assert conf.ignored["task_acks_late"].startswith("task_acks_late=False cannot be had")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("broker_use_ssl", {"cert_reqs": 2}, "write rediss:// or amqps://"),
        ("security_key", "/etc/key.pem", "signs every message with HMAC-SHA256"),
        ("result_accept_content", ["pickle"], "refused: unpickling runs code"),
    ],
)
def test_settings_whose_omission_would_be_unsafe_are_errors(
    name: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings().update({name: value})
    Settings().update({name: None if name != "result_accept_content" else ["json"]})


def test_celery_beat_schedulers_map_to_aqueue_ones() -> None:
    conf = Settings()
    conf.from_object(
        {"CELERY_BEAT_SCHEDULER": "django_celery_beat.schedulers.DatabaseScheduler"},
        namespace="CELERY",
    )
    assert conf.beat_scheduler == "django"  # aqueue.contrib.django.beat
    conf = Settings()
    conf.from_object({"CELERY_BEAT_SCHEDULER": "celery.beat:PersistentScheduler"}, "CELERY")
    assert conf.beat_scheduler == "default"
    assert "aqueue's beat keeps its state in the broker" in conf.ignored["beat_scheduler"]
    conf.update(beat_scheduler="myproject.beat:Entries")
    assert conf.beat_scheduler == "myproject.beat:Entries"


def test_the_readme_lists_every_celery_name() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("### Celery settings") : readme.index("## Performance")]
    missing = sorted(name for name in CELERY_NAMES if f"`{name}`" not in table)
    assert missing == []
    counts = f"**implemented** ({len(IMPLEMENTED)})"
    assert counts in table
