"""The public listener: signed GET/HEAD of objects, byte-exact ranges, from the slice cache."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from aiohttp import web
from multidict import CIMultiDict

from .cache import CacheView, SliceFill
from .clientip import resolve_client_ip
from .config import EdgeSettings
from .errors import EdgeHTTPError, OriginChanged, TooManyRequests, Unauthorized
from .httpspec import (
    ByteRange,
    Full,
    Partial,
    Precondition,
    Unsatisfiable,
    Validators,
    evaluate_preconditions,
    http_date,
    if_range_holds,
    multipart_layout,
    parse_range,
)
from .index import SliceId
from .metrics import EdgeMetrics
from .origin import ObjectMeta
from .paths import parse_target
from .ratelimit import Limiter
from .signing import TokenDenied, Verifier
from .slicing import slice_pieces
from .transmit import BodySink, open_sink

__all__ = ["CacheOutcome", "PublicHandler", "ServerState"]

access_log = logging.getLogger("edge_cache.access")

ALLOW = "GET, HEAD, OPTIONS"
SERVER = "edge-cache"
EXPOSED_HEADERS = "Content-Range, Content-Length, Accept-Ranges, ETag"
CORS_REQUEST_HEADERS = frozenset(
    ["range", "if-range", "if-none-match", "if-modified-since", "if-match", "if-unmodified-since"]
)


def _first_slice(range_header: str | None, slice_bytes: int) -> int | None:
    """The slice a GET's response most likely starts in, before the object's size is known:
    0 without a Range, that of the first byte of `bytes=N-…`, None for suffix ranges."""
    if range_header is None:
        return 0
    unit, _, specs = range_header.partition("=")
    first = specs.split(",", 1)[0].strip().partition("-")[0]
    if unit.strip().lower() != "bytes" or not first.isdigit():
        return None
    return int(first) // slice_bytes


class CacheOutcome(StrEnum):
    HIT = "hit"  # every slice needed was on disk
    MISS = "miss"  # at least one slice came from the origin (or a fill in flight)
    NONE = "none"  # no body from the cache: errors, 304, 416, HEAD of an unknown object


@dataclass
class ServerState:
    """Mutable serving state shared by the listeners."""

    draining: bool = False


@dataclass
class _Exchange:
    """What the access log and metrics need to know about one request."""

    method: str
    path: str = "-"
    status: int = 0
    body_bytes: int = 0
    cache: CacheOutcome = CacheOutcome.NONE
    aborted: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class PublicHandler:
    def __init__(
        self,
        *,
        settings: EdgeSettings,
        cache: CacheView,
        verifier: Verifier,
        limiter: Limiter | None,
        metrics: EdgeMetrics,
        state: ServerState,
        clock: Callable[[], float] = time.time,
        use_sendfile: bool = True,
    ) -> None:
        self._settings = settings
        self._cache = cache
        self._verifier = verifier
        self._limiter = limiter
        self._metrics = metrics
        self._state = state
        self._clock = clock
        self._use_sendfile = use_sendfile
        self._slice_bytes = settings.slice_bytes
        origins = settings.allowed_origins
        self._any_origin = "*" in origins
        self._origins = frozenset(origins)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        exchange = _Exchange(method=request.method)
        try:
            try:
                response = await self._dispatch(request, exchange)
            except EdgeHTTPError as exc:
                response = self._error(request, exc)
            exchange.status = response.status
            return response
        except ConnectionError:
            # The client left mid-response: normal for players (seeks, tab closed). Record it
            # and hand aiohttp a response it will find it cannot send, without a traceback.
            exchange.aborted = exchange.aborted or "client_gone"
            return web.Response(status=exchange.status or 499)
        finally:
            self._record(exchange, loop.time() - started)

    def _record(self, exchange: _Exchange, seconds: float) -> None:
        cache = exchange.cache.value
        self._metrics.requests.labels(exchange.method, str(exchange.status), cache).inc()
        self._metrics.response_bytes.labels(cache).inc(exchange.body_bytes)
        self._metrics.request_seconds.labels(cache).observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            entry = {
                "method": exchange.method,
                "path": exchange.path,
                "status": exchange.status,
                "bytes": exchange.body_bytes,
                "cache": cache,
                "ms": round(seconds * 1000, 2),
            }
            if exchange.aborted:
                entry["aborted"] = exchange.aborted
            access_log.info(json.dumps(entry, separators=(",", ":")))

    def _error(self, request: web.BaseRequest, exc: EdgeHTTPError) -> web.Response:
        headers = self._cors(request)
        if isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after_s)
        return web.Response(status=exc.status, text=exc.reason + "\n", headers=headers)

    # -- routing -------------------------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest, exchange: _Exchange) -> web.StreamResponse:
        method = request.method
        raw = request.raw_path
        if raw == "/healthz" and method in ("GET", "HEAD"):
            if self._state.draining:
                return web.Response(status=503, text="draining\n", headers={"Server": SERVER})
            return web.Response(text="ok\n", headers={"Server": SERVER})
        if method == "OPTIONS":
            return self._options(request)
        if method not in ("GET", "HEAD"):
            exchange.status = 405
            return web.Response(
                status=405, text="method_not_allowed\n", headers={"Allow": ALLOW, "Server": SERVER}
            )
        target = parse_target(raw)
        exchange.path = target.object_path
        client_ip = resolve_client_ip(
            request.remote or "",
            request.headers.get("X-Forwarded-For"),
            self._settings.trusted_proxies,
        )
        now = self._clock()
        if self._limiter is not None:
            retry_after = await self._limiter.check(client_ip, now)
            if retry_after is not None:
                self._metrics.rate_limited.inc()
                raise TooManyRequests(retry_after)
        if target.token is None:
            raise Unauthorized()
        try:
            self._verifier.verify(target.token, target.object_path, client_ip, now)
        except TokenDenied as denied:
            self._metrics.denials.labels(denied.deny_reason.value).inc()
            raise
        return await self._serve_object(request, target.key, exchange)

    # -- CORS ----------------------------------------------------------------------------------

    def _origin_allowed(self, origin: str | None) -> bool:
        return origin is not None and (self._any_origin or origin in self._origins)

    def _cors(self, request: web.BaseRequest) -> CIMultiDict[str]:
        # Every answer starts here; it also names the server as the fast path does (aiohttp's
        # default would advertise Python and aiohttp versions).
        headers: CIMultiDict[str] = CIMultiDict(Server=SERVER)
        if not self._origins:
            return headers
        origin = request.headers.get("Origin")
        if not self._any_origin:
            headers["Vary"] = "Origin"
        if self._origin_allowed(origin):
            headers["Access-Control-Allow-Origin"] = "*" if self._any_origin else str(origin)
            headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return headers

    def _options(self, request: web.BaseRequest) -> web.Response:
        wanted_method = request.headers.get("Access-Control-Request-Method")
        if wanted_method is None:
            return web.Response(status=204, headers={"Allow": ALLOW, "Server": SERVER})
        if not self._origin_allowed(request.headers.get("Origin")) or wanted_method not in (
            "GET",
            "HEAD",
        ):
            return web.Response(status=403, text="cors\n", headers={"Server": SERVER})
        asked = request.headers.get("Access-Control-Request-Headers", "")
        granted = [h.strip() for h in asked.split(",") if h.strip().lower() in CORS_REQUEST_HEADERS]
        headers = self._cors(request)
        headers["Access-Control-Allow-Methods"] = ALLOW
        if granted:
            headers["Access-Control-Allow-Headers"] = ", ".join(granted)
        headers["Access-Control-Max-Age"] = "86400"
        return web.Response(status=204, headers=headers)

    # -- objects -------------------------------------------------------------------------------

    def _representation_headers(
        self, request: web.BaseRequest, meta: ObjectMeta
    ) -> CIMultiDict[str]:
        headers = self._cors(request)
        headers["ETag"] = meta.etag
        if meta.last_modified is not None:
            headers["Last-Modified"] = http_date(meta.last_modified)
        headers["Accept-Ranges"] = "bytes"
        if meta.cache_control:
            headers["Cache-Control"] = meta.cache_control
        return headers

    async def _serve_object(
        self, request: web.BaseRequest, key: str, exchange: _Exchange
    ) -> web.StreamResponse:
        # A second try only when the origin replaced the object between our HEAD and the first
        # slice fetch; nothing has been sent by then, so the client sees the new version whole.
        first_index = (
            _first_slice(request.headers.get("Range"), self._slice_bytes)
            if request.method == "GET"
            else None
        )
        for attempt in range(2):
            if attempt == 0:
                meta = await self._cache.meta_for_get(key, first_index)
            else:
                meta = await self._cache.meta(key)
            try:
                return await self._respond(request, meta, exchange)
            except OriginChanged:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _respond(
        self, request: web.BaseRequest, meta: ObjectMeta, exchange: _Exchange
    ) -> web.StreamResponse:
        headers = self._representation_headers(request, meta)
        validators = Validators(meta.etag, meta.last_modified)
        get = request.headers.get
        precondition = evaluate_preconditions(
            if_match=get("If-Match"),
            if_unmodified_since=get("If-Unmodified-Since"),
            if_none_match=get("If-None-Match"),
            if_modified_since=get("If-Modified-Since"),
            validators=validators,
        )
        if precondition is Precondition.NOT_MODIFIED:
            return web.Response(status=304, headers=headers)
        if precondition is Precondition.FAILED:
            return web.Response(status=412, text="precondition_failed\n", headers=headers)

        range_header = get("Range") if if_range_holds(get("If-Range"), validators) else None
        decision = parse_range(range_header, meta.size, self._settings.max_ranges)
        if isinstance(decision, Unsatisfiable):
            headers["Content-Range"] = f"bytes */{meta.size}"
            return web.Response(status=416, text="range_not_satisfiable\n", headers=headers)

        multipart = None
        if isinstance(decision, Partial) and len(decision.ranges) > 1:
            multipart = multipart_layout(
                decision.ranges, meta.size, meta.content_type, secrets.token_hex(12)
            )
            headers["Content-Type"] = multipart.content_type
            headers["Content-Length"] = str(multipart.content_length)
            ranges = decision.ranges
            status = 206
        else:
            headers["Content-Type"] = meta.content_type
            if isinstance(decision, Partial):
                ranges = decision.ranges
                headers["Content-Range"] = ranges[0].content_range(meta.size)
                status = 206
            else:
                assert isinstance(decision, Full)
                ranges = (ByteRange(0, meta.size - 1),) if meta.size else ()
                status = 200
            headers["Content-Length"] = str(sum(r.length for r in ranges))

        all_resident = all(
            self._cache.is_resident(meta, piece.index)
            for r in ranges
            for piece in slice_pieces(r.start, r.end, self._slice_bytes)
        )
        exchange.cache = CacheOutcome.HIT if all_resident else CacheOutcome.MISS
        headers["X-Cache"] = exchange.cache.value.upper()

        first_fill: SliceFill | None = None
        if request.method == "GET" and ranges:
            first_fill = await self._first_bytes(meta, ranges[0])

        response = web.StreamResponse(status=status, headers=headers)
        exchange.status = status
        await response.prepare(request)
        if request.method == "HEAD" or not ranges:
            await response.write_eof()
            return response

        sink = await open_sink(request, response, self._use_sendfile)
        try:
            if multipart is None:
                await self._send_range(sink, meta, ranges[0], exchange, first_fill)
            else:
                for number, (head, part) in enumerate(multipart.parts):
                    await sink.write(head)
                    exchange.body_bytes += len(head)
                    await self._send_range(
                        sink, meta, part, exchange, first_fill if number == 0 else None
                    )
                await sink.write(multipart.tail)
                exchange.body_bytes += len(multipart.tail)
        except EdgeHTTPError as exc:
            # Headers are out: the only honest signal left is to cut the connection, so the
            # client sees a body shorter than Content-Length rather than a complete-looking one.
            exchange.aborted = exc.reason
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            sink.close()
        await response.write_eof()
        return response

    async def _first_bytes(self, meta: ObjectMeta, first: ByteRange) -> SliceFill | None:
        """Before committing to a status, make sure the first byte can come (or fail cleanly)."""
        index, offset = divmod(first.start, self._slice_bytes)
        if self._cache.is_resident(meta, index):
            return None
        fill = self._cache.fill_for(meta, index)
        await fill.wait_for(offset)
        return fill

    async def _send_range(
        self,
        sink: BodySink,
        meta: ObjectMeta,
        byte_range: ByteRange,
        exchange: _Exchange,
        ahead: SliceFill | None,
    ) -> None:
        pieces = list(slice_pieces(byte_range.start, byte_range.end, self._slice_bytes))
        for position, piece in enumerate(pieces):
            slice_id = SliceId(meta.object_id, piece.index)
            fill = ahead if ahead is not None and ahead.slice_id == slice_id else None
            ahead = None
            fd = None if fill is not None else self._cache.open_resident(meta, piece.index)
            if fd is not None:
                try:
                    await sink.sendfile(fd, piece.start, piece.length)
                finally:
                    os.close(fd)
                exchange.body_bytes += piece.length
                continue
            if fill is None:
                fill = self._cache.fill_for(meta, piece.index)
            if position + 1 < len(pieces):
                # Read ahead one slice, so the next origin fetch overlaps sending this one.
                following = pieces[position + 1].index
                if not self._cache.is_resident(meta, following):
                    ahead = self._cache.fill_for(meta, following)
            async for chunk in fill.read(piece.start, piece.end):
                await sink.write(chunk)
                exchange.body_bytes += len(chunk)
