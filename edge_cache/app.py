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

from .admin import AdminOps, LocalAdmin, make_admin_app
from .cache import CacheView, EdgeCache
from .config import EdgeSettings
from .fastpath import FastPath, FastPathProtocol
from .index import CacheIndex
from .metrics import EdgeMetrics
from .origin import Origin
from .peers import PeerCache, PeerNetwork, ShardedCache, make_peer_app
from .ratelimit import Limiter, SharedLimiter, WindowLimiter
from .server import PublicHandler, ServerState
from .sharding import Placement, layout_root
from .signing import Verifier
from .store import DiskStore

__all__ = ["Edge", "RunningEdge", "running", "serve"]

log = logging.getLogger("edge_cache")


class Edge:
    """Every part of one edge process, wired together; nothing starts until `start()`.

    With a `placement` (one worker of several), `cache` holds only the keys this worker owns
    and `view` routes every other key to its owner (see peers.py).
    """

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        use_sendfile: bool = True,
        use_fastpath: bool = True,
        placement: Placement | None = None,
    ) -> None:
        self.settings = settings
        self.use_fastpath = use_fastpath
        self.placement = placement
        # How often batched state goes out (metrics, notes to other workers); tests that
        # want to flush by hand set it high.
        self.flush_interval_s = 0.25
        self.metrics = EdgeMetrics(registry or CollectorRegistry())
        self.state = ServerState()
        self.origin = Origin(settings.origin, self.metrics)
        slot, workers = (placement.slot, placement.workers) if placement else (0, 1)
        self.index = CacheIndex(
            placement.share_of(settings.cache_max_bytes) if placement else settings.cache_max_bytes
        )
        self.network: PeerNetwork | None = None
        if placement is not None and workers > 1:
            # A peer may wait on the owner's origin fetch, retries included.
            origin = settings.origin
            self.network = PeerNetwork(placement, origin.timeout_s * (origin.retries + 1) + 2)

        own_root = layout_root(settings.cache_dir, slot, workers)

        def cache_with(index: CacheIndex, persist: bool) -> EdgeCache:
            return EdgeCache(
                store=DiskStore(own_root, settings.slice_bytes),
                origin=self.origin,
                index=index,
                metrics=self.metrics,
                slice_bytes=settings.slice_bytes,
                meta_ttl_s=settings.meta_ttl_s,
                negative_ttl_s=settings.negative_ttl_s,
                retries=settings.origin.retries,
                prefetch_max_bytes=settings.prefetch_max_bytes,
                persist=persist,
                on_removed=self.network.removed if self.network else lambda removed: None,
            )

        self.cache = cache_with(self.index, persist=True)
        self.view: CacheView = self.cache
        self.admin_ops: AdminOps = LocalAdmin(self.cache)
        self.peer_cache: PeerCache | None = None
        self._fallback: EdgeCache | None = None
        if placement is not None and self.network is not None:
            self._fallback = cache_with(CacheIndex(0), persist=False)
            self.peer_cache = PeerCache(
                placement=placement,
                network=self.network,
                stores={
                    s: DiskStore(layout_root(settings.cache_dir, s, workers), settings.slice_bytes)
                    for s in placement.peers
                },
                fallback=self._fallback,
                metrics=self.metrics,
                slice_bytes=settings.slice_bytes,
                meta_ttl_s=settings.meta_ttl_s,
                retries=settings.origin.retries,
            )
            sharded = ShardedCache(self.cache, self.peer_cache, self.network, placement)
            self.view = sharded
            self.admin_ops = sharded
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
            cache=self.view,
            verifier=self.verifier,
            limiter=limiter,
            metrics=self.metrics,
            state=self.state,
            clock=clock,
            use_sendfile=use_sendfile,
        )
        self.fastpath = FastPath(
            settings=settings,
            cache=self.view,
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
        if self.peer_cache is not None:
            await self.peer_cache.close()
        if self._fallback is not None:
            await self._fallback.close()
        await self.cache.close()
        if self.network is not None:
            await self.network.close()
        await self.origin.close()
        if self._redis is not None:
            await self._redis.aclose()

    def admin_app(self) -> web.Application:
        return make_admin_app(
            self.admin_ops, self.metrics, self.settings.admin_token, self.fastpath.flush_metrics
        )

    async def flush(self) -> None:
        """Publish batched state: the fast path's counts, notes to the other workers."""
        self.fastpath.flush_metrics()
        if self.network is not None:
            await self.network.flush()


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
    peer: web.AppRunner | None = None
    fast_connections: set[FastPathProtocol] = set()
    listener: asyncio.Server | None = None
    flusher = asyncio.create_task(_flush_every(edge, edge.flush_interval_s))
    try:
        if edge.placement is not None and edge.peer_cache is not None:
            # The other workers' way in: up before the public port, down after it drained.
            peer = web.AppRunner(
                make_peer_app(edge.cache, edge.peer_cache),
                handle_signals=False,
                access_log=None,
                shutdown_timeout=settings.shutdown_timeout_s,
            )
            await peer.setup()
            path = edge.placement.socket_path(edge.placement.slot)
            path.unlink(missing_ok=True)
            await web.UnixSite(peer, str(path)).start()
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
        await web.TCPSite(admin, *settings.admin_listen, reuse_port=reuse_port).start()
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
        await public.cleanup()  # stops accepting, lets in-flight responses finish (bounded)
        await admin.cleanup()
        with contextlib.suppress(Exception):
            await edge.flush()
        if peer is not None:
            await peer.cleanup()
        await edge.close()


async def _flush_every(edge: Edge, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await edge.flush()
        except Exception:  # a flush must never stop the next one
            log.exception("flush failed")


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


async def serve(
    settings: EdgeSettings,
    placement: Placement | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM or SIGINT (or `stop`), then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    edge = Edge(settings, placement=placement)
    async with running(edge, reuse_port=placement is not None) as live:
        log.info(
            "edge serving on %s, admin on %s, cache %s (%d slices)",
            live.public_url,
            live.admin_url,
            edge.cache.store.root,
            edge.index.slice_count,
        )
        await stop.wait()
        log.info("draining")
