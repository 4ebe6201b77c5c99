"""The transactional outbox: preview jobs recorded in PostgreSQL, published to Redis Streams.

A promote writes its job and an outbox row in the same transaction, so a job exists exactly when
its promote committed. The relay publishes unpublished rows with XADD and marks them published;
while Redis is down it retries with backoff, and nothing is lost: rows simply wait. A crash
between XADD and the mark can publish a row twice, so consumers dedupe by `job_id`
(at-least-once delivery).

Why Redis Streams by hand rather than a queue library: the worker needs consumer groups,
acknowledgement and reclaiming of a dead worker's jobs (XREADGROUP, XACK, XAUTOCLAIM), which
Streams give directly; saq has pinned redis<7 in recent releases, arq's last release predates
redis 6 support, dramatiq is thread-based and taskiq-redis re-runs long jobs after 10 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import db
from .metrics import ControlMetrics

__all__ = ["STREAM_PREFIX", "OutboxRelay", "stream_for"]

log = logging.getLogger("control.jobs")

STREAM_PREFIX = "jobs:"


def stream_for(topic: str) -> str:
    return f"{STREAM_PREFIX}{topic}"


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis_client: aioredis.Redis,
        metrics: ControlMetrics,
        *,
        interval_s: float = 1.0,
        max_backoff_s: float = 10.0,
        batch: int = 100,
    ) -> None:
        self._pool = pool
        self._redis = redis_client
        self._metrics = metrics
        self._interval_s = interval_s
        self._max_backoff_s = max_backoff_s
        self._batch = batch
        self._wake = asyncio.Event()

    def kick(self) -> None:
        """Publish soon (after a promote), rather than at the next interval."""
        self._wake.set()

    async def publish_once(self) -> int:
        """Publish one batch; returns how many messages went out. Raises on Redis errors."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await db.claim_outbox(conn, self._batch)
            if not rows:
                return 0
            async with self._redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xadd(stream_for(row["topic"]), {"job": json.dumps(row["payload"])})
                await pipe.execute()
            await db.mark_published(conn, [row["id"] for row in rows])
        self._metrics.outbox_published.inc(len(rows))
        return len(rows)

    async def run(self) -> None:
        """Publish until cancelled, backing off while Redis or PostgreSQL fail."""
        backoff = self._interval_s
        while True:
            try:
                while await self.publish_once() == self._batch:
                    pass
                backoff = self._interval_s
                self._metrics.outbox_backlog.set(await db.outbox_backlog(self._pool))
            except (RedisError, OSError, asyncpg.PostgresError) as exc:
                self._metrics.outbox_errors.inc()
                log.warning("outbox publish failed, retrying in %.1fs: %s", backoff, exc)
                backoff = min(backoff * 2, self._max_backoff_s)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
