"""Views that send tasks (a sync one and an async one) and one that reads a result."""

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from proj.aqueue_app import app
from reports.tasks import add

from .tasks import record_vote


@csrf_exempt
@require_POST
def vote(request: HttpRequest, poll_id: int) -> HttpResponse:
    """A sync view: the sync API sends from the app's I/O thread."""
    result = record_vote.sync.delay(poll_id)
    return JsonResponse({"task_id": result.task_id}, status=202)


@csrf_exempt
@require_POST
async def add_numbers(request: HttpRequest) -> HttpResponse:
    """An async view: `await task.delay(...)`."""
    try:
        body = json.loads(request.body)
        x, y = int(body["x"]), int(body["y"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'send {"x": int, "y": int}'}, status=400)
    result = await add.delay(x, y)
    return JsonResponse({"task_id": result.id}, status=202)


@require_GET
def task_result(request: HttpRequest, task_id: str) -> HttpResponse:
    """Read a result without waiting: its state, and its value once it is ready."""
    result = app.sync.AsyncResult(task_id)
    state = result.state
    body: dict[str, object] = {"task_id": task_id, "state": state}
    if state == "SUCCESS":
        body["result"] = result.result
    elif state == "FAILURE":
        body["error"] = str(result.result)
    return JsonResponse(body)
