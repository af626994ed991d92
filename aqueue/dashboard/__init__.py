"""A web dashboard for a live system: `aqueue dashboard MODULE:app`.

Install it with `pip install "aqueue-tasks[dashboard]"`.

Pages: workers (`/`), queues (`/queues`, one queue's dead letters at `/queues/NAME`), tasks
(`/tasks`, live from the workers' events, filtered by name and state; one at `/tasks/ID`).
Actions, POSTs with a CSRF token, go through the control plane: revoke, terminate, rate
limit, purge, retry dead letters. Pages update over server-sent events. Server-rendered HTML,
one small hand-written script and stylesheet shipped in the package: nothing to build, nothing
fetched from elsewhere.

    board     the recent tasks and workers, folded from the events
    guard     Basic auth or a token; CSRF tokens
    pages     the HTML
    views     the pages' handlers;  actions  the POSTs;  stream  the live updates
    server    create_app(app): the Starlette app
"""

from .server import create_app as create_app

__all__ = ["create_app"]
