"""Django settings of the tests: SQLite (`AQUEUE_TEST_DJANGO_SQLITE`), PostgreSQL as `pg`.

The SQLite file and the file cache's folder come from the environment so that a test and the
worker processes it starts share them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_HERE = os.environ.get("AQUEUE_TEST_DJANGO_DIR", "")
if not _HERE:  # the test process: make the folder, share it with its workers, remove it at exit
    _HERE = tempfile.mkdtemp(prefix="aqueue-djresults-")
    os.environ["AQUEUE_TEST_DJANGO_DIR"] = _HERE
    atexit.register(shutil.rmtree, _HERE, True)

SECRET_KEY = "aqueue-tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "tests.djresults.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "aqueue.contrib.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_HERE, "django.sqlite3"),
        "OPTIONS": {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    },
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("AQUEUE_TEST_PG_DB", "test"),
        "USER": os.environ.get("AQUEUE_TEST_PG_USER", "postgres"),
        "HOST": os.environ.get("AQUEUE_TEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("AQUEUE_TEST_PG_PORT", "5432"),
    },
}
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "files": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": os.path.join(_HERE, "cache"),
    },
}
TASKS = {
    "default": {
        "BACKEND": "aqueue.contrib.django.TaskBackend",
        "OPTIONS": {"APP": "tests.djresults.aqueue_app:app"},
        "QUEUES": ["default", "other"],
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
