"""The control plane's live resources (pool, Redis, storage, relay, limiters), in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from litestar import Request
from litestar.exceptions import HTTPException
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from edge_cache.ratelimit import Limiter, SharedLimiter, WindowLimiter
from edge_cache.signing import Verifier

from . import db
from .config import ControlSettings, Limit
from .jobs import OutboxRelay
from .metrics import ControlMetrics
from .storage import Storage

__all__ = ["Services", "caller_of"]

log = logging.getLogger("control")

CALLER = "caller"


def caller_of(request: Request[Any, Any, Any]) -> str:
    """The name of the API key the request authenticated with (set by the auth middleware)."""
    return str(request.scope["state"][CALLER])


class RateLimited(HTTPException):
    status_code = 429


class Services:
    def __init__(
        self, settings: ControlSettings, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.metrics = ControlMetrics(registry or CollectorRegistry())
        self.storage = Storage(settings.storage)
        self.signer = Verifier(settings.edge_keys, 0) if settings.edge_keys is not None else None
        self.redis = aioredis.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self.limiters: dict[str, Limiter] = {
            name: self._limiter(name, limit)
            for name, limit in (
                ("global", settings.global_limit),
                ("presign", settings.presign_limit),
                ("promote", settings.promote_limit),
            )
            if limit.max_requests > 0
        }
        self._pool: asyncpg.Pool | None = None
        self._relay: OutboxRelay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    def _limiter(self, name: str, limit: Limit) -> Limiter:
        local = WindowLimiter(limit.max_requests, limit.window_s)

        def fell_back() -> None:
            self.metrics.rate_limit_fallback.inc()

        return SharedLimiter(self.redis, local, fell_back, prefix=f"control:rl:{name}:")

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Services.start() was not awaited")
        return self._pool

    @property
    def relay(self) -> OutboxRelay:
        if self._relay is None:
            raise RuntimeError("Services.start() was not awaited")
        return self._relay

    async def start(self) -> None:
        self._pool = await db.connect_pool(self.settings.postgres_url)
        async with self._pool.acquire() as conn:
            applied = await db.migrate(conn)
        if applied:
            log.info("applied migrations %s", applied)
        await self.storage.start()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._relay = OutboxRelay(self._pool, self.redis, self.metrics)
        self._relay_task = asyncio.create_task(self._relay.run())

    async def close(self) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task
        if self._http is not None:
            await self._http.close()
        await self.storage.close()
        await self.redis.aclose()
        if self._pool is not None:
            await self._pool.close()

    async def readiness(self) -> dict[str, bool]:
        async def postgres() -> bool:
            try:
                return bool(await self.pool.fetchval("SELECT 1"))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return False

        async def redis() -> bool:
            try:
                return bool(await self.redis.ping())
            except (RedisError, OSError):
                return False

        pg_ok, redis_ok = await asyncio.gather(postgres(), redis())
        return {"postgres": pg_ok, "redis": redis_ok}

    async def check_limit(self, request: Request[Any, Any, Any], name: str) -> None:
        """Raise 429 with Retry-After when `name`'s limit for this caller is spent."""
        limiter = self.limiters.get(name)
        if limiter is None:
            return
        identity = request.scope["state"].get(CALLER) or f"ip:{_client(request)}"
        retry_after = await limiter.check(identity, time.time())
        if retry_after is not None:
            self.metrics.rate_limited.labels(name).inc()
            raise RateLimited(
                detail=f"rate limit ({name}) exceeded",
                headers={"Retry-After": str(retry_after)},
            )

    async def purge_edge(self, prefix: str) -> None:
        """Ask the edge to forget an asset's previews; logged, not fatal, when it cannot."""
        base, token = self.settings.edge_admin_base, self.settings.edge_admin_token
        if not base or not token or self._http is None:
            return
        try:
            async with self._http.post(
                f"{base}/purge",
                json={"prefixes": [prefix]},
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                if response.status != 200:
                    log.warning("edge purge of %s answered %s", prefix, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("edge purge of %s failed: %s", prefix, exc)


def _client(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"
