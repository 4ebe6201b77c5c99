"""The private admin listener: /metrics, POST /purge, POST /prefetch, behind a bearer token."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .cache import EdgeCache
from .errors import BadRequest
from .metrics import EdgeMetrics, scrape_registry
from .paths import check_object_key

__all__ = ["AdminOps", "LocalAdmin", "PurgeOutcome", "make_admin_app"]


@dataclass(frozen=True, slots=True)
class PurgeOutcome:
    purged: int
    unreachable: tuple[int, ...] = ()  # worker slots that could not be told (several workers)


class AdminOps(Protocol):
    async def purge(self, keys: list[str], prefixes: list[str]) -> PurgeOutcome: ...

    async def prefetch(self, keys: list[str]) -> int: ...


class LocalAdmin:
    """Purge and prefetch for a single worker: its cache is the whole cache."""

    def __init__(self, cache: EdgeCache) -> None:
        self._cache = cache

    async def purge(self, keys: list[str], prefixes: list[str]) -> PurgeOutcome:
        return PurgeOutcome(await self._cache.purge(keys, prefixes))

    async def prefetch(self, keys: list[str]) -> int:
        return self._cache.prefetch(keys)


MAX_ITEMS = 10_000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bad(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)


def _auth_middleware(token: str | None) -> Middleware:
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if expected is None or not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return await handler(request)

    return check


async def _json_body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except ValueError:
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    return body


def _string_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings")
    if len(value) > MAX_ITEMS:
        raise BadRequest(f"{name}: at most {MAX_ITEMS} entries")
    return value


def _keys(body: dict[str, Any]) -> list[str]:
    keys = _string_list(body, "keys")
    for key in keys:
        try:
            check_object_key(key)
        except BadRequest:
            raise BadRequest(f"not an object key: {key[:100]!r}") from None
    return keys


def make_admin_app(
    ops: AdminOps,
    metrics: EdgeMetrics,
    token: str | None,
    before_scrape: Callable[[], None] = lambda: None,
) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware(token)], client_max_size=4 << 20)

    async def metrics_handler(request: web.Request) -> web.Response:
        before_scrape()  # batched counts (fast path) are exact when scraped
        response = web.Response(body=generate_latest(scrape_registry(metrics.registry)))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def purge(request: web.Request) -> web.Response:
        try:
            body = await _json_body(request, {"keys", "prefixes"})
            keys = _keys(body)
            prefixes = _string_list(body, "prefixes")
        except BadRequest as exc:
            return _bad(exc.reason)
        if any(not p or p.startswith("/") or not p.isprintable() for p in prefixes):
            return _bad("prefixes must be non-empty key prefixes without a leading /")
        if not keys and not prefixes:
            return _bad("give keys or prefixes")
        outcome = await ops.purge(keys, prefixes)
        if outcome.unreachable:
            # Some worker kept its copies: say so, so the caller retries rather than trusts it.
            return web.json_response(
                {"purged": outcome.purged, "unreachable_workers": list(outcome.unreachable)},
                status=503,
            )
        return web.json_response({"purged": outcome.purged})

    async def prefetch(request: web.Request) -> web.Response:
        try:
            keys = _keys(await _json_body(request, {"keys"}))
        except BadRequest as exc:
            return _bad(exc.reason)
        return web.json_response({"queued": await ops.prefetch(keys)}, status=202)

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post("/purge", purge)
    app.router.add_post("/prefetch", prefetch)
    return app
