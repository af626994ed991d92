"""The aqueue app of the project: Celery's `proj/celery.py`, with aqueue names."""

import os

from aqueue import App

# The Django settings module, for `aqueue worker proj.aqueue_app:app` (which sets Django up).
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = App("proj")

# Every CELERY_... name of settings.py is a setting (AQUEUE_... with namespace="AQUEUE").
app.config_from_object("django.conf:settings", namespace="CELERY")

# Import tasks.py of every installed app, once Django is ready.
app.autodiscover_tasks()


@app.task(bind=True, ignore_result=True)
def debug_task(self):
    print(f"Request: {self.request!r}")
