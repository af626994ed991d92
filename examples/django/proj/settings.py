"""Settings of the example project: Django's defaults, the two apps, and aqueue's settings."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"  # an example: never deploy it
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "polls.apps.PollsConfig",  # an AppConfig entry: autodiscover_tasks() finds polls/tasks.py
    "reports",  # a plain package entry: reports/tasks.py
    "aqueue.contrib.django.beat",  # periodic tasks in the database, edited in the admin
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "proj.urls"
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
        "NAME": BASE_DIR / "db.sqlite3",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# aqueue, written as Celery's Django guide writes it (app.config_from_object(...,
# namespace="CELERY") reads every CELERY_ name). The broker: the embedded SQLite file beside
# manage.py, unless AQUEUE_BROKER_URL names another (redis://localhost:6379/0).
CELERY_BROKER_URL = os.environ.get("AQUEUE_BROKER_URL", f"sqlite:///{BASE_DIR / 'aqueue.db'}")
# CELERY_RESULT_BACKEND = "django-db"  # results in the ORM (aqueue.contrib.django's TaskResult)
CELERY_TIMEZONE = "UTC"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_TIME_LIMIT = 30 * 60
CELERY_TASK_ACKS_LATE = True  # what aqueue always does
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # ignored, said once at worker start: slots decide
# `aqueue beat proj.aqueue_app:app` reads the periodic tasks of the admin (django-celery-beat's
# name is accepted too: "django_celery_beat.schedulers:DatabaseScheduler").
CELERY_BEAT_SCHEDULER = "django"
