"""Django for the tests: `tests.django.settings`, configured once, on SQLite and PostgreSQL.

Every Django test shares one configuration (Django cannot be configured twice in a process).
PostgreSQL is the local server (127.0.0.1:5432, trust auth; the `AQUEUE_TEST_PG_*` variables
point elsewhere), as the alias `pg`: a database of this run's own, created from `test` by the
first test that needs it and dropped at exit.
"""

from __future__ import annotations

import atexit
import os
import threading

SETTINGS = "tests.django.settings"

_lock = threading.Lock()
_migrated: set[str] = set()
_created: list[str] = []


def configure() -> None:
    """Configure Django with the test settings and make it ready (once per process).

    By `settings.configure()`, not DJANGO_SETTINGS_MODULE: the variable would reach every
    worker process the rest of the suite starts.
    """
    import django
    from django.apps import apps
    from django.conf import settings

    if not settings.configured:
        from tests.django import settings as values

        settings.configure(
            **{name: getattr(values, name) for name in dir(values) if name.isupper()}
        )
    if not apps.ready:
        django.setup()


def _admin_dsn() -> str:
    host = os.environ.get("AQUEUE_TEST_PG_HOST", "127.0.0.1")
    port = os.environ.get("AQUEUE_TEST_PG_PORT", "5432")
    user = os.environ.get("AQUEUE_TEST_PG_USER", "postgres")
    return f"host={host} port={port} user={user} dbname=test"


def pg_unreachable() -> str | None:
    """Why the test PostgreSQL cannot be used, or None."""
    configure()
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed: pip install 'psycopg[binary]'"
    try:
        psycopg.connect(_admin_dsn(), connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL ({_admin_dsn()}) is not reachable: {exc}"
    return None


def ensure_pg_database() -> str:
    """Create this run's PostgreSQL database (once; dropped at exit); return its name."""
    configure()
    import psycopg
    from django.conf import settings

    name: str = settings.DATABASES["pg"]["NAME"]
    with _lock:
        if name not in _created:
            with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            _created.append(name)
            atexit.register(_drop, name)
    return name


def _drop(name: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(alias: str) -> None:
    """Create every app's tables on `alias` (`default`: SQLite, `pg`: PostgreSQL), once."""
    configure()
    from django.core.management import call_command
    from django.db import connections

    if alias == "pg":
        ensure_pg_database()
    with _lock:
        if alias in _migrated:
            return
        call_command("migrate", database=alias, verbosity=0)
        _migrated.add(alias)
        connections[alias].close()


def drop_migrated() -> None:
    """Nothing to undo: this run's PostgreSQL database is dropped whole at exit."""


def backend_env() -> dict[str, str]:
    """The environment a worker process needs to share this process's Django databases."""
    configure()
    return {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "AQUEUE_DJANGO_TEST_DIR": os.environ["AQUEUE_DJANGO_TEST_DIR"],
        "AQUEUE_DJANGO_PG_DB": os.environ["AQUEUE_DJANGO_PG_DB"],
    }


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP = "tests.djresults.aqueue_app:app"


def run_worker(broker: str, backend: str, *args: str, timeout: float = 60) -> str:
    """Run `aqueue worker tests.djresults.aqueue_app:app --burst` to the end; return its log.

    Blocking: call it in a thread. Raises if the worker fails or outlives `timeout`.
    """
    import subprocess
    import sys

    env = {
        **os.environ,
        **backend_env(),
        "AQUEUE_BROKER_URL": broker,
        "AQUEUE_RESULT_BACKEND": backend,
        "PYTHONUNBUFFERED": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "aqueue", "worker", APP, "--burst", "-l", "INFO", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    return log
