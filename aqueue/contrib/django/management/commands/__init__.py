"""`python manage.py aqueue_purge_results`."""
