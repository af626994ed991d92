"""The seed's layout, in a fresh interpreter: a Celery-guide settings module loads through
`config_from_object("django.conf:settings", namespace="CELERY")`, and `autodiscover_tasks()`
imports the tasks of every installed app (an AppConfig entry included) once Django is ready."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aqueue import App, ConfigurationError

from .conftest import EXAMPLE

#: What Celery's Django guide and the seed's notes put in settings.py.
SEED_SETTINGS = """
SECRET_KEY = "x"
INSTALLED_APPS = ["django.contrib.contenttypes", "polls.apps.PollsConfig", "reports"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CELERY_BROKER_URL = "redis://localhost:6380/0"
CELERY_TIMEZONE = "Asia/Seoul"
CELERY_ENABLE_UTC = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_ALWAYS_EAGER = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_IMPORTS = ("reports.tasks",)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_BEAT_SCHEDULE = {"fetch-data-every-second": {"task": "reports.tasks.add", "schedule": 1.0}}
CELERY_WORKER_CONCURENCY = 4  # misspelt: warned about, not fatal
"""

SCRIPT = """
import json, sys
import django
from aqueue import App

app = App("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
before = {
    "imported": sorted(m for m in ("polls.tasks", "reports.tasks") if m in sys.modules),
    "tasks": sorted(app.tasks),  # Django is not ready: discovery waits
}
django.setup()
after = sorted(app.tasks)
other = App("other", broker="memory://", set_as_current=False)
other.autodiscover_tasks(["polls.apps.PollsConfig"], related_name="models", force=True)
from reports.tasks import add
conf = app.conf
print(json.dumps({
    "before": before,
    "after": after,
    "models": "polls.models" in sys.modules,
    "eager": add.sync.delay(2, 3).get(timeout=5),
    "conf": [conf.timezone, conf.enable_utc, conf.task_always_eager, list(conf.imports),
             conf.task_serializer, conf.broker_url, sorted(conf.beat_schedule)],
    "ignored": conf.ignored,
}))
"""


def test_a_celery_guide_settings_file_and_autodiscover(tmp_path: Path) -> None:
    (tmp_path / "seed_settings.py").write_text(SEED_SETTINGS)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "seed_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(EXAMPLE)]),
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["before"] == {"imported": [], "tasks": []}  # nothing imported before ready
    assert report["after"] == [
        "polls.tasks.poll_summary",  # from the 'polls.apps.PollsConfig' entry
        "polls.tasks.record_vote",
        "polls.tasks.tally",
        "reports.tasks.add",
    ]
    assert report["models"] is True
    assert report["eager"] == 5  # CELERY_TASK_ALWAYS_EAGER: run here, no broker touched
    assert report["conf"] == [
        "Asia/Seoul",
        False,
        True,
        ["reports.tasks"],
        "json",
        "redis://localhost:6380/0",
        ["fetch-data-every-second"],
    ]
    assert sorted(report["ignored"]) == [
        "broker_connection_retry_on_startup",
        "worker_concurency",
        "worker_prefetch_multiplier",
    ]
    assert report["ignored"]["worker_concurency"].endswith("did you mean 'worker_concurrency'?")


def test_autodiscover_without_packages_needs_django() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DJANGO_SETTINGS_MODULE")
        app = App("plain", broker="memory://", set_as_current=False)
    with pytest.raises(ConfigurationError, match=r"needs Django \(set DJANGO_SETTINGS_MODULE"):
        app.autodiscover_tasks()


def test_a_misspelt_name_under_aqueue_is_an_error() -> None:
    from django.conf import settings

    app = App("strict", broker="memory://", set_as_current=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "AQUEUE_WORKER_CONCURENCY", 4, raising=False)
        with pytest.raises(ConfigurationError, match="did you mean 'worker_concurrency'"):
            app.config_from_object("django.conf:settings", namespace="AQUEUE")
