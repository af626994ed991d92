"""aqueue with Django (`pip install "aqueue-tasks[django]"`): Celery's Django layout, the ORM.

See the README's Django section: `app.config_from_object("django.conf:settings",
namespace="CELERY")`, `app.autodiscover_tasks()`, and `aqueue worker proj.aqueue_app:app`,
which sets Django up itself.
"""
