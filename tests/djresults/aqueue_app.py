"""The project's aqueue app, as a Django project writes it (`proj/aqueue_app.py`).

Broker and result backend come from AQUEUE_BROKER_URL / AQUEUE_RESULT_BACKEND in the worker;
the tests set `app.conf` for their own process.
"""

from __future__ import annotations

import os

import django
from django.conf import settings

if not settings.configured:  # the tests configure it in their own process
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.settings")
django.setup()

from aqueue import App  # noqa: E402

app = App("djresults", set_as_current=False)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
async def boom() -> None:
    raise ValueError("boom from the worker")


from . import djtasks  # noqa: E402, F401 - the Django tasks this worker runs
