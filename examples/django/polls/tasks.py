"""Tasks of the polls app, found by `app.autodiscover_tasks()`."""

from asgiref.sync import sync_to_async
from django.db.models import F

from aqueue import shared_task

from .models import Poll


@shared_task
def record_vote(poll_id: int) -> int:
    """A def task: runs in a worker thread, uses the ORM as a view would."""
    Poll.objects.filter(pk=poll_id).update(votes=F("votes") + 1)
    return Poll.objects.get(pk=poll_id).votes


@shared_task
async def poll_summary(poll_id: int) -> dict[str, object]:
    """An async task: Django's async ORM, and sync_to_async for the rest."""
    poll = await Poll.objects.aget(pk=poll_id)
    total = await sync_to_async(Poll.objects.count)()
    return {"question": poll.question, "votes": poll.votes, "polls": total}


@shared_task(executor="process")
def tally() -> int:
    """A def task in a child process (CPU-bound work): the child sets Django up too."""
    return sum(poll.votes for poll in Poll.objects.all())
