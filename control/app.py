"""The Litestar application: API-key auth, rate limits, CORS, metrics, OpenAPI docs."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry

from .config import ControlSettings
from .routes import ROUTES
from .services import CALLER, RateLimited, Services

__all__ = ["create_app"]

log = logging.getLogger("control.api")
access_log = logging.getLogger("control.access")

PUBLIC_PATHS = frozenset({"/api/health", "/api/ready"})
PUBLIC_PREFIXES = ("/api/docs",)


def _presented_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key")


def _auth_and_limits(services: Services) -> Any:
    """ASGI middleware: identify the API key, apply the global limit, refuse without a key."""
    keys = services.settings.api_keys

    def middleware(app: ASGIApp) -> ASGIApp:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            raw = cast("dict[str, Any]", scope)
            path = raw.get("path", "")
            if raw["type"] != "http" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
                await app(scope, receive, send)
                return
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            presented = _presented_key(headers)
            caller = None
            if presented:
                digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
                # Compare against every key so the time taken does not depend on which matched.
                for key in keys:
                    if hmac.compare_digest(digest, key.digest):
                        caller = key.name
            raw.setdefault("state", {})[CALLER] = caller
            request: Request[Any, Any, Any] = Request(scope)
            try:
                await services.check_limit(request, "global")
            except RateLimited as exc:
                await _send_error(send, 429, exc.detail, exc.headers or {})
                return
            if caller is None:
                await _send_error(
                    send, 401, "an API key is required", {"WWW-Authenticate": "Bearer"}
                )
                return
            await app(scope, receive, send)

        return handle

    return middleware


async def _send_error(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"status_code": status, "detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send(cast(Any, {"type": "http.response.start", "status": status, "headers": raw}))
    await send(cast(Any, {"type": "http.response.body", "body": body}))


def _observe(services: Services) -> Any:
    """ASGI middleware: per-route metrics and one JSON access-log line per request."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            raw = cast("dict[str, Any]", scope)
            if raw["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                seconds = time.perf_counter() - started
                route = raw.get("path_template") or "unmatched"
                services.metrics.requests.labels(raw["method"], route, str(status)).inc()
                services.metrics.request_seconds.labels(route).observe(seconds)
                access_log.info(
                    json.dumps(
                        {
                            "method": raw["method"],
                            "route": route,
                            "status": status,
                            "ms": round(seconds * 1000, 2),
                            "key": raw.get("state", {}).get(CALLER),
                        },
                        separators=(",", ":"),
                    )
                )

        return handle

    return middleware


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response({"status_code": 500, "detail": "internal error"}, status_code=500)


def create_app(settings: ControlSettings, *, registry: CollectorRegistry | None = None) -> Litestar:
    services = Services(settings, registry)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.close()

    cors = (
        CORSConfig(
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            max_age=3600,
        )
        if settings.allowed_origins
        else None
    )
    app = Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan],
        middleware=[_observe(services), _auth_and_limits(services)],
        cors_config=cors,
        request_max_body_size=settings.max_body_bytes,
        # Keyed by status, not by Exception: Litestar's own 4xx errors must keep their handler.
        exception_handlers={500: _unexpected},
        openapi_config=OpenAPIConfig(
            title="video-edge control plane",
            version="0.1.0",
            path="/api/docs",
            render_plugins=[SwaggerRenderPlugin(path="/")],
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="http", scheme="bearer", description="CONTROL_API_KEYS"
                    )
                }
            ),
            security=[{"apiKey": []}],
        ),
        debug=False,
    )
    app.state.services = services
    return app
