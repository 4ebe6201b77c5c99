"""Composition root: builds the edge from settings, runs both listeners, shuts down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from .admin import make_admin_app
from .cache import EdgeCache
from .config import EdgeSettings
from .fastpath import FastPath, FastPathProtocol
from .index import CacheIndex
from .metrics import EdgeMetrics
from .origin import Origin
from .ratelimit import Limiter, SharedLimiter, WindowLimiter
from .server import PublicHandler, ServerState
from .signing import Verifier
from .store import DiskStore

__all__ = ["Edge", "RunningEdge", "running", "serve"]

log = logging.getLogger("edge_cache")


class Edge:
    """Every part of one edge process, wired together; nothing starts until `start()`."""

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        use_sendfile: bool = True,
        use_fastpath: bool = True,
    ) -> None:
        self.settings = settings
        self.use_fastpath = use_fastpath
        self.metrics = EdgeMetrics(registry or CollectorRegistry())
        self.state = ServerState()
        self.origin = Origin(settings.origin, self.metrics)
        self.index = CacheIndex(settings.cache_max_bytes)
        self.cache = EdgeCache(
            store=DiskStore(settings.cache_dir, settings.slice_bytes),
            origin=self.origin,
            index=self.index,
            metrics=self.metrics,
            slice_bytes=settings.slice_bytes,
            meta_ttl_s=settings.meta_ttl_s,
            negative_ttl_s=settings.negative_ttl_s,
            retries=settings.origin.retries,
            prefetch_max_bytes=settings.prefetch_max_bytes,
        )
        self.verifier = Verifier(settings.keys, settings.clock_skew_s)
        self._redis: aioredis.Redis | None = None
        limiter: Limiter | None = None
        if settings.rate_limit_max > 0:
            local = WindowLimiter(settings.rate_limit_max, settings.rate_limit_window_s)
            limiter = local
            if settings.redis_url:
                self._redis = aioredis.from_url(
                    settings.redis_url, socket_timeout=0.25, socket_connect_timeout=0.25
                )
                limiter = SharedLimiter(
                    self._redis, local, self.metrics.rate_limit_backend_errors.inc
                )
        self.handler = PublicHandler(
            settings=settings,
            cache=self.cache,
            verifier=self.verifier,
            limiter=limiter,
            metrics=self.metrics,
            state=self.state,
            clock=clock,
            use_sendfile=use_sendfile,
        )
        self.fastpath = FastPath(
            settings=settings,
            cache=self.cache,
            verifier=self.verifier,
            limiter=limiter,
            metrics=self.metrics,
            state=self.state,
            clock=clock,
        )

    async def start(self) -> None:
        await self.origin.start()
        await self.cache.start()

    async def close(self) -> None:
        await self.cache.close()
        await self.origin.close()
        if self._redis is not None:
            await self._redis.aclose()

    def admin_app(self) -> web.Application:
        return make_admin_app(
            self.cache, self.metrics, self.settings.admin_token, self.fastpath.flush_metrics
        )


@dataclass(frozen=True)
class RunningEdge:
    edge: Edge
    public_port: int
    admin_port: int

    @property
    def public_url(self) -> str:
        return f"http://{_url_host(self.edge.settings.listen[0])}:{self.public_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{_url_host(self.edge.settings.admin_listen[0])}:{self.admin_port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bound_port(runner: web.BaseRunner) -> int:
    return int(runner.addresses[0][1])


@asynccontextmanager
async def running(edge: Edge, *, reuse_port: bool = False) -> AsyncIterator[RunningEdge]:
    """Start the edge and both listeners; on exit drain, finish in-flight responses, clean up."""
    settings = edge.settings
    await edge.start()
    public = web.ServerRunner(
        web.Server(edge.handler, access_log=None),
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout_s,
    )
    admin = web.AppRunner(edge.admin_app(), handle_signals=False, access_log=None)
    fast_connections: set[FastPathProtocol] = set()
    listener: asyncio.Server | None = None
    flusher = asyncio.create_task(_flush_every(edge.fastpath, 0.5))
    try:
        await public.setup()
        await admin.setup()
        aiohttp_protocol = public.server
        assert aiohttp_protocol is not None
        if edge.use_fastpath:
            # Plain hits are answered by the lean protocol; it hands every other request's
            # connection to aiohttp's protocol (see fastpath.py).
            listener = await asyncio.get_running_loop().create_server(
                lambda: FastPathProtocol(edge.fastpath, aiohttp_protocol, fast_connections),
                *settings.listen,
                reuse_port=reuse_port or None,
                backlog=1024,
            )
            public_port = int(listener.sockets[0].getsockname()[1])
        else:
            await web.TCPSite(public, *settings.listen, reuse_port=reuse_port).start()
            public_port = _bound_port(public)
        await web.TCPSite(admin, *settings.admin_listen).start()
        yield RunningEdge(edge, public_port, _bound_port(admin))
        edge.state.draining = True
        if settings.drain_grace_s:
            # Keep serving while load balancers see /healthz turn 503 and stop sending traffic.
            await asyncio.sleep(settings.drain_grace_s)
    finally:
        edge.state.draining = True
        if listener is not None:
            listener.close()
            await _drain_fast(fast_connections, settings.shutdown_timeout_s)
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        edge.fastpath.flush_metrics()
        await public.cleanup()  # stops accepting, lets in-flight responses finish (bounded)
        await admin.cleanup()
        await edge.close()


async def _flush_every(fastpath: FastPath, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        fastpath.flush_metrics()


async def _drain_fast(connections: set[FastPathProtocol], timeout_s: float) -> None:
    """Close idle fast-path connections; give busy ones up to `timeout_s` to finish."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while connections:
        for connection in list(connections):
            if connection.idle:
                connection.close()
                connections.discard(connection)
        if not connections or loop.time() >= deadline:
            break
        await asyncio.sleep(0.05)
    for connection in list(connections):
        connection.close()


async def serve(settings: EdgeSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(Edge(settings)) as edge:
        log.info(
            "edge serving on %s, admin on %s, cache %s (%d slices)",
            edge.public_url,
            edge.admin_url,
            settings.cache_dir,
            edge.edge.index.slice_count,
        )
        await stop.wait()
        log.info("draining")
