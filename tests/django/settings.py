"""Django settings of every Django test (one configuration per process: Django cannot change it).

The example project's `proj/settings.py` (loaded from its file: importing the `proj` package
would create its app before these settings exist), plus what the result stores and the Tasks
backend need: `aqueue.contrib.django`, a file cache, `TASKS`. The example's apps (`polls`,
`reports`) are importable from here on. The SQLite files live in `AQUEUE_DJANGO_TEST_DIR` and
the PostgreSQL database (127.0.0.1:5432, user postgres, trust auth) is `AQUEUE_DJANGO_PG_DB`,
this run's own, created by the tests that use it and dropped at exit
(`tests/helpers/service_django.py`); the test process picks both and passes them to the workers
it starts.
"""

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django"
if str(EXAMPLE) not in sys.path:
    sys.path.append(str(EXAMPLE))  # the example's apps (polls, reports) are installed apps
_spec = importlib.util.spec_from_file_location(
    "aqueue_example_settings", EXAMPLE / "proj/settings.py"
)
assert _spec is not None
assert _spec.loader is not None
_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_example)
globals().update({name: value for name, value in vars(_example).items() if name.isupper()})

_dir = os.environ.get("AQUEUE_DJANGO_TEST_DIR", "")
if not _dir:  # the test process: make the folder, share it with its workers, remove it at exit
    _dir = tempfile.mkdtemp(prefix="aqueue-django-")
    os.environ["AQUEUE_DJANGO_TEST_DIR"] = _dir
    atexit.register(shutil.rmtree, _dir, True)
TEST_DIR = Path(_dir)
PG_DB = os.environ.get("AQUEUE_DJANGO_PG_DB", "")
if not PG_DB:
    PG_DB = f"aqueue_django_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    os.environ["AQUEUE_DJANGO_PG_DB"] = PG_DB

INSTALLED_APPS = [*INSTALLED_APPS, "aqueue.contrib.django"]  # noqa: F821 - the example's
ROOT_URLCONF = "tests.django.urls"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": TEST_DIR / "db.sqlite3",
        "OPTIONS": {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    },
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": PG_DB,
        "USER": os.environ.get("AQUEUE_TEST_PG_USER", "postgres"),
        "HOST": os.environ.get("AQUEUE_TEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("AQUEUE_TEST_PG_PORT", "5432"),
        "TEST": {"NAME": PG_DB},
    },
}
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "files": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(TEST_DIR / "cache"),
    },
}
TASKS = {
    "default": {
        "BACKEND": "aqueue.contrib.django.TaskBackend",
        "OPTIONS": {"APP": "tests.djresults.aqueue_app:app"},
        "QUEUES": ["default", "other"],
    }
}
CELERY_BROKER_URL = os.environ.get("AQUEUE_BROKER_URL") or f"sqlite:///{TEST_DIR / 'aqueue.db'}"
