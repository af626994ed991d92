"""Result stores through Django: `django-db` (the ORM) and `django-cache` (a Django cache).

Both run every Django call off the event loop, in one thread of their own (`thread`), and
batch concurrent stores into one write (`batching`). `wait` is shared by all waiters of a
store (`waiting`): on PostgreSQL it sleeps on LISTEN/NOTIFY (`listener`); elsewhere it polls
with a bounded backoff, since neither other databases nor Django caches can notify.
"""
