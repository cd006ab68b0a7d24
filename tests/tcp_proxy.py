"""A TCP proxy for fault tests: clients connect to it instead of the broker, and the test cuts every connection
through it at once (both sockets aborted: the client sees a reset, the broker a vanished peer), as a network
failure or a restarted load balancer would. Runs its own asyncio loop in a thread; 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self.port = self._call(self._start())
        self.cuts = 0

    def _call(self, coro: object) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, family=socket.AF_INET)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    @property
    def connections(self) -> int:
        return len(self._pairs)

    def cut(self) -> int:
        """Abort every connection through the proxy now; how many there were."""

        async def cut_all() -> int:
            pairs = list(self._pairs)
            for pair in pairs:
                for writer in pair:
                    writer.transport.abort()
            return len(pairs)

        self.cuts += 1
        return self._call(cut_all())

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for pair in list(self._pairs):
                for writer in pair:
                    writer.transport.abort()

        with contextlib.suppress(Exception):
            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@contextlib.contextmanager
def tcp_proxy(target_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
