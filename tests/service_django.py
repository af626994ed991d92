"""Django for the tests: `tests.djresults.settings`, migrated on SQLite and PostgreSQL.

PostgreSQL is the local server (127.0.0.1:5432, user postgres, trust auth; the
`AQUEUE_TEST_PG_*` variables point elsewhere), as the alias `pg`: a database of this run's own
(`aqueue_results_<pid>_<random>`), created from the `test` database's server by the first test
that needs it and dropped (WITH FORCE) when its module ends, so concurrent runs never meet.
"""

from __future__ import annotations

import os
import threading
import uuid

SETTINGS = "tests.djresults.settings"

_lock = threading.Lock()
_migrated: set[str] = set()

#: This run's PostgreSQL database (the settings read it; its workers inherit it).
os.environ.setdefault("AQUEUE_TEST_PG_DB", f"aqueue_results_{os.getpid()}_{uuid.uuid4().hex[:6]}")


def _server(sql: str) -> None:
    """Run one statement on the PostgreSQL server, from its `test` database."""
    import psycopg

    host = os.environ.get("AQUEUE_TEST_PG_HOST", "127.0.0.1")
    port = os.environ.get("AQUEUE_TEST_PG_PORT", "5432")
    user = os.environ.get("AQUEUE_TEST_PG_USER", "postgres")
    with psycopg.connect(host=host, port=port, user=user, dbname="test", autocommit=True) as conn:
        conn.execute(sql)


def configure() -> None:
    """Configure Django with the test settings and make it ready (once per process).

    By `settings.configure()`, not DJANGO_SETTINGS_MODULE: the variable would reach every
    worker process the rest of the suite starts.
    """
    import django
    from django.apps import apps
    from django.conf import settings

    if not settings.configured:
        from .djresults import settings as values

        settings.configure(
            **{name: getattr(values, name) for name in dir(values) if name.isupper()}
        )
    if not apps.ready:
        django.setup()


def pg_unreachable() -> str | None:
    """Why the test PostgreSQL cannot be used, or None."""
    configure()
    from django.db import connections

    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed: pip install 'psycopg[binary]'"
    params = connections["pg"].settings_dict
    try:
        psycopg.connect(
            dbname="test",  # the server's; this run's own database is made on first use
            user=params["USER"],
            host=params["HOST"],
            port=params["PORT"],
            connect_timeout=3,
        ).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {params['HOST']}:{params['PORT']} is not reachable: {exc}"
    return None


def migrate(alias: str) -> None:
    """Create the tables (all apps on SQLite, aqueue's alone on PostgreSQL), once."""
    configure()
    from django.core.management import call_command
    from django.db import connections

    with _lock:
        if alias in _migrated:
            return
        if alias == "default":
            call_command("migrate", database=alias, verbosity=0)
        else:
            _server(f'CREATE DATABASE "{os.environ["AQUEUE_TEST_PG_DB"]}"')
            call_command("migrate", "aqueue", database=alias, verbosity=0)
        _migrated.add(alias)
        connections[alias].close()


def drop_migrated() -> None:
    """Drop this run's PostgreSQL database if a test made it."""
    with _lock:
        if "pg" not in _migrated:
            return
        from django.db import connections

        connections["pg"].close()
        _server(f'DROP DATABASE "{os.environ["AQUEUE_TEST_PG_DB"]}" WITH (FORCE)')
        _migrated.discard("pg")


def backend_env() -> dict[str, str]:
    """The environment a worker process needs to share this process's Django databases."""
    configure()
    return {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "AQUEUE_TEST_DJANGO_DIR": os.environ["AQUEUE_TEST_DJANGO_DIR"],
        "AQUEUE_TEST_PG_DB": os.environ["AQUEUE_TEST_PG_DB"],
    }


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
