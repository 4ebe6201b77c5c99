"""Per-client request limits: `max_requests` per `window_s` seconds, fixed windows.

`WindowLimiter` is pure (the caller passes `now`). `SharedLimiter` counts in Redis so several
edge processes share one budget per client, and falls back to the local limiter when Redis fails:
a limiter outage must not become a serving outage.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["Limiter", "SharedLimiter", "WindowLimiter"]

log = logging.getLogger("edge_cache.ratelimit")

KEY_PREFIX = "edge:rl:"


class Limiter(Protocol):
    async def check(self, client: str, now: float) -> int | None:
        """None when the request may proceed, else seconds until the client may retry."""
        ...


class WindowLimiter:
    """Counts requests per client in the current window; memory is bounded by `max_clients`."""

    def __init__(self, max_requests: int, window_s: int, max_clients: int = 200_000) -> None:
        self.max_requests = max_requests
        self.window_s = window_s
        self._max_clients = max_clients
        self._window = -1
        self._counts: dict[str, int] = {}

    def hit(self, client: str, now: float) -> int | None:
        window = int(now // self.window_s)
        if window != self._window:
            self._window = window
            self._counts = {}
        count = self._counts.get(client, 0) + 1
        if count > self.max_requests:
            return _retry_after(now, window, self.window_s)
        if len(self._counts) >= self._max_clients and client not in self._counts:
            # Table full of distinct clients (a flood of spoofed sources): refuse newcomers
            # until the window turns rather than grow without bound.
            return _retry_after(now, window, self.window_s)
        self._counts[client] = count
        return None

    async def check(self, client: str, now: float) -> int | None:
        return self.hit(client, now)


def _retry_after(now: float, window: int, window_s: int) -> int:
    return max(1, math.ceil((window + 1) * window_s - now))


class SharedLimiter:
    """The same fixed windows, counted with INCR in Redis (one key per client and window)."""

    def __init__(
        self,
        client: aioredis.Redis,
        local: WindowLimiter,
        on_backend_error: Callable[[], None] | None = None,
        *,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self._redis = client
        self._local = local
        self._on_error = on_backend_error
        self._prefix = prefix

    async def check(self, client: str, now: float) -> int | None:
        window_s = self._local.window_s
        window = int(now // window_s)
        key = f"{self._prefix}{window}:{client}"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, window_s * 2)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            if self._on_error is not None:
                self._on_error()
            log.warning("shared rate limit unavailable, using the local one: %s", exc)
            return self._local.hit(client, now)
        if int(count) > self._local.max_requests:
            return _retry_after(now, window, window_s)
        return None
