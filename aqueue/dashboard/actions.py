"""The dashboard's actions (POST, each with the CSRF token), all through the control plane.

Each answers with a redirect (303) back to a page, which shows what was done in its notice:
revoke or terminate a task, change a task's rate limit, purge a queue, retry dead letters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from ..exceptions import AqueueError
from ..urls import redact_text
from .context import Context, context_of
from .pages import at

__all__ = ["purge_queue", "rate_limit", "retry_dead", "revoke_task"]

Form = dict[str, str]
MAX_FORM = 16 * 1024


async def _form(request: Request) -> Form | None:
    """Return the urlencoded form of a POST (as the pages send), or None if it is not one."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    try:
        return dict(parse_qsl(body.decode(), max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        return None


def _back(path: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?{urlencode({'done': done})}", 303)


async def _checked(
    request: Request, act: Callable[[Context, Form], Awaitable[tuple[str, str]]]
) -> Response:
    """Run `act` if the form carries the CSRF token; redirect to the page it names."""
    context = context_of(request)
    fields = await _form(request)
    if fields is None:
        return PlainTextResponse("refused: send a small urlencoded form", 400)
    if not context.csrf.valid(fields.get(context.csrf.FIELD)):
        return PlainTextResponse("refused: the form's CSRF token is missing or wrong", 403)
    try:
        path, done = await act(context, fields)
    except (AqueueError, ValueError, LookupError) as exc:
        return PlainTextResponse(f"refused: {redact_text(str(exc))}", 400)
    return _back(path, done)


async def revoke_task(request: Request) -> Response:
    """Revoke a task (with `terminate=1`, also cancel it where it runs)."""
    task_id = request.path_params["task_id"]

    async def act(context: Context, form: Form) -> tuple[str, str]:
        terminate = form.get("terminate") == "1"
        replies = await context.app.control.revoke(
            task_id, terminate=terminate, timeout=context.timeout
        )
        verb = "terminated" if terminate else "revoked"
        return f"/tasks/{at(task_id)}", f"{verb} {task_id} ({len(replies)} worker(s) answered)"

    return await _checked(request, act)


async def rate_limit(request: Request) -> Response:
    """Change a task's rate limit on every worker (kept for workers started later)."""

    async def act(context: Context, form: Form) -> tuple[str, str]:
        task, rate = form.get("task", ""), form.get("rate", "").strip() or None
        if not task:
            raise ValueError("choose a task")
        replies = await context.app.control.rate_limit(task, rate, timeout=context.timeout)
        return "/", f"rate limit of {task} set to {rate or 'none'} on {len(replies)} worker(s)"

    return await _checked(request, act)


async def purge_queue(request: Request) -> Response:
    """Delete every waiting message of a queue."""
    name = request.path_params["name"]

    async def act(context: Context, form: Form) -> tuple[str, str]:
        count = await (await context.app.broker()).purge(name)
        return "/queues", f"{name}: {count} message(s) deleted"

    return await _checked(request, act)


async def retry_dead(request: Request) -> Response:
    """Put one dead letter (`id`) or all of a queue's back on the queue."""
    name = request.path_params["name"]

    async def act(context: Context, form: Form) -> tuple[str, str]:
        ids = [form["id"]] if form.get("id") else None
        count = await (await context.app.broker()).retry_dead_letters(name, ids)
        return f"/queues/{at(name)}", f"{name}: {count} dead letter(s) sent back"

    return await _checked(request, act)
