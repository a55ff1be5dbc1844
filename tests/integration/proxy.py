"""A loopback TCP proxy that can be stalled: one host's view of a server, partitioned at will.

While stalled, bytes in flight are held (not dropped, not refused): the other side sees a server
that hangs, the nastiest kind of partition. ``resume()`` lets everything through again.
``down()`` is the plain outage instead — connections refused, open ones cut — and ``up()`` listens
again on the same port, without disturbing the real server other clients share. ``one_way()`` drops
what the server sends back while the client's requests still reach it (a middlebox or a route that
lost one direction): writes land, their answers never arrive; ``resume()`` ends that too.
"""

from __future__ import annotations

import asyncio
import contextlib


class StallableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._open = asyncio.Event()
        self._open.set()
        self._replies_dropped = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> StallableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def down(self) -> None:
        """The server is gone: new connections are refused, open ones are cut."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for w in list(self._writers):
            w.close()

    async def up(self) -> None:
        """The server is back, on the same port."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def stall(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()
        self._replies_dropped = False

    def one_way(self) -> None:
        """Requests go through, replies are dropped (not held: they are lost for good)."""
        self._replies_dropped = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer, replies=True)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
            self._tasks.discard(task)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool = False
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._open.wait()  # a stall holds what is in flight
                if replies and self._replies_dropped:
                    continue
                writer.write(data)
                await writer.drain()

    async def close(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in list(self._writers):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
