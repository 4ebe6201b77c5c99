"""The hit path: a lean HTTP/1.1 protocol for requests the cache can answer from disk at once.

Profiling aiohttp on 16 KiB hits showed no single hot spot, only the sum of a general
framework's per-request work (request objects, header multidicts, response state machines).
This protocol does the minimum for the common case: a GET or HEAD whose token verified before,
whose metadata is fresh in memory and whose bytes are all in resident slices. It answers with
prebuilt header bytes and either one `pread` + write (small bodies) or `os.sendfile`.

Everything else (misses, errors, denials, conditionals, multipart ranges, OPTIONS, odd or
oversized request heads) is handed to aiohttp's protocol for the same connection, together with
the exact bytes not consumed yet; once aiohttp has answered, the connection's next request is
the fast path's to try again (players open with a miss and go on with hits). The rules
therefore live in one place: the fast path only serves what the slow path would serve the same
way, and declines whenever in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from .cache import CacheView
from .clientip import resolve_client_ip
from .config import EdgeSettings
from .errors import EdgeHTTPError
from .httpspec import Full, Partial, http_date, parse_range
from .metrics import EdgeMetrics
from .origin import ObjectMeta
from .paths import Target, parse_target
from .ratelimit import WindowLimiter
from .server import EXPOSED_HEADERS, ServerState
from .signing import Verifier
from .slicing import slice_spans
from .transmit import SocketSink, transport_drained

__all__ = ["FastPath", "FastPathProtocol", "parse_head"]

access_log = logging.getLogger("edge_cache.access")

MAX_HEAD = 16 * 1024
INLINE_BODY = 64 * 1024  # up to this size: one pread + write; above: header + sendfile
# Request headers whose presence sends the request to the full handler.
DECLINE = frozenset(
    {
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
Piece = tuple[int, int, int]  # an open slice descriptor, offset, count
STATUS_LINE = {200: b"HTTP/1.1 200 OK\r\n", 206: b"HTTP/1.1 206 Partial Content\r\n"}


class Head:
    """A parsed request head: method, raw target, lower-cased header names, the Range value."""

    __slots__ = ("headers", "keep_alive", "method", "range", "target")

    def __init__(
        self,
        method: bytes,
        target: str,
        headers: dict[bytes, bytes],
        keep_alive: bool,
        range_value: bytes | None = None,
    ):
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.range = headers.get(b"range") if range_value is None else range_value


def parse_head(head: bytes) -> Head | None:
    """Parse a request head strictly; None for anything a careful parser should judge instead."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    method, raw_target, version = parts
    if method not in (b"GET", b"HEAD") or not raw_target.startswith(b"/"):
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name or b"\t" in name:
            return None  # obs-fold, missing colon, whitespace in a name: aiohttp decides
        key = name.lower()
        if key in headers:
            return None  # repeated headers have combining rules: not for the fast path
        headers[key] = value.strip(b" \t")
    if headers.get(b"content-length", b"0") != b"0":
        return None
    connection = headers.get(b"connection", b"").lower()
    keep_alive = (
        b"close" not in connection if version == b"HTTP/1.1" else b"keep-alive" in connection
    )
    try:
        target = raw_target.decode("ascii")
    except UnicodeDecodeError:
        return None
    return Head(method, target, headers, keep_alive)


