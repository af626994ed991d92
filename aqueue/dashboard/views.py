"""The dashboard's pages (GET): workers, queues, a queue's dead letters, tasks, a task."""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..drivers.base import DeadLetter
from ..exceptions import AqueueError
from ..message import Envelope, InvalidMessage
from ..signing import payload_of
from ..urls import redact_text
from . import pages
from .context import Context, context_of
from .pages import _e, action, at, details, pre, table, when

__all__ = ["queue_page", "queues_page", "task_page", "tasks_page", "workers_page"]

WORKER_HEADINGS = (
    "Worker", "Status", "Concurrency", "Running", "Processed", "Failed", "Busy", "Load avg",
    "Queues",
)  # fmt: skip
QUEUE_HEADINGS = (
    "Queue", "Waiting", "Delayed", "Running", "Dead", "In /min", "Out /min", "Consumers", "",
)  # fmt: skip
TASK_HEADINGS = ("Id", "Name", "State", "Worker", "Received (UTC)", "Runtime", "Result or error")


def _page(
    request: Request, context: Context, title: str, body: str, *, where: str, live: str = ""
) -> HTMLResponse:
    notice = request.query_params.get("done", "")
    text = pages.layout(title, body, where=where, broker=context.broker, notice=notice, live=live)
    return HTMLResponse(text)


async def workers_page(request: Request) -> HTMLResponse:
    """Workers: online, concurrency, running, processed, load; and a task's rate limit form."""
    context = context_of(request)
    stats = await context.worker_stats()
    rows = pages.worker_rows(stats, context.board.workers)
    names = sorted(name for name in context.app.tasks if not name.startswith("aqueue."))
    form = (
        '<h2>Rate limit</h2><form method="post" action="/rate-limit" id="rate-limit" '
        'class="filter">'
        f'<input type="hidden" name="csrf" value="{_e(context.csrf.token)}">'
        f"<label>Task {pages.select('task', names, '', blank='choose a task')}</label> "
        '<label>Rate <input name="rate" id="rate" placeholder="10/m, 2/s; empty lifts it">'
        '</label> <button type="submit">Set</button></form>'
    )
    body = table(WORKER_HEADINGS, rows, ident="workers") + form
    return _page(request, context, "Workers", body, where="/", live="workers")


async def queues_page(request: Request) -> HTMLResponse:
    """Queues: waiting, delayed, running and dead messages, rates in and out, consumers."""
    context = context_of(request)
    body = table(QUEUE_HEADINGS, await _queue_rows(context), ident="queues")
    return _page(request, context, "Queues", body, where="/queues", live="queues")


async def _queue_rows(context: Context) -> str:
    queues = await context.queues()
    rates = {name: context.board.rates(name) for name in queues}
    return pages.queue_rows(queues, rates, context.csrf.token)


async def queue_rows(context: Context) -> str:
    """Render the queues table's rows now (for the live stream)."""
    return await _queue_rows(context)


async def queue_page(request: Request) -> HTMLResponse:
    """One queue: its depth, purge, and its dead letters with retry."""
    context = context_of(request)
    name = request.path_params["name"]
    broker = await context.app.broker()
    stats = await broker.queue_stats(name)
    letters = await broker.dead_letters(name, limit=100)
    csrf = context.csrf.token
    summary = details(
        [
            ("Waiting", _e(stats.waiting)),
            ("Delayed", _e(stats.delayed)),
            ("Running", _e("-" if stats.running is None else stats.running)),
            ("Dead letters", _e(stats.dead)),
        ]
    )
    buttons = action(f"/queues/{at(name)}/purge", "Purge its messages", csrf, danger=True)
    if letters:
        buttons += action(f"/queues/{at(name)}/dead/retry", "Retry every dead letter", csrf)
    rows = "".join(_letter_row(name, letter, csrf) for letter in letters)
    dead = table(
        ("Id", "Dead since (UTC)", "Task", "Reason", ""),
        rows or '<tr><td colspan="5">No dead letters</td></tr>',
        ident="dead",
    )
    body = f"{summary}<p>{buttons}</p><h2>Dead letters</h2>{dead}"
    return _page(request, context, f"Queue {name}", body, where="/queues")


