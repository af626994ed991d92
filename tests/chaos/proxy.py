"""A TCP proxy of the harness's own on 127.0.0.1, between clients and a broker, to break links.

    proxy = Proxy(upstream_port)
    await proxy.start()               # proxy.port: where clients connect
    proxy.blackhole()                 # a partition: bytes are held both ways (as TCP
                                      # retransmits them) and connections stay open
    proxy.slow(0.2)                   # every chunk waits 0.2 s
    proxy.heal()                      # back to passing bytes
    proxy.reset()                     # every open connection is reset (RST), new ones pass
    proxy.cut()                       # reset every connection and refuse new ones until heal()

asyncio streams, in the harness's own event loop: no threads, no iptables, no root.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class Proxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`upstream`, with faults on demand."""

    def __init__(self, upstream: int, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0
        self.mode = "pass"  # pass, blackhole, slow, cut
        self.delay = 0.0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self._flowing.clear()

    def slow(self, delay: float) -> None:
        self.mode, self.delay = "slow", delay
        self._flowing.set()

    def heal(self) -> None:
        self.mode = "pass"
        self._flowing.set()

    def cut(self) -> None:
        self.mode = "cut"
        self._flowing.set()
        self.reset()

    def reset(self) -> None:
        """Reset every open connection (SO_LINGER 0: the peer reads ECONNRESET)."""
        for client, upstream in list(self._links):
            for writer in (client, upstream):
                _abort(writer)
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream)
        except OSError:
            _abort(writer)
            return
        self.connections += 1
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        for pump in pumps:
            self._tasks.add(pump)
            pump.add_done_callback(self._tasks.discard)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._links.discard(link)
        for each in link:
            _abort(each)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                await self._flowing.wait()  # a blackhole holds the bytes until healed
                if self.mode == "slow":
                    await asyncio.sleep(self.delay)  # the fault itself
                if self.mode == "cut":
                    return
                writer.write(chunk)
                await writer.drain()
        # The sender closed its side: close ours, so the other end sees it.
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
