"""Sending response bodies: zero-copy `os.sendfile` from slice files where the socket allows.

uvloop implements no `loop.sendfile`, so aiohttp's FileResponse falls back to read + write under
uvloop. `SocketSink` calls `os.sendfile` itself on a duplicate of the connection's descriptor,
waiting for writability through the loop (a duplicate has its own descriptor number, so the
loop's watcher for it does not collide with the transport's). Everything after the headers goes
through one sink, so bytes are never interleaved with the transport's own buffer.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Protocol

from aiohttp import web

__all__ = ["BodySink", "SocketSink", "WriterSink", "open_sink", "transport_drained"]

FALLBACK_CHUNK = 256 * 1024


class BodySink(Protocol):
    async def write(self, data: bytes | memoryview) -> None: ...

    async def sendfile(self, fd: int, offset: int, count: int) -> None: ...

    def close(self) -> None: ...


class WriterSink:
    """Through aiohttp's writer: works on any transport (TLS included)."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response

    async def write(self, data: bytes | memoryview) -> None:
        await self._response.write(data)

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        loop = asyncio.get_running_loop()
        while count > 0:
            size = min(FALLBACK_CHUNK, count)
            chunk = await loop.run_in_executor(None, os.pread, fd, size, offset)
            if not chunk:
                raise ConnectionAbortedError("slice file shorter than its index entry")
            await self._response.write(chunk)
            offset += len(chunk)
            count -= len(chunk)

    def close(self) -> None:
        pass


class SocketSink:
    """Straight to the socket: `os.send` and `os.sendfile` with loop-driven writability waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock_fd: int) -> None:
        self._loop = loop
        self._fd = os.dup(sock_fd)

    @property
    def fd(self) -> int:
        return self._fd

    async def writable(self) -> None:
        """Wait until the socket can take more bytes."""
        await self._writable()

    async def _writable(self) -> None:
        waiter = self._loop.create_future()
        self._loop.add_writer(self._fd, waiter.set_result, None)
        try:
            await waiter
        finally:
            self._loop.remove_writer(self._fd)

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:
                await self._writable()
                continue
            view = view[sent:]

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        while count > 0:
            try:
                sent = os.sendfile(self._fd, fd, offset, count)
            except BlockingIOError:
                await self._writable()
                continue
            if sent == 0:
                raise ConnectionAbortedError("slice file shorter than its index entry")
            offset += sent
            count -= sent

    def close(self) -> None:
        os.close(self._fd)


async def transport_drained(transport: asyncio.WriteTransport) -> None:
    """Wait until the transport has handed every buffered byte to the kernel."""
    delay = 0.0005
    while transport.get_write_buffer_size() > 0:
        if transport.is_closing():
            raise ConnectionResetError("connection closed")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def open_sink(
    request: web.BaseRequest, response: web.StreamResponse, use_sendfile: bool
) -> BodySink:
    """The sink for a prepared response's body."""
    transport = request.transport
    if use_sendfile and transport is not None and transport.get_extra_info("sslcontext") is None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            await transport_drained(transport)
            return SocketSink(asyncio.get_running_loop(), sock.fileno())
    return WriterSink(response)