def _letter_row(queue: str, letter: DeadLetter, csrf: str) -> str:
    try:
        envelope = Envelope.decode(payload_of(letter.body))
        task = f'<a href="/tasks/{_e(at(envelope.id))}">{_e(envelope.task)}[{_e(envelope.id)}]</a>'
    except InvalidMessage:
        task = "?"
    since = dt.datetime.fromtimestamp(letter.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    reason = f"{letter.reason}: {letter.detail}" if letter.detail else letter.reason
    retry = action(f"/queues/{at(queue)}/dead/retry", "Retry", csrf, fields={"id": letter.id})
    return (
        f'<tr data-letter="{_e(letter.id)}"><td>{_e(letter.id)}</td><td>{_e(since)}</td>'
        f"<td>{task}</td><td>{_e(reason[:300])}</td><td>{retry}</td></tr>"
    )


async def tasks_page(request: Request) -> HTMLResponse:
    """Tasks seen since the dashboard started, newest first, filtered by name and state."""
    context = context_of(request)
    name = request.query_params.get("name", "")
    state = request.query_params.get("state", "")
    rows = "".join(pages.task_row(row) for row in context.board.matching(name, state)[:500])
    body = pages.task_filter(name, state) + table(TASK_HEADINGS, rows, ident="tasks")
    return _page(request, context, "Tasks", body, where="/tasks", live="tasks")


async def task_page(request: Request) -> HTMLResponse:
    """One task: what the events told (arguments, timings) and its stored result."""
    context = context_of(request)
    task_id = request.path_params["task_id"]
    row = context.board.tasks.get(task_id)
    items: list[tuple[str, str]] = [("Id", _e(task_id))]
    if row is not None:
        items += [
            ("Name", _e(row.name)),
            (
                "State (events)",
                f'<span class="state {_e(row.state.lower())}">{_e(row.state)}</span>',
            ),
            ("Queue", _e(row.queue or "-")),
            ("Worker", _e(row.hostname or "-")),
            ("Arguments", pre(row.args)),
            ("Keyword arguments", pre(row.kwargs)),
            ("Retries", _e(row.retries)),
            ("Sent", _e(when(row.sent))),
            ("Received", _e(when(row.received))),
            ("Started", _e(when(row.started))),
            ("Ended", _e(when(row.ended))),
            ("Runtime", _e("-" if row.runtime is None else f"{row.runtime * 1000:.2f} ms")),
        ]
        if row.received is not None and row.started is not None:
            items.append(("Waited", _e(f"{(row.started - row.received) * 1000:.2f} ms")))
    items += await _stored(context, task_id)
    body = details(items)
    if row is None or row.state not in ("SUCCESS", "FAILURE", "REVOKED", "REJECTED"):
        csrf = context.csrf.token
        body += "<p>" + action(f"/tasks/{at(task_id)}/revoke", "Revoke", csrf)
        body += action(
            f"/tasks/{at(task_id)}/revoke",
            "Terminate",
            csrf,
            fields={"terminate": "1"},
            danger=True,
        )
        body += "</p>"
    if row is not None:
        history = "".join(
            f"<tr><td>{_e(when(stamp))}</td><td>{_e(kind)}</td><td>{_e(host)}</td></tr>"
            for kind, stamp, host in row.history
        )
        body += "<h2>Events</h2>" + table(("Time (UTC)", "Event", "Host"), history, ident="history")
    return _page(request, context, f"Task {task_id}", body, where="/tasks")


async def _stored(context: Context, task_id: str) -> list[tuple[str, str]]:
    """Return the task's stored state, result or traceback, and when it finished."""
    try:
        meta = await context.app.AsyncResult(task_id).meta()
    except AqueueError as exc:  # no result backend configured, or it cannot be read
        return [("Stored result", _e(redact_text(str(exc))))]
    items = [("State (result backend)", _e(meta.state))]
    if meta.traceback:
        items.append(("Traceback", pre(redact_text(meta.traceback))))
    elif meta.result is not None:
        items.append(("Result", pre(meta.result)))
    if meta.date_done is not None:
        items.append(("Done", _e(meta.date_done.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC")))
    return items
