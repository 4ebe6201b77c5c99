"""A loopback HTTP proxy in front of the real S3 server that records requests and injects faults.

The edge is pointed at this proxy as its WASABI_ENDPOINT. Without faults it forwards every request
unchanged (moto does the S3 work); with a fault it stalls, fails, resets mid-body or redirects.
It exists because a real S3 server cannot be made to stall or break on cue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_HEADERS = {"transfer-encoding", "connection", "keep-alive", "content-encoding"}


@dataclass
class Fault:
    """One injected behaviour for requests that `match`; `times` uses before it is spent."""

    match: Callable[[web.Request], bool]
    times: int = 1
    status: int | None = None  # answer this status instead of forwarding
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stall_s: float = 0.0  # wait before forwarding (a slow or dead origin)
    reset_after: int | None = None  # cut the connection after this many body bytes
    gate_after: int | None = None  # send this many body bytes, then wait for `gate`
    gate: asyncio.Event | None = None


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    started: float = 0.0  # time.perf_counter() when the request arrived
    answered: float = 0.0  # ... when the origin's response headers came back


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.seen: list[Seen] = []
        self.faults: list[Fault] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        for fault in self.faults:
            if fault.gate is not None:
                fault.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def gets(self, key_suffix: str = "") -> list[Seen]:
        """Object GETs that reached the origin (optionally for keys ending in key_suffix)."""
        return [s for s in self.seen if s.method == "GET" and s.path.endswith(key_suffix)]

    def heads(self, key_suffix: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == "HEAD" and s.path.endswith(key_suffix)]

    def _fault_for(self, request: web.Request) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.match(request):
                fault.times -= 1
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path, request.headers.get("Range"), time.perf_counter())
        self.seen.append(seen)
        fault = self._fault_for(request)
        if fault is not None and fault.stall_s:
            await asyncio.sleep(fault.stall_s)
        if fault is not None and fault.status is not None:
            return web.Response(status=fault.status, body=fault.body, headers=fault.headers)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as upstream:
            seen.answered = time.perf_counter()
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_HEADERS:
                    response.headers[name] = value
            await response.prepare(request)
            gate = fault.gate if fault is not None else None
            gate_at = fault.gate_after if fault is not None else None
            reset_at = fault.reset_after if fault is not None else None
            sent = 0
            async for chunk in upstream.content.iter_chunked(16 * 1024):
                end = sent + len(chunk)
                if reset_at is not None and end > reset_at:
                    await response.write(chunk[: reset_at - sent])
                    await asyncio.sleep(0.01)
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if gate is not None and gate_at is not None and sent <= gate_at < end:
                    await response.write(chunk[: gate_at - sent])
                    await gate.wait()
                    chunk = chunk[gate_at - sent :]
                await response.write(chunk)
                sent = end
            await response.write_eof()
            return response
