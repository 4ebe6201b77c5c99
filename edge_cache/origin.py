"""The origin: one bucket on one S3-compatible endpoint, read through aioboto3.

Storage-client errors never leave this module: they become NotFound, OriginChanged, BadGateway
or GatewayTimeout. The client is pinned to path-style addressing against the configured endpoint,
so no request can reach another host (virtual-host style would contact `bucket.endpoint`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from botocore.exceptions import BotoCoreError, ClientError
from yarl import URL

from .config import OriginSettings
from .errors import BadGateway, GatewayTimeout, NotFound, OriginChanged

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ["ObjectMeta", "Origin", "OriginStats", "RangeUnusable"]

log = logging.getLogger("edge_cache.origin")

READ_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the edge knows about one version of an origin object."""

    key: str
    etag: str
    size: int
    content_type: str
    last_modified: int | None
    cache_control: str | None = None
    # Names this version on disk: a new ETag gives new slices, never mixed with old ones.
    # Computed once; every slice lookup on the request path uses it.
    object_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"{self.key}\n{self.etag}".encode()).hexdigest()[:32]
        object.__setattr__(self, "object_id", digest)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "etag": self.etag,
            "size": self.size,
            "content_type": self.content_type,
            "last_modified": self.last_modified,
            "cache_control": self.cache_control,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ObjectMeta:
        return cls(
            key=str(data["key"]),
            etag=str(data["etag"]),
            size=int(data["size"]),
            content_type=str(data["content_type"]),
            last_modified=None if data.get("last_modified") is None else int(data["last_modified"]),
            cache_control=data.get("cache_control"),
        )


class RangeUnusable(Exception):
    """The origin cannot answer the range asked for with a 206 (see open_first_range)."""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class EgressRefused(aiohttp.ClientError):
    """A request for anything but the configured endpoint was stopped before it left."""


class _PinnedClientSession:
    """Wraps aiohttp's session: no redirects, no proxies, and only the configured origin."""

    def __init__(self, session: aiohttp.ClientSession, allowed: URL) -> None:
        self._session = session
        self._allowed = allowed

    def request(self, method: str, url: URL, **kwargs: Any) -> Any:
        if (url.scheme, url.host, url.port) != (
            self._allowed.scheme,
            self._allowed.host,
            self._allowed.port,
        ):
            raise EgressRefused(f"refusing to contact {url.origin()}")
        kwargs["allow_redirects"] = False
        kwargs["proxy"] = None
        kwargs["proxy_headers"] = None
        return self._session.request(method, url=url, **kwargs)


def _pinned_http_session(endpoint: str) -> type[AIOHTTPSession]:
    """aiobotocore's HTTP session class, pinned to `endpoint`.

    aiobotocore leaves aiohttp's `allow_redirects` at its default (follow up to 10 redirects, to
    any host) and botocore honours HTTP(S)_PROXY from the environment; the edge must contact its
    bucket's endpoint and nothing else, so both are switched off here.
    """
    allowed = URL(endpoint)

    class PinnedSession(AIOHTTPSession):
        async def _get_session(self, proxy_url: Any) -> Any:
            session = await super()._get_session(None)  # type: ignore[misc]
            return _PinnedClientSession(session, allowed)

    return PinnedSession


class OriginStats:
    """Hooks the origin reports to; the metrics layer implements them."""

    def request(self, op: str, outcome: str, seconds: float) -> None:
        """One origin request finished (headers received or failed)."""

    def bytes_received(self, count: int) -> None:
        """Body bytes read from the origin."""


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | asyncio.TimeoutError) or "Timeout" in type(exc).__name__