class FastPath:
    """Decides whether a request is a plain hit and, if so, produces its response."""

    def __init__(
        self,
        *,
        settings: EdgeSettings,
        cache: CacheView,
        verifier: Verifier,
        limiter: object,
        metrics: EdgeMetrics,
        state: ServerState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._cache = cache
        self._verifier = verifier
        # Only the in-process limiter answers synchronously; a shared one sends requests the
        # slow way (its check is a Redis round trip).
        self._limiter = limiter if isinstance(limiter, WindowLimiter) else None
        self.enabled = limiter is None or self._limiter is not None
        self._metrics = metrics
        self._state = state
        self._clock = clock
        self._slice_bytes = settings.slice_bytes
        self._origins = frozenset(o.encode() for o in settings.allowed_origins)
        self._any_origin = b"*" in self._origins
        self._targets: dict[str, Target] = {}
        self._static: dict[tuple[str, bool], bytes] = {}
        self._date = b""
        self._date_second = -1
        # Counted in plain integers and flushed into the prometheus series in batches: four
        # locked metric updates per request cost more than the rest of a 16 KiB hit.
        self._pending_requests: dict[tuple[bytes, int], int] = {}
        self._pending_bytes = 0
        self._pending_lookups = 0
        self._pending_seconds: list[float] = []

    def _target(self, raw: str) -> Target | None:
        target = self._targets.get(raw)
        if target is None:
            try:
                target = parse_target(raw)
            except EdgeHTTPError:
                return None
            if len(self._targets) >= 8192:
                self._targets.clear()
            self._targets[raw] = target
        return target

    def _date_line(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date

    def _static_headers(self, meta: ObjectMeta, keep_alive: bool) -> bytes:
        """The header lines every response for this object version shares, built once."""
        cached = self._static.get((meta.object_id, keep_alive))
        if cached is not None:
            return cached
        lines = [f"Content-Type: {meta.content_type}", f"ETag: {meta.etag}", "Accept-Ranges: bytes"]
        if meta.last_modified is not None:
            lines.append(f"Last-Modified: {http_date(meta.last_modified)}")
        if meta.cache_control:
            lines.append(f"Cache-Control: {meta.cache_control}")
        lines += ["X-Cache: HIT", "Server: edge-cache"]
        if not keep_alive:
            lines.append("Connection: close")
        built = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        if len(self._static) >= 8192:
            self._static.clear()
        self._static[(meta.object_id, keep_alive)] = built
        return built

    def _cors(self, headers: dict[bytes, bytes]) -> bytes:
        if not self._origins:
            return b""
        lines = b"" if self._any_origin else b"Vary: Origin\r\n"
        origin = headers.get(b"origin")
        if origin is not None and (self._any_origin or origin in self._origins):
            allowed = b"*" if self._any_origin else origin
            lines += b"Access-Control-Allow-Origin: " + allowed + b"\r\n"
            lines += b"Access-Control-Expose-Headers: " + EXPOSED_HEADERS.encode() + b"\r\n"
        return lines

    def answer(self, head: Head, peer: str) -> tuple[bytes, int, int, list[Piece]] | None:
        """(header bytes, status, body length, [(fd, offset, count)]), or None.

        None means "not a plain hit": the full handler must answer. The descriptors in the
        piece list belong to the cache (see `EdgeCache.cached_fd`): use them before awaiting,
        never close them.
        """
        if not self.enabled or self._state.draining:
            return None
        target = self._target(head.target)
        if target is None or target.token is None or not DECLINE.isdisjoint(head.headers):
            return None
        now = self._clock()
        forwarded = head.headers.get(b"x-forwarded-for")
        client = resolve_client_ip(
            peer,
            forwarded.decode("latin-1") if forwarded is not None else None,
            self._settings.trusted_proxies,
        )
        try:
            self._verifier.verify(target.token, target.object_path, client, now)
        except EdgeHTTPError:
            return None
        meta = self._cache.fresh_meta(target.key)
        if meta is None:
            return None
        first, last, status = self._range(head.range, meta.size)
        if status == 0:
            return None  # multipart, 416, empty objects: the full handler
        # Plain integers from here on: frozen dataclasses cost about a microsecond each to
        # build, a visible share of a 16 KiB hit.
        spans = slice_spans(first, last, self._slice_bytes)
        opened: list[Piece] = []
        if head.method == b"HEAD":  # no bytes to send: residency is all a HEAD needs to know
            if not all(self._cache.is_resident(meta, index) for index, _, _ in spans):
                return None
        else:
            for index, offset, count in spans:
                fd = self._cache.cached_fd(meta, index)
                if fd is None:
                    return None  # not on disk: the full handler fetches it
                opened.append((fd, offset, count))
        if self._limiter is not None and self._limiter.hit(client, now) is not None:
            return None  # the full handler answers 429 (and counts it)
        self._pending_lookups += len(opened)
        length = last - first + 1
        lines = [
            STATUS_LINE[status],
            self._static_headers(meta, head.keep_alive),
            self._cors(head.headers),
            self._date_line(),
            b"Content-Length: %d\r\n" % length,
        ]
        if status == 206:
            lines.append(b"Content-Range: bytes %d-%d/%d\r\n" % (first, last, meta.size))
        lines.append(b"\r\n")
        return b"".join(lines), status, length, opened

    def _range(self, header: bytes | None, size: int) -> tuple[int, int, int]:
        """The one byte range to send, inclusive, and its status (0: not for the fast path)."""
        if header is None:
            return 0, size - 1, (200 if size > 0 else 0)
        if header.startswith(b"bytes="):  # the players' usual `bytes=a-b`, parsed directly
            low, dash, high = header[6:].partition(b"-")
            if (
                dash
                and 0 < len(low) <= 18
                and 0 < len(high) <= 18
                and low.isdigit()  # bytes.isdigit(): ASCII digits only
                and high.isdigit()
            ):
                start, end = int(low), int(high)
                if start <= end and start < size:
                    return start, min(end, size - 1), 206
        decision = parse_range(header.decode("latin-1"), size, self._settings.max_ranges)
        if isinstance(decision, Partial) and len(decision.ranges) == 1:
            return decision.ranges[0].start, decision.ranges[0].end, 206
        if isinstance(decision, Full) and size > 0:
            return 0, size - 1, 200
        return 0, 0, 0

    def record(self, method: bytes, target: str, status: int, body: int, started: float) -> None:
        """Count one answered hit (`started`: its `time.perf_counter()` on arrival)."""
        seconds = time.perf_counter() - started
        key = (method, status)
        self._pending_requests[key] = self._pending_requests.get(key, 0) + 1
        self._pending_bytes += body
        self._pending_seconds.append(seconds)
        if len(self._pending_seconds) >= 4096:
            self.flush_metrics()
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "method": method.decode(),
                        "path": self._logged_path(target),
                        "status": status,
                        "bytes": body,
                        "cache": "hit",
                        "ms": round(seconds * 1000, 2),
                    },
                    separators=(",", ":"),
                )
            )

    def _logged_path(self, raw_target: str) -> str:
        """The object path, as the full handler logs it: never a token (query or path form)."""
        target = self._target(raw_target)
        return target.object_path if target is not None else raw_target.partition("?")[0]

    def flush_metrics(self) -> None:
        """Move the batched counts into the prometheus series (also done before each scrape)."""
        metrics = self._metrics
        for (method, status), count in self._pending_requests.items():
            metrics.requests.labels(method.decode(), str(status), "hit").inc(count)
        self._pending_requests.clear()
        if self._pending_bytes:
            metrics.response_bytes.labels("hit").inc(self._pending_bytes)
            self._pending_bytes = 0
        if self._pending_lookups:
            metrics.slice_lookups.labels("hit").inc(self._pending_lookups)
            self._pending_lookups = 0
        histogram = metrics.request_seconds.labels("hit")
        for seconds in self._pending_seconds:
            histogram.observe(seconds)
        self._pending_seconds.clear()


