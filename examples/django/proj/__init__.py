# Load the aqueue app whenever Django starts, so @shared_task uses it (as with Celery).
from .aqueue_app import app as aqueue_app

__all__ = ["aqueue_app"]