def _translate(exc: BaseException) -> Exception:
    """Map storage-client failures to the edge's own errors."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NotFound()
        if code in ("PreconditionFailed", "412") or status == 412:
            return OriginChanged()
        return BadGateway()
    if _is_timeout(exc):
        return GatewayTimeout()
    return BadGateway()


class Origin:
    """Reads object metadata and byte ranges from the previews bucket."""

    def __init__(self, settings: OriginSettings, stats: OriginStats | None = None) -> None:
        self._settings = settings
        self._stats = stats or OriginStats()
        self._client: S3Client | None = None
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        session = aioboto3.Session(
            aws_access_key_id=self._settings.access_key_id,
            aws_secret_access_key=self._settings.secret_access_key,
            region_name=self._settings.region,
        )
        config = AioConfig(
            http_session_cls=_pinned_http_session(self._settings.endpoint),
            s3={"addressing_style": "path"},
            connect_timeout=self._settings.timeout_s,
            read_timeout=self._settings.timeout_s,
            # Retries are ours (bounded, and resumable mid-slice); botocore's would hide them.
            retries={"total_max_attempts": 1},
            max_pool_connections=64,
        )
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self._settings.endpoint, config=config)
        )
        await self._warm_up()

    async def _warm_up(self) -> None:
        """One HeadBucket at start-up: botocore loads the S3 model and resolves the endpoint on
        a client's first call (about 100 ms), and a pooled connection gets opened, so the first
        player request does not pay for either. A failure is logged, not fatal: the origin may
        be briefly away, and requests will say so."""
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                await self.client.head_bucket(Bucket=self._settings.bucket)
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning(
                "origin %s bucket %s not reachable at start-up: %s",
                self._settings.endpoint,
                self._settings.bucket,
                exc,
            )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("Origin.start() was not awaited")
        return self._client

    async def head(self, key: str) -> ObjectMeta:
        """Metadata of the current version of `key`; NotFound when it does not exist."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for attempt in range(self._settings.retries + 1):
            try:
                async with asyncio.timeout(self._settings.timeout_s):
                    head = await self.client.head_object(Bucket=self._settings.bucket, Key=key)
            except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = _translate(exc)
                self._stats.request("head", error.__class__.__name__, loop.time() - started)
                if isinstance(error, NotFound) or attempt == self._settings.retries:
                    raise error from exc
                continue
            meta = _meta_from(key, head)
            if meta is None:
                # e.g. a 3xx, which botocore returns for HEAD without raising: never followed.
                self._stats.request("head", "BadGateway", loop.time() - started)
                raise BadGateway("origin_bad_response")
            self._stats.request("head", "ok", loop.time() - started)
            return meta
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def open_first_range(
        self, key: str, start: int, end: int
    ) -> AsyncIterator[tuple[ObjectMeta, AsyncIterator[bytes]]]:
        """GET bytes [start, end] of whatever version `key` has now, learning its metadata from
        the same response (size from Content-Range): one round trip for a key never seen,
        where HEAD + GET would take two. Raises `RangeUnusable` when S3 cannot answer that
        range with a 206 (an empty object, or `start` past its end): then use `head`.
        """
        response = await self._get_object(
            Key=key, Range=f"bytes={start}-{end}", unsatisfiable=RangeUnusable
        )
        body = response["Body"]
        try:
            match = _CONTENT_RANGE.fullmatch(str(response.get("ContentRange", "")))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 206 or match is None or not response.get("ETag"):
                raise BadGateway("origin_bad_range")
            first, last, size = (int(g) for g in match.groups())
            if first != start or last != min(end, size - 1):
                raise BadGateway("origin_bad_range")
            last_modified = response.get("LastModified")
            meta = ObjectMeta(
                key=key,
                etag=str(response["ETag"]),
                size=size,
                content_type=str(response.get("ContentType") or "application/octet-stream"),
                last_modified=(
                    int(last_modified.timestamp()) if isinstance(last_modified, datetime) else None
                ),
                cache_control=response.get("CacheControl"),
            )
            yield meta, self._chunks(body, last - first + 1)
        finally:
            body.close()

    @asynccontextmanager
    async def open_range(
        self, meta: ObjectMeta, start: int, end: int
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open bytes [start, end] (inclusive) of exactly the version `meta` names.

        `If-Match` pins the ETag: if the object changed, S3 answers 412 and this raises
        OriginChanged instead of returning bytes of another version. Yields an iterator of
        chunks; each read is bounded by the fetch timeout, so a stalled origin raises
        GatewayTimeout. The response is closed on exit, releasing or dropping the connection.
        """
        response = await self._get_object(
            Key=meta.key, Range=f"bytes={start}-{end}", IfMatch=meta.etag
        )
        body = response["Body"]
        try:
            # Never trust the origin's framing blindly: a 200 instead of a 206, or a range other
            # than the one asked for, would put wrong bytes in the cache (nginx aborts likewise).
            expected = f"bytes {start}-{end}/{meta.size}"
            if response.get("ContentRange") != expected or response.get("ETag") != meta.etag:
                raise BadGateway("origin_bad_range")
            yield self._chunks(body, end - start + 1)
        finally:
            body.close()

    async def _get_object(
        self, *, unsatisfiable: type[Exception] | None = None, **params: Any
    ) -> Any:
        """One GetObject within the fetch timeout, counted; failures become the edge's errors,
        and a 416 becomes `unsatisfiable` when the caller has a use for it."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                response = await self.client.get_object(Bucket=self._settings.bucket, **params)
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            status = (
                exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if isinstance(exc, ClientError)
                else None
            )
            error = unsatisfiable() if unsatisfiable and status == 416 else _translate(exc)
            self._stats.request("get", error.__class__.__name__, loop.time() - started)
            raise error from exc
        self._stats.request("get", "ok", loop.time() - started)
        return response

    async def _chunks(self, body: Any, length: int) -> AsyncIterator[bytes]:
        remaining = length
        while remaining > 0:
            try:
                async with asyncio.timeout(self._settings.timeout_s):
                    chunk: bytes = await body.read(min(READ_CHUNK, remaining))
            except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _translate(exc) from exc
            if not chunk:
                raise BadGateway("origin_short_body")
            remaining -= len(chunk)
            self._stats.bytes_received(len(chunk))
            yield chunk


def _meta_from(key: str, head: Any) -> ObjectMeta | None:
    """Metadata from a HEAD answer, or None when it is not a complete 200 answer."""
    status = head.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status != 200 or not head.get("ETag") or not isinstance(head.get("ContentLength"), int):
        return None
    last_modified = head.get("LastModified")
    return ObjectMeta(
        key=key,
        etag=str(head["ETag"]),
        size=int(head["ContentLength"]),
        content_type=str(head.get("ContentType") or "application/octet-stream"),
        last_modified=int(last_modified.timestamp())
        if isinstance(last_modified, datetime)
        else None,
        cache_control=head.get("CacheControl"),
    )