# Bytes one connection may sendfile per wake-up before the loop serves the others (nginx's
# sendfile_max_chunk): with 16 connections of 4 MiB bodies, 1 MiB measured 5-10 % faster than
# filling each socket as far as it goes.
SEND_BUDGET = 1 << 20
# Bodies that take several sendfile calls (more than one slice, or more than SEND_BUDGET) are
# sent corked (nginx's tcp_nopush): header and file bytes leave in full segments and the tail
# is flushed when uncorked. Without it, TCP_NODELAY sent the header and every sendfile tail as
# small segments, and 4 MiB ranges over 16 connections ran at 0.8 of nginx. A body of one
# sendfile call is not corked: for 1 MiB GETs corking doubled the median latency (8 -> 17 ms).
_CORK = getattr(socket, "TCP_CORK", None)


def _push(sockfd: int, pending: list[Any]) -> bool:
    """Write `pending` (memoryviews, and [fd, offset, count] lists for sendfile) until the
    socket would block; True when everything is sent. Sent items are removed from the list."""
    budget = SEND_BUDGET
    while pending:
        item = pending[0]
        try:
            if isinstance(item, memoryview):
                sent = os.write(sockfd, item)
                if sent < len(item):
                    pending[0] = item[sent:]
                    continue
            else:
                if budget <= 0:
                    return False
                sent = os.sendfile(sockfd, item[0], item[1], min(item[2], budget))
                budget -= sent
                if sent == 0:
                    raise ConnectionAbortedError("slice file shorter than its index entry")
                if sent < item[2]:
                    item[1] += sent
                    item[2] -= sent
                    continue
        except BlockingIOError:
            return False
        pending.pop(0)
    return True


