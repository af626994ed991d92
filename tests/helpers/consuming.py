"""Taking messages off a broker in tests, as a worker would but without one."""

from __future__ import annotations

import anyio

from aqueue import App, Broker, Delivery
from aqueue.message import Envelope


class Credit:
    """A fixed credit, as a worker with `free` idle slots gives."""

    def __init__(self, free: int = 100) -> None:
        self.free = free

    async def wait(self) -> int:
        return self.free


async def drain(broker: Broker, queues: list[str], credit: int = 100) -> list[Delivery]:
    """Every delivery ready now (burst mode), unsettled."""
    with anyio.fail_after(10):
        return [d async for d in broker.consume(queues, Credit(credit), burst=True)]


async def take_envelopes(app: App, queue: str = "default") -> list[Envelope]:
    """Take every ready message off `queue` (acknowledged) and decode it."""
    broker = await app.broker()
    envelopes = []
    async for delivery in broker.consume([queue], Credit(), burst=True):
        envelopes.append(Envelope.decode(delivery.body))
        await delivery.ack()
    return envelopes
