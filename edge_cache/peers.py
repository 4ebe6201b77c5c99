"""Several workers, one disk cache: how a worker serves keys that another worker owns.

Ownership (sharding.py) decides who fills and evicts a key's slices. A worker that does not own
a key:
- serves its hits straight from the owner's slice files (they are complete once visible, being
  renamed into place) and tells the owner, in batches, which slices it used, so the owner's LRU
  sees every hit;
- gets metadata and missing slices from the owner over the owner's private unix socket; the
  owner streams a slice while its single fill runs, so 50 misses spread over 4 workers still
  cost one origin request;
- closes descriptors of slices the owner announces as removed, so evicted files do not linger;
- falls back to the origin, uncached, while the owner is unreachable (restarting), so a rolling
  restart costs no errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from .admin import PurgeOutcome
from .cache import FD_CACHE_SIZE, EdgeCache, InFlight, SliceFill
from .descriptors import DescriptorCache
from .errors import (
    BadGateway,
    BadRequest,
    EdgeHTTPError,
    GatewayTimeout,
    NotFound,
    OriginChanged,
)
from .index import SliceId
from .metrics import EdgeMetrics
from .origin import ObjectMeta
from .sharding import Placement, owner_of
from .slicing import slice_count, slice_length
from .store import DiskStore

__all__ = [
    "PeerCache",
    "PeerLink",
    "PeerNetwork",
    "PeerUnavailable",
    "ShardedCache",
    "make_peer_app",
]

T = TypeVar("T")
log = logging.getLogger("edge_cache.peers")

META_HEADER = "X-Edge-Meta"
# Metadata this worker keeps of other workers' keys (oldest forgotten first): a hit needs it in
# memory, a miss asks the owner again.
MAX_KNOWN_KEYS = 100_000
_CHUNK = 256 * 1024
# The owner answers a status instead of bytes for these; anything else is a broken stream.
_STATUS_ERRORS: dict[int, type[EdgeHTTPError]] = {
    400: BadRequest,
    404: NotFound,
    409: OriginChanged,
    502: BadGateway,
    504: GatewayTimeout,
}


class PeerUnavailable(Exception):
    """The owner worker cannot be reached at all (not started yet, restarting, gone)."""


class PeerStreamBroken(BadGateway):
    """The connection to the owner broke mid-answer; worth asking again from where it stopped."""

    reason = "peer_stream_broken"


def _slices_json(slice_ids: Iterable[SliceId]) -> list[list[Any]]:
    return [[s.object_id, s.index] for s in slice_ids]


def _slices_from_json(items: Any) -> list[SliceId]:
    if not isinstance(items, list):
        raise BadRequest("slices must be a list")
    return [SliceId(str(object_id), int(index)) for object_id, index in items]


def _error_from(status: int, body: bytes) -> EdgeHTTPError:
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        reason = None
    return _STATUS_ERRORS.get(status, BadGateway)(reason if isinstance(reason, str) else None)


class PeerLink:
    """The client side of one owner's private socket."""

    def __init__(self, slot: int, path: Path, read_timeout_s: float) -> None:
        self.slot = slot
        self.path = path
        self._read_timeout_s = read_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.path), limit=256),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=1.0, sock_read=self._read_timeout_s
                ),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @asynccontextmanager
    async def _request(
        self, method: str, path: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self._client().request(method, f"http://worker{path}", **kwargs) as resp:
                yield resp
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise PeerUnavailable(f"worker {self.slot}: {exc}") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PeerStreamBroken() from exc

    async def meta(self, key: str) -> tuple[ObjectMeta, float]:
        """The owner's current metadata of `key` and how old its last origin check is."""
        async with self._request("GET", "/meta", params={"key": key}) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise _error_from(resp.status, body)
        data = json.loads(body)
        return ObjectMeta.from_json(data["meta"]), float(data["age"])

    @asynccontextmanager
    async def slice(
        self, key: str, index: int, object_id: str | None, start: int
    ) -> AsyncIterator[tuple[ObjectMeta, AsyncIterator[bytes]]]:
        """Bytes [start, end) of a slice, streamed by the owner as its fill receives them.

        Without `object_id` the owner picks the version (a cold key: its metadata comes with
        the bytes); with one, a different current version is `OriginChanged`.
        """
        params: dict[str, str] = {"key": key, "index": str(index), "start": str(start)}
        if object_id is not None:
            params["object_id"] = object_id
        async with self._request("GET", "/slice", params=params) as resp:
            if resp.status != 200:
                raise _error_from(resp.status, await resp.read())
            meta = ObjectMeta.from_json(json.loads(resp.headers[META_HEADER]))

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise PeerStreamBroken() from exc

            yield meta, chunks()

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._request("POST", path, json=body) as resp:
            data = await resp.read()
            if resp.status >= 300:
                raise _error_from(resp.status, data)
        result = json.loads(data)
        return result if isinstance(result, dict) else {}


class PeerNetwork:
    """Links to every other worker, plus the batched notes sent to them (touches, removals)."""

    def __init__(self, placement: Placement, read_timeout_s: float) -> None:
        self.placement = placement
        self.links = {
            slot: PeerLink(slot, placement.socket_path(slot), read_timeout_s)
            for slot in placement.peers
        }
        self._touched: dict[int, set[SliceId]] = {slot: set() for slot in placement.peers}
        self._removed: list[SliceId] = []

    def touched(self, owner: int, slice_id: SliceId) -> None:
        self._touched[owner].add(slice_id)

    def removed(self, slice_ids: tuple[SliceId, ...]) -> None:
        self._removed.extend(slice_ids)

    async def flush(self) -> None:
        """Send the batched notes; a worker that is down misses them (it rescans on start)."""
        sends: list[Coroutine[Any, Any, dict[str, Any]]] = []
        for slot, touched in self._touched.items():
            if touched:
                sends.append(self.links[slot].post("/touch", {"slices": _slices_json(touched)}))
                self._touched[slot] = set()
        if self._removed:
            body = {"slices": _slices_json(self._removed)}
            self._removed = []
            sends.extend(link.post("/removed", body) for link in self.links.values())
        for outcome in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, PeerUnavailable | EdgeHTTPError
            ):
                raise outcome

    async def broadcast(
        self, path: str, body: dict[str, Any]
    ) -> dict[int, dict[str, Any] | Exception]:
        slots = list(self.links)
        results = await asyncio.gather(
            *(self.links[slot].post(path, body) for slot in slots), return_exceptions=True
        )
        answers: dict[int, dict[str, Any] | Exception] = {}
        for slot, result in zip(slots, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            answers[slot] = result
        return answers

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()


async def _bytes_of(fill: SliceFill, start: int) -> AsyncIterator[bytes]:
    async for part in fill.read(start, fill.length):
        yield bytes(part)


@dataclass(slots=True)
class _Known:
    meta: ObjectMeta
    checked_at: float


class PeerCache:
    """The cache as seen by a worker for the keys other workers own (see the module text)."""

    def __init__(
        self,
        *,
        placement: Placement,
        network: PeerNetwork,
        stores: dict[int, DiskStore],
        fallback: EdgeCache,
        metrics: EdgeMetrics,
        slice_bytes: int,
        meta_ttl_s: float,
        retries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._workers = placement.workers
        self._network = network
        self._stores = stores
        self._fallback = fallback
        self._metrics = metrics
        self._slice_bytes = slice_bytes
        self._meta_ttl_s = meta_ttl_s
        self._retries = retries
        self._clock = clock
        self._meta: dict[str, _Known] = {}
        self._pending: InFlight[ObjectMeta] = InFlight()
        self._fills: dict[SliceId, SliceFill] = {}
        self._fds = DescriptorCache(FD_CACHE_SIZE)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _owner(self, key: str) -> int:
        return owner_of(key, self._workers)

    def _link(self, key: str) -> PeerLink:
        return self._network.links[self._owner(key)]

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _count(self, op: str, outcome: str) -> None:
        self._metrics.peer_requests.labels(op, outcome).inc()

    # -- metadata ------------------------------------------------------------------------------

    def fresh_meta(self, key: str) -> ObjectMeta | None:
        known = self._meta.get(key)
        if known is not None and self._clock() - known.checked_at < self._meta_ttl_s:
            return known.meta
        return None

    async def meta(self, key: str) -> ObjectMeta:
        fresh = self.fresh_meta(key)
        if fresh is not None:
            return fresh
        return await self._pending.join(key, lambda: self._spawn(self._load_meta(key)))

    async def _load_meta(self, key: str) -> ObjectMeta:
        try:
            meta, age = await self._link(key).meta(key)
            self._count("meta", "ok")
        except PeerUnavailable:
            self._count("meta", "unavailable")
            self._metrics.peer_fallbacks.inc()
            meta, age = await self._fallback.meta(key), 0.0
        except EdgeHTTPError as exc:
            self._count("meta", "error")
            if isinstance(exc, NotFound):
                self._meta.pop(key, None)
            raise
        # The owner's answer is already `age` old: it stays fresh here only as long as there.
        self._remember(key, meta, self._clock() - min(age, self._meta_ttl_s))
        return meta

    def _remember(self, key: str, meta: ObjectMeta, checked_at: float) -> None:
        self._meta.pop(key, None)  # re-inserted last: the bound forgets the oldest
        self._meta[key] = _Known(meta, checked_at)
        if len(self._meta) > MAX_KNOWN_KEYS:
            del self._meta[next(iter(self._meta))]

    async def meta_for_get(self, key: str, first_index: int | None) -> ObjectMeta:
        """A cold key costs one request to its owner, which answers with the metadata and the
        first slice's bytes (one origin request in all)."""
        if first_index is None or key in self._meta or key in self._pending:
            return await self.meta(key)

        def start() -> asyncio.Future[ObjectMeta]:
            ready: asyncio.Future[ObjectMeta] = asyncio.get_running_loop().create_future()
            self._spawn(self._cold(key, first_index, ready))
            return ready

        return await self._pending.join(key, start)

    async def _cold(self, key: str, index: int, ready: asyncio.Future[ObjectMeta]) -> None:
        self._metrics.slice_lookups.labels("miss").inc()
        try:
            async with self._link(key).slice(key, index, None, 0) as (meta, chunks):
                self._count("slice", "ok")
                self._remember(key, meta, self._clock())
                fill = self._start_fill(meta, index, chunks)
                ready.set_result(meta)
                assert fill.task is not None
                # The fill reads this response: keep it open until the fill is done with it.
                await asyncio.wait([fill.task])
        except PeerUnavailable:
            self._count("slice", "unavailable")
            self._metrics.peer_fallbacks.inc()
            if not ready.done():
                try:
                    meta = await self._fallback.meta_for_get(key, index, count=False)
                except EdgeHTTPError as exc:
                    ready.set_exception(exc)
                    return
                self._remember(key, meta, self._clock())
                # Join the pass-through fill that GET started, before it ends: nothing keeps
                # its bytes afterwards.
                source = self._fallback.fill_for(meta, index, count=False)
                self._start_fill(meta, index, _bytes_of(source, 0))
                ready.set_result(meta)
        except EdgeHTTPError as exc:
            self._count("slice", "error")
            if not ready.done():
                ready.set_exception(exc)

    def forget(self, key: str) -> None:
        known = self._meta.get(key)
        if known is not None:
            known.checked_at = float("-inf")
        self._fallback.forget(key)

    # -- slices --------------------------------------------------------------------------------

    def _path(self, meta: ObjectMeta, slice_id: SliceId) -> str:
        return self._stores[self._owner(meta.key)].slice_path(slice_id)

    def is_resident(self, meta: ObjectMeta, index: int) -> bool:
        slice_id = SliceId(meta.object_id, index)
        return slice_id in self._fds or os.path.exists(self._path(meta, slice_id))

    def _open(self, meta: ObjectMeta, slice_id: SliceId) -> int | None:
        try:
            fd = os.open(self._path(meta, slice_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        self._network.touched(self._owner(meta.key), slice_id)
        return fd

    def open_resident(self, meta: ObjectMeta, index: int) -> int | None:
        fd = self._open(meta, SliceId(meta.object_id, index))
        if fd is not None:
            self._metrics.slice_lookups.labels("hit").inc()
        return fd

    def cached_fd(self, meta: ObjectMeta, index: int) -> int | None:
        """Like `EdgeCache.cached_fd`; the descriptor is closed when the owner announces the
        slice's removal (or when it falls out of this small descriptor cache)."""
        slice_id = SliceId(meta.object_id, index)
        fd = self._fds.get(slice_id)
        if fd is not None:
            self._network.touched(self._owner(meta.key), slice_id)
            return fd
        fd = self._open(meta, slice_id)
        return None if fd is None else self._fds.put(slice_id, fd)

    def removed(self, slice_ids: Iterable[SliceId]) -> None:
        """The owner deleted these slice files: let go of their descriptors."""
        self._fds.close(slice_ids)

    def fill_for(self, meta: ObjectMeta, index: int) -> SliceFill:
        """Join this worker's stream of the slice from its owner, or start one."""
        slice_id = SliceId(meta.object_id, index)
        fill = self._fills.get(slice_id)
        if fill is not None:
            self._metrics.slice_lookups.labels("coalesced").inc()
            self._metrics.coalesced_waiters.inc()
            return fill
        self._metrics.slice_lookups.labels("miss").inc()
        return self._start_fill(meta, index, None)

    def _start_fill(
        self, meta: ObjectMeta, index: int, first: AsyncIterator[bytes] | None
    ) -> SliceFill:
        slice_id = SliceId(meta.object_id, index)
        fill = SliceFill(slice_id, meta, slice_length(index, meta.size, self._slice_bytes))
        self._fills[slice_id] = fill
        fill.task = self._spawn(self._run_fill(fill, first))
        return fill

    async def _run_fill(self, fill: SliceFill, first: AsyncIterator[bytes] | None) -> None:
        try:
            await self._fetch(fill, first)
            fill.finish()
        except (EdgeHTTPError, asyncio.CancelledError) as exc:
            fill.fail_with(exc, self.forget)
        finally:
            if self._fills.get(fill.slice_id) is fill:
                del self._fills[fill.slice_id]

    async def _fetch(self, fill: SliceFill, first: AsyncIterator[bytes] | None) -> None:
        """Stream the slice from its owner, resuming where a broken stream stopped."""
        meta, index = fill.meta, fill.slice_id.index
        failures = 0
        while fill.filled < fill.length:
            try:
                if first is not None:
                    chunks, first = first, None
                    async for chunk in chunks:
                        fill.feed(chunk)
                    continue
                link = self._link(meta.key)
                async with link.slice(meta.key, index, meta.object_id, fill.filled) as (_, body):
                    self._count("slice", "ok")
                    async for chunk in body:
                        fill.feed(chunk)
            except PeerUnavailable:
                self._count("slice", "unavailable")
                self._metrics.peer_fallbacks.inc()
                source = self._fallback.fill_for(meta, index, count=False)
                async for part in _bytes_of(source, fill.filled):
                    fill.feed(part)
            except PeerStreamBroken as exc:
                failures += 1
                log.warning("stream of %s from its owner broke, try %d", fill.slice_id, failures)
                if failures > self._retries:
                    raise BadGateway("peer_stream_broken") from exc
            except EdgeHTTPError:
                self._count("slice", "error")
                raise

    # -- admin and lifecycle -------------------------------------------------------------------

    async def purge(self, keys: list[str], prefixes: list[str]) -> None:
        """Forget what this worker remembers of purged keys (the owner deletes the files)."""
        wanted, prefix_tuple = set(keys), tuple(prefixes)
        matching = [
            key
            for key in self._meta
            if key in wanted or (prefix_tuple and key.startswith(prefix_tuple))
        ]
        gone = {self._meta.pop(key).meta.object_id for key in matching}
        self._fds.close_objects(gone)
        for slice_id, fill in self._fills.items():
            if slice_id.object_id in gone:
                fill.discard = True
        await self._fallback.purge(keys, prefixes)  # its metadata and last slices in memory

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fds.close_all()


class ShardedCache:
    """The cache view of one worker among several: own keys local, the others' via peers."""

    def __init__(
        self, local: EdgeCache, remote: PeerCache, network: PeerNetwork, placement: Placement
    ) -> None:
        self.local = local
        self.remote = remote
        self.network = network
        self._slot = placement.slot
        self._workers = placement.workers

    def _view(self, key: str) -> EdgeCache | PeerCache:
        return self.local if owner_of(key, self._workers) == self._slot else self.remote

    def fresh_meta(self, key: str) -> ObjectMeta | None:
        return self._view(key).fresh_meta(key)

    async def meta(self, key: str) -> ObjectMeta:
        return await self._view(key).meta(key)

    async def meta_for_get(self, key: str, first_index: int | None) -> ObjectMeta:
        return await self._view(key).meta_for_get(key, first_index)

    def is_resident(self, meta: ObjectMeta, index: int) -> bool:
        return self._view(meta.key).is_resident(meta, index)

    def open_resident(self, meta: ObjectMeta, index: int) -> int | None:
        return self._view(meta.key).open_resident(meta, index)

    def cached_fd(self, meta: ObjectMeta, index: int) -> int | None:
        return self._view(meta.key).cached_fd(meta, index)

    def fill_for(self, meta: ObjectMeta, index: int) -> SliceFill:
        return self._view(meta.key).fill_for(meta, index)

    async def purge(self, keys: list[str], prefixes: list[str]) -> PurgeOutcome:
        """Purge on every worker; workers that could not be told are named (retry later)."""
        purged = await self.local.purge(keys, prefixes)
        await self.remote.purge(keys, prefixes)
        unreachable = []
        answers = await self.network.broadcast("/purge", {"keys": keys, "prefixes": prefixes})
        for slot, answer in answers.items():
            if isinstance(answer, dict):
                purged += int(answer.get("purged", 0))
            else:
                unreachable.append(slot)
        return PurgeOutcome(purged, tuple(unreachable))

    async def prefetch(self, keys: list[str]) -> int:
        """Queue each key at its owner; returns how many were queued."""
        by_owner: dict[int, list[str]] = {}
        for key in keys:
            by_owner.setdefault(owner_of(key, self._workers), []).append(key)
        queued = self.local.prefetch(by_owner.pop(self._slot, []))
        for slot, owned in by_owner.items():
            with contextlib.suppress(PeerUnavailable, EdgeHTTPError):
                answer = await self.network.links[slot].post("/prefetch", {"keys": owned})
                queued += int(answer.get("queued", 0))
        return queued


# -- the owner's side of the private socket ----------------------------------------------------


def _error(exc: EdgeHTTPError) -> web.Response:
    return web.json_response({"reason": exc.reason}, status=exc.status)


def make_peer_app(local: EdgeCache, remote: PeerCache) -> web.Application:
    """The private API other workers call (unix socket, no auth: file permissions guard it)."""

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except EdgeHTTPError as exc:
            return _error(exc)
        except (ValueError, TypeError, KeyError):
            return _error(BadRequest("malformed request"))

    app = web.Application(client_max_size=64 << 20, middlewares=[errors])

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def meta(request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        try:
            found = await local.meta(key)
        except EdgeHTTPError as exc:
            return _error(exc)
        return web.json_response({"meta": found.to_json(), "age": local.meta_age(key)})

    async def slice_(request: web.Request) -> web.StreamResponse:
        query = request.query
        key = query.get("key", "")
        try:
            index, start = int(query.get("index", "")), int(query.get("start", "0"))
        except ValueError:
            return _error(BadRequest("index and start must be integers"))
        object_id = query.get("object_id")
        fd: int | None = None
        fill: SliceFill | None = None
        try:
            if object_id is None:
                found = await local.meta_for_get(key, index, count=False)
            else:
                found = await local.meta(key)
                if found.object_id != object_id:
                    raise OriginChanged()
            if not 0 <= index < slice_count(found.size, local.store.slice_bytes):
                raise BadRequest("no_such_slice")
            length = slice_length(index, found.size, local.store.slice_bytes)
            if not 0 <= start < length:
                raise BadRequest("bad_start")
            fd = local.open_resident(found, index, count=False)
            if fd is None:
                fill = local.fill_for(found, index, count=False)
                await fill.wait_for(start)  # fail with a status while we still can
        except EdgeHTTPError as exc:
            return _error(exc)
        response = web.StreamResponse(
            headers={
                META_HEADER: json.dumps(found.to_json(), separators=(",", ":")),
                "Content-Length": str(length - start),
                "Content-Type": "application/octet-stream",
            }
        )
        try:
            await response.prepare(request)
            if fd is not None:
                for offset in range(start, length, _CHUNK):
                    await response.write(os.pread(fd, min(_CHUNK, length - offset), offset))
            else:
                assert fill is not None
                async for chunk in fill.read(start, length):
                    await response.write(chunk)
        except EdgeHTTPError:
            # The fill failed after the headers: cut the stream so the reader sees it short.
            if request.transport is not None:
                request.transport.abort()
            return response
        except ConnectionError:
            return response  # the asking worker went away (its client left); the fill goes on
        finally:
            if fd is not None:
                os.close(fd)
        await response.write_eof()
        return response

    async def json_body(request: web.Request) -> dict[str, Any]:
        body = await request.json()
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    async def touch(request: web.Request) -> web.Response:
        local.touch(_slices_from_json((await json_body(request)).get("slices")))
        return web.json_response({})

    async def removed(request: web.Request) -> web.Response:
        remote.removed(_slices_from_json((await json_body(request)).get("slices")))
        return web.json_response({})

    async def purge(request: web.Request) -> web.Response:
        body = await json_body(request)
        keys, prefixes = list(body.get("keys", [])), list(body.get("prefixes", []))
        await remote.purge(keys, prefixes)
        return web.json_response({"purged": await local.purge(keys, prefixes)})

    async def prefetch(request: web.Request) -> web.Response:
        keys = list((await json_body(request)).get("keys", []))
        return web.json_response({"queued": local.prefetch(keys)})

    app.router.add_get("/ready", ready)
    app.router.add_get("/meta", meta)
    app.router.add_get("/slice", slice_)
    app.router.add_post("/touch", touch)
    app.router.add_post("/removed", removed)
    app.router.add_post("/purge", purge)
    app.router.add_post("/prefetch", prefetch)
    return app