class FastPathProtocol(asyncio.Protocol):
    """One connection: plain hits answered here, the rest handed to aiohttp's protocol."""

    def __init__(
        self,
        fast: FastPath,
        fallback: Callable[[], asyncio.Protocol],
        connections: set[FastPathProtocol],
    ) -> None:
        self._fast = fast
        self._fallback_factory = fallback
        self._connections = connections
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._busy = False  # a large body is being sent by a task
        self._write_paused = False
        # aiohttp's protocol for this connection while it answers a request the fast path
        # declined; None when no such request is in progress (see `_hand_over`).
        self._slow: Any = None
        self._task: asyncio.Task[None] | None = None
        self._sockfd = -1
        self._sock: Any = None
        self._corking = False
        self._memo: tuple[bytes, Head] | None = None  # last head parsed, without its Range line

    def _cork(self, on: bool) -> None:
        if self._corking and _CORK is not None and self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1 if on else 0)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._sock = sock
        self._sockfd = sock.fileno() if sock is not None else -1
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._task is not None:
            self._task.cancel()
        if self._slow is not None:
            self._slow.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        slow = self._slow
        if slow is not None and not _parked(slow):
            slow.data_received(data)  # aiohttp is in the middle of a request: its bytes
            return
        self._buffer += data
        self._serve_buffered()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._slow is not None:
            self._slow.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._slow is not None:
            self._slow.resume_writing()
        self._serve_buffered()

    def eof_received(self) -> bool | None:
        if self._slow is not None:
            return self._slow.eof_received()  # type: ignore[no-any-return]
        return None  # close when the client has nothing more to send

    @property
    def idle(self) -> bool:
        return not self._busy and not self._buffer and (self._slow is None or _parked(self._slow))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- serving ---------------------------------------------------------------------------------

    def _serve_buffered(self) -> None:
        transport = self._transport
        while transport is not None and not self._busy and not self._write_paused:
            if transport.is_closing() or (self._slow is not None and not _parked(self._slow)):
                return
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._hand_over()
                return
            started = time.perf_counter()
            head = self._head(bytes(self._buffer[:end]))
            answer = self._fast.answer(head, self._peer) if head is not None else None
            if head is None or answer is None:
                self._hand_over()
                return
            if self._slow is not None:
                self._take_back()
            del self._buffer[: end + 4]
            header, status, length, pieces = answer
            if not pieces:  # HEAD
                transport.write(header)
            elif length <= INLINE_BODY:
                # One write of header and body: for small bodies a second syscall and a second
                # TCP segment cost more than the copy sendfile would save.
                body = [header]
                for fd, offset, count in pieces:
                    body.append(os.pread(fd, count, offset))
                transport.write(b"".join(body))
            else:
                pending: list[Any] = [memoryview(header)] + [list(p) for p in pieces]
                # Corked only when the body takes several sendfile calls (see _CORK).
                self._corking = len(pieces) > 1 or length > SEND_BUDGET
                if transport.get_write_buffer_size() == 0 and self._sockfd >= 0:
                    # Nothing queued in the transport, so the socket is ours to write to:
                    # header and sendfile straight away, as far as the socket takes them.
                    self._cork(True)
                    try:
                        done = _push(self._sockfd, pending)
                    except OSError:
                        transport.abort()
                        return
                    if done:
                        self._cork(False)
                else:
                    done = False
                if not done:
                    # The rest waits for the socket: own descriptors, which eviction cannot close.
                    for item in pending:
                        if isinstance(item, list):
                            item[0] = os.dup(item[0])
                    self._busy = True
                    self._task = asyncio.ensure_future(
                        self._send_rest(pending, head, status, length, started)
                    )
                    return
            self._fast.record(head.method, head.target, status, length, started)
            if not head.keep_alive:
                transport.close()
                return

    async def _send_rest(
        self, pending: list[Any], head: Head, status: int, length: int, started: float
    ) -> None:
        transport = self._transport
        assert transport is not None
        transport.pause_reading()
        sink = None
        try:
            await transport_drained(transport)  # only waits when we found it non-empty
            sink = SocketSink(asyncio.get_running_loop(), self._sockfd)
            self._cork(True)
            while not _push(sink.fd, pending):
                await sink.writable()
            self._cork(False)
            self._fast.record(head.method, head.target, status, length, started)
        except OSError:
            transport.abort()
            return
        finally:
            for item in pending:
                if isinstance(item, list):
                    os.close(item[0])
            if sink is not None:
                sink.close()
            self._busy = False
            self._task = None
        if not head.keep_alive:
            transport.close()
            return
        if not transport.is_closing():
            transport.resume_reading()
            self._serve_buffered()

    def _head(self, raw: bytes) -> Head | None:
        """`parse_head(raw)`, reusing this connection's last parse when only the Range differs
        (players and wrk send the same head with a new Range each time)."""
        start = raw.find(b"\r\nRange: ")
        if start < 0:
            return parse_head(raw)
        stop = raw.find(b"\r\n", start + 2)
        if stop < 0:
            rest, value = raw[:start], raw[start + 9 :]
        else:
            rest, value = raw[:start] + raw[stop:], raw[start + 9 : stop]
        memo = self._memo
        if memo is None or memo[0] != rest:
            base = parse_head(rest)
            if base is None or b"range" in base.headers:
                return parse_head(raw)  # e.g. a second Range: the strict parser declines it
            memo = self._memo = (rest, base)
        base = memo[1]
        return Head(base.method, base.target, base.headers, base.keep_alive, value.strip(b" \t"))

    def _hand_over(self) -> None:
        """Give the buffered bytes to aiohttp's protocol for this connection (made on first
        need); the connection comes back to the fast path once aiohttp has answered."""
        transport = self._transport
        if transport is None:
            return
        if self._slow is None:
            self._slow = self._fallback_factory()
            self._slow.connection_made(transport)
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            self._slow.data_received(data)

    def _take_back(self) -> None:
        """Detach aiohttp's protocol, parked between requests, before the fast path answers:
        left attached, its keep-alive timer would close a connection that is in use."""
        slow, self._slow = self._slow, None
        slow.transport = None  # so that its shutdown does not close our connection
        slow.connection_lost(None)


def _parked(protocol: Any) -> bool:
    """aiohttp's protocol has answered every request it was given and waits for the next one,
    holding no unparsed bytes. (Private attributes of aiohttp's RequestHandler: without them
    this says False, and a connection handed to aiohttp simply stays there.)"""
    waiter = getattr(protocol, "_waiter", None)
    return (
        waiter is not None
        and not waiter.done()
        and not getattr(protocol, "_messages", True)
        and not getattr(protocol, "_request_in_progress", True)
    )
