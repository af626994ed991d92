"""One adapter per project: how it runs its worker and how it enqueues and waits.

Each adapter module has `serve(cfg, tally)`, which runs the system's worker in this process
until it is killed, and a `Producer` subclass. To add a peer: a module here, a line in each
table below, and its rows in `comparing.systems` (environment, loop) and `comparing.report`
(how it was set up).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from comparing.common import Producer, Tally
from comparing.peers import aqueue, arq, docket, saq, streaq, taskiq

#: Each system's worker, run by `compare.py --worker JSON`.
SERVE: dict[str, Callable[[dict[str, Any], Tally], None]] = {
    "aqueue-redis": aqueue.serve,
    "aqueue-amqp": aqueue.serve,
    "arq": arq.serve,
    "saq": saq.serve,
    "taskiq-redis": taskiq.serve,
    "taskiq-aio-pika": taskiq.serve,
    "streaq": streaq.serve,
    "docket": docket.serve,
}
#: Each system's producer, run by `compare.py --producer JSON`.
PRODUCERS: dict[str, Callable[[dict[str, Any]], Producer]] = {
    "aqueue-redis": aqueue.AqueueProducer,
    "aqueue-amqp": aqueue.AqueueProducer,
    "arq": arq.ArqProducer,
    "saq": saq.SaqProducer,
    "taskiq-redis": taskiq.TaskiqProducer,
    "taskiq-aio-pika": taskiq.TaskiqProducer,
    "streaq": streaq.StreaqProducer,
    "docket": docket.DocketProducer,
}


async def open_producer(cfg: dict[str, Any]) -> Producer:
    producer = PRODUCERS[cfg["system"]](cfg)
    await producer.open()
    return producer
