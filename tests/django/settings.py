"""Django settings of the tests: the example project's, with databases and a broker of the tests.

The example's `proj/settings.py` is loaded from its file (importing the `proj` package would
create its app before these settings exist). `AQUEUE_DJANGO_TEST_DIR` holds the SQLite files
(the same directory for the test process and the workers it starts); `AQUEUE_DJANGO_PG_DB`
names the PostgreSQL database of the run (127.0.0.1:5432, user postgres, trust auth), which
the tests create and drop.
"""

import importlib.util
import os
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django"
_spec = importlib.util.spec_from_file_location(
    "aqueue_example_settings", EXAMPLE / "proj/settings.py"
)
assert _spec is not None
assert _spec.loader is not None
_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_example)
globals().update({name: value for name, value in vars(_example).items() if name.isupper()})

TEST_DIR = Path(os.environ["AQUEUE_DJANGO_TEST_DIR"])
PG_DB = os.environ.get("AQUEUE_DJANGO_PG_DB", "aqueue_django_unset")

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": TEST_DIR / "db.sqlite3"},
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": PG_DB,
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "TEST": {"NAME": PG_DB},
    },
}
CELERY_BROKER_URL = os.environ.get("AQUEUE_BROKER_URL") or f"sqlite:///{TEST_DIR / 'aqueue.db'}"
