"""The dashboard's HTML, rendered on the server: a layout, and the rows the live pages update.

Everything shown is escaped here (`_e`); values from tasks (arguments, results, errors) are
reprs cut to a length. Rows carry `data-*` attributes the page's script filters on.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from .board import STATES, TaskRow

__all__ = [
    "action",
    "at",
    "layout",
    "queue_rows",
    "task_row",
    "worker_rows",
]

NAV = (("/", "Workers"), ("/queues", "Queues"), ("/tasks", "Tasks"))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def at(part: str) -> str:
    """Quote a queue name or task id for a path segment of the dashboard's addresses."""
    return quote(part, safe="")


def _cut(value: object, width: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= width else f"{text[: width - 1]}…"


def when(stamp: float | None) -> str:
    """Return a POSIX time as HH:MM:SS.mmm UTC, or a dash."""
    if stamp is None:
        return "-"
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def layout(
    title: str, body: str, *, where: str, broker: str, notice: str = "", live: str = ""
) -> str:
    """Render a whole page: the navigation, the (redacted) broker, a notice, and `body`."""
    links = " ".join(
        f'<a href="{href}"{" class=here" if href == where else ""}>{name}</a>' for href, name in NAV
    )
    shown = f'<p class="notice" role="status">{_e(notice)}</p>' if notice else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · aqueue</title>
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script>
</head><body data-live="{_e(live)}">
<header><strong>aqueue</strong> <nav>{links}</nav>
<span class="broker" title="broker">{_e(broker)}</span>
<span id="live" class="live">live</span></header>
<main><h1>{_e(title)}</h1>{shown}{body}</main></body></html>"""


def action(
    path: str,
    label: str,
    csrf: str,
    *,
    fields: Mapping[str, str] | None = None,
    danger: bool = False,
) -> str:
    """Render a form that POSTs to `path` with the CSRF token (and `fields`) in hidden inputs."""
    hidden = "".join(
        f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in (fields or {}).items()
    )
    kind = ' class="danger"' if danger else ""
    return (
        f'<form method="post" action="{_e(path)}" class="inline">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">{hidden}'
        f'<button type="submit"{kind}>{_e(label)}</button></form>'
    )


def _number(value: object) -> str:
    return "-" if value is None else _e(value)


def worker_rows(stats: Mapping[str, Any], heartbeats: Mapping[str, Mapping[str, Any]]) -> str:
    """Render the workers table's rows: those answering `stats`, then those seen in events."""
    rows = []
    for host in sorted(set(stats) | set(heartbeats)):
        answer = stats.get(host)
        beat = heartbeats.get(host, {})
        online = isinstance(answer, dict) and "error" not in answer
        info: Mapping[str, Any] = answer if isinstance(answer, dict) and online else {}
        processed = None
        if online:
            processed = int(info.get("succeeded") or 0) + int(info.get("failed") or 0)
        elif beat.get("processed") is not None:
            processed = beat["processed"]
        load = beat.get("loadavg")
        shown_load = " ".join(f"{x:.2f}" for x in load) if isinstance(load, list | tuple) else "-"
        busy = "-"
        if info.get("concurrency"):
            busy = f"{100 * int(info.get('running') or 0) / int(info['concurrency']):.0f}%"
        status = "online" if online else "offline"
        rows.append(
            f'<tr data-host="{_e(host)}"><td>{_e(host)}</td>'
            f'<td class="{status}">{status}</td>'
            f"<td>{_number(info.get('concurrency'))}</td>"
            f"<td>{_number(info.get('running'))}</td>"
            f"<td>{_number(processed)}</td>"
            f"<td>{_number(info.get('failed'))}</td>"
            f"<td>{_e(busy)}</td><td>{_e(shown_load)}</td>"
            f"<td>{_e(', '.join(map(str, info.get('queues') or ())))}</td></tr>"
        )
    if not rows:
        return '<tr><td colspan="9">No worker answered (is one running on this broker?)</td></tr>'
    return "".join(rows)


def queue_rows(
    queues: Mapping[str, Mapping[str, Any]], rates: Mapping[str, tuple[float, float]], csrf: str
) -> str:
    """Render the queues table's rows: depth (waiting, delayed, running, dead), rates, consumers."""
    rows = []
    for name, info in queues.items():
        rate_in, rate_out = rates.get(name, (0.0, 0.0))
        purge = action(f"/queues/{at(name)}/purge", "Purge", csrf, danger=True)
        rows.append(
            f'<tr data-queue="{_e(name)}"><td><a href="/queues/{_e(at(name))}">{_e(name)}</a></td>'
            f'<td class="waiting">{_number(info.get("waiting"))}</td>'
            f'<td class="delayed">{_number(info.get("delayed"))}</td>'
            f'<td class="running">{_number(info.get("running"))}</td>'
            f'<td class="dead">{_number(info.get("dead"))}</td>'
            f"<td>{rate_in:.0f}</td><td>{rate_out:.0f}</td>"
            f"<td>{_e(', '.join(info.get('workers') or ())) or '-'}</td><td>{purge}</td></tr>"
        )
    return "".join(rows) or '<tr><td colspan="9">No queue</td></tr>'


def task_row(row: TaskRow) -> str:
    """Render one row of the tasks table."""
    runtime = "-" if row.runtime is None else f"{row.runtime * 1000:.1f} ms"
    outcome = row.error if row.error is not None else row.result
    return (
        f'<tr id="task-{_e(row.id)}" data-name="{_e(row.name)}" data-state="{_e(row.state)}">'
        f'<td><a href="/tasks/{_e(at(row.id))}">{_e(row.id)}</a></td><td>{_e(row.name)}</td>'
        f'<td class="state {_e(row.state.lower())}">{_e(row.state)}</td>'
        f"<td>{_e(row.hostname or '-')}</td><td>{_e(when(row.received or row.sent))}</td>"
        f"<td>{_e(runtime)}</td>"
        f"<td>{_e(_cut(outcome, 80) if outcome is not None else '-')}</td></tr>"
    )


def table(headings: Sequence[str], body: str, *, ident: str) -> str:
    """Render a table with `headings` whose body (id `ident`) the live updates replace or extend."""
    heads = "".join(f"<th>{_e(h)}</th>" for h in headings)
    return f'<table><thead><tr>{heads}</tr></thead><tbody id="{ident}">{body}</tbody></table>'


def select(name: str, options: Iterable[str], chosen: str, *, blank: str) -> str:
    """Render a <select> of `options`, `chosen` selected, with a first option meaning "any"."""
    items = [f'<option value="">{_e(blank)}</option>']
    items += [
        f"<option{' selected' if option == chosen else ''}>{_e(option)}</option>"
        for option in options
    ]
    return f'<select name="{_e(name)}" id="{_e(name)}">{"".join(items)}</select>'


def task_filter(name: str, state: str) -> str:
    """Render the tasks page's filter form (it works without the script, by a GET)."""
    states = sorted(set(STATES.values()))
    return (
        '<form method="get" action="/tasks" id="filter" class="filter">'
        f'<label>Name <input name="name" id="name" value="{_e(name)}"></label> '
        f"<label>State {select('state', states, state, blank='any')}</label> "
        '<button type="submit">Filter</button></form>'
    )


def details(items: Iterable[tuple[str, str]]) -> str:
    """Render a definition list of already-escaped values."""
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def pre(value: object) -> str:
    """Render a value whole, escaped, in a <pre>."""
    return f"<pre>{_e(value if isinstance(value, str) else repr(value))}</pre>"
