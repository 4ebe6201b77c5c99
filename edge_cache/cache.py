"""The slice cache: object metadata, slice fills from the origin, eviction, purge and prefetch.

One fill per slice at a time (single flight): every request needing a slice that is not on disk
joins the fill in flight and streams its bytes from memory as they arrive. A fill reserves its
bytes in the index before fetching, so the disk bound holds under any number of concurrent
fills; a slice that cannot get room is still streamed, just not stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .descriptors import DescriptorCache
from .errors import BadGateway, EdgeHTTPError, GatewayTimeout, NotFound, OriginChanged
from .index import CacheIndex, SliceId
from .metrics import EdgeMetrics
from .origin import ObjectMeta, Origin, RangeUnusable
from .slicing import slice_count, slice_length
from .store import DiskStore, FoundObject

__all__ = ["CacheView", "EdgeCache", "InFlight", "SliceFill"]

T = TypeVar("T")

log = logging.getLogger("edge_cache.cache")

# After a failed revalidation, keep serving the cached version and ask the origin again this soon.
STALE_RETRY_S = 5.0
MAX_NEGATIVE_ENTRIES = 10_000
PREFETCH_CONCURRENCY = 4
# Open descriptors kept for hot slices (the hit path reads them without open/close).
FD_CACHE_SIZE = 1024
# A pass-through cache keeps its last few finished slices in memory: a request that arrives
# just after a fill ended (its own next step, or a neighbour's) finds the bytes, not the origin.
RECENT_FILLS = 8


class SliceFill:
    """One slice being fetched from the origin into memory; readers stream it as it grows."""

    __slots__ = (
        "_waiters",
        "buffer",
        "complete",
        "discard",
        "error",
        "filled",
        "length",
        "meta",
        "slice_id",
        "storing",
        "task",
    )

    def __init__(self, slice_id: SliceId, meta: ObjectMeta, length: int) -> None:
        self.slice_id = slice_id
        self.meta = meta
        self.length = length
        self.buffer = bytearray(length)
        self.filled = 0
        self.complete = False
        self.error: EdgeHTTPError | None = None
        self.discard = False  # purged or superseded while in flight: do not store
        self.storing = False
        self.task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def feed(self, chunk: bytes) -> None:
        end = self.filled + len(chunk)
        self.buffer[self.filled : end] = chunk
        self.filled = end
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: EdgeHTTPError) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_for(self, position: int) -> None:
        """Wait until byte `position` has arrived; raises the fill's error if it failed first."""
        while self.filled <= position:
            if self.error is not None:
                raise self.error
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        """Bytes [start, end) of the slice, yielded as soon as each part has arrived."""
        view = memoryview(self.buffer)
        position = start
        while position < end:
            await self.wait_for(position)
            upto = min(self.filled, end)
            yield view[position:upto]
            position = upto

    async def wait_complete(self) -> None:
        await self.wait_for(self.length - 1)

    def fail_with(
        self, exc: EdgeHTTPError | asyncio.CancelledError, forget: Callable[[str], None]
    ) -> None:
        """End the fill on an error; readers get it. An origin that moved on or lost the
        object also makes the key's metadata stale (`forget`); cancellation is re-raised."""
        if isinstance(exc, asyncio.CancelledError):
            self.fail(BadGateway("shutting_down"))
            raise exc
        if isinstance(exc, OriginChanged | NotFound):
            forget(self.meta.key)
        self.fail(exc)


class InFlight(Generic[T]):
    """At most one operation per key at a time (single flight); later callers join it."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[T]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._running

    def join(self, key: str, start: Callable[[], asyncio.Future[T]]) -> asyncio.Future[T]:
        """The operation running for `key`, or the one `start()` begins. Shielded: a caller
        that goes away cancels its own wait, not the operation others are waiting for."""
        future = self._running.get(key)
        if future is None:
            future = start()
            self._running[key] = future
            future.add_done_callback(lambda _: self._running.pop(key, None))
            # An error nobody is waiting for any more still counts as seen.
            future.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        return asyncio.shield(future)


class CacheView(Protocol):
    """What the request handlers need from the cache: metadata, resident slices, fills.

    Implemented by `EdgeCache` (this worker's own keys) and, with several workers, by
    `peers.ShardedCache`, which sends each key to its owner.
    """

    def fresh_meta(self, key: str) -> ObjectMeta | None: ...

    async def meta(self, key: str) -> ObjectMeta: ...

    async def meta_for_get(self, key: str, first_index: int | None) -> ObjectMeta: ...

    def is_resident(self, meta: ObjectMeta, index: int) -> bool: ...

    def open_resident(self, meta: ObjectMeta, index: int) -> int | None: ...

    def cached_fd(self, meta: ObjectMeta, index: int) -> int | None: ...

    def fill_for(self, meta: ObjectMeta, index: int) -> SliceFill: ...


@dataclass(slots=True)
class _MetaEntry:
    meta: ObjectMeta
    checked_at: float


class EdgeCache:
    def __init__(
        self,
        *,
        store: DiskStore,
        origin: Origin,
        index: CacheIndex,
        metrics: EdgeMetrics,
        slice_bytes: int,
        meta_ttl_s: float,
        negative_ttl_s: float,
        retries: int,
        prefetch_max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        persist: bool = True,
        on_removed: Callable[[tuple[SliceId, ...]], None] = lambda removed: None,
    ) -> None:
        """`persist=False` makes a pass-through cache: single flight and streaming, but no
        meta files (pair it with an index of size 0, which admits no slice).
        `on_removed` hears of every slice that leaves the disk (evicted, purged, replaced)."""
        self.store = store
        self.index = index
        self._origin = origin
        self._metrics = metrics
        self._slice_bytes = slice_bytes
        self._meta_ttl_s = meta_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._retries = retries
        self._prefetch_max_bytes = prefetch_max_bytes
        self._clock = clock
        self._persist = persist
        self._on_removed = on_removed
        self._meta: dict[str, _MetaEntry] = {}
        self._missing: dict[str, float] = {}
        self._versions: dict[str, ObjectMeta] = {}  # object_id -> meta, for every known version
        self._meta_pending: InFlight[ObjectMeta] = InFlight()
        self._fills: dict[SliceId, SliceFill] = {}
        self._fds = DescriptorCache(FD_CACHE_SIZE)
        self._recent: OrderedDict[SliceId, SliceFill] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._prefetch_slots = asyncio.Semaphore(PREFETCH_CONCURRENCY)
        if persist:
            metrics.cache_max_bytes.set(index.max_bytes)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the index from disk (in a thread: it walks the directory tree)."""
        found = await asyncio.to_thread(self.store.scan)
        stale = self._load(found)
        if stale:
            await asyncio.to_thread(self._delete_versions, stale)
        self._publish()
        log.info(
            "cache loaded",
            extra={"slices": self.index.slice_count, "bytes": self.index.resident_bytes},
        )

    def _load(self, found: list[FoundObject]) -> list[ObjectMeta]:
        """Adopt the newest version of each key; returns older versions for deletion."""
        newest: dict[str, FoundObject] = {}
        stale: list[ObjectMeta] = []
        for item in found:
            current = newest.get(item.meta.key)
            if current is None or item.meta_mtime > current.meta_mtime:
                if current is not None:
                    stale.append(current.meta)
                newest[item.meta.key] = item
            else:
                stale.append(item.meta)
        slices: list[tuple[float, SliceId, int]] = []
        for item in newest.values():
            meta = item.meta
            # Loaded metadata is revalidated with the origin on first use.
            self._meta[meta.key] = _MetaEntry(meta, float("-inf"))
            self._versions[meta.object_id] = meta
            for index, mtime in item.slices:
                size = slice_length(index, meta.size, self._slice_bytes)
                slices.append((mtime, SliceId(meta.object_id, index), size))
        over_bound: list[SliceId] = []  # no descriptors are cached yet at load time
        for _, slice_id, size in sorted(slices, key=lambda s: (s[0], s[1])):
            over_bound.extend(self.index.load(slice_id, size))
        self.store.delete_slices(over_bound)
        return stale

    def _delete_versions(self, metas: Iterable[ObjectMeta]) -> None:
        for meta in metas:
            self.store.delete_object(meta)

    async def close(self) -> None:
        """Cancel fills and background work; fills already writing to disk are let finish."""
        self._fds.close_all()
        for task in list(self._tasks):
            fill = next((f for f in self._fills.values() if f.task is task), None)
            if fill is None or not fill.storing:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def settled(self) -> None:
        """Wait until no fill is in flight (every finished slice is on disk or given up)."""
        while self._fills:
            tasks = [fill.task for fill in self._fills.values() if fill.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coro` as a task this cache owns: cancelled and awaited by `close()`."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _publish(self) -> None:
        if not self._persist:
            return  # a pass-through cache holds nothing; the gauges describe the real one
        self._metrics.cache_bytes.set(self.index.used_bytes)
        self._metrics.cache_slices.set(self.index.slice_count)

    # -- metadata ------------------------------------------------------------------------------

    def fresh_meta(self, key: str) -> ObjectMeta | None:
        """The cached metadata of `key` if it needs no revalidation now, else None (no I/O)."""
        entry = self._meta.get(key)
        if entry is not None and self._clock() - entry.checked_at < self._meta_ttl_s:
            return entry.meta
        return None

    async def meta(self, key: str) -> ObjectMeta:
        """The current version of `key`, from memory while fresh, else from an origin HEAD."""
        now = self._clock()
        entry = self._meta.get(key)
        if entry is not None and now - entry.checked_at < self._meta_ttl_s:
            return entry.meta
        missing_since = self._missing.get(key)
        if missing_since is not None and now - missing_since < self._negative_ttl_s:
            raise NotFound()
        return await self._meta_pending.join(key, lambda: self._spawn(self._revalidate(key)))

    async def meta_for_get(
        self, key: str, first_index: int | None, *, count: bool = True
    ) -> ObjectMeta:
        """Like `meta`, but a key with no metadata at all costs one origin request: the GET of
        slice `first_index` (the first one the response needs), which also carries the
        metadata, and whose bytes go straight into that slice's fill."""
        if (
            first_index is None
            or key in self._meta
            or key in self._meta_pending
            or key in self._missing
        ):
            return await self.meta(key)

        def start() -> asyncio.Future[ObjectMeta]:
            ready: asyncio.Future[ObjectMeta] = asyncio.get_running_loop().create_future()
            self._spawn(self._cold_fetch(key, first_index, ready, count))
            return ready

        return await self._meta_pending.join(key, start)

    async def _cold_fetch(
        self, key: str, index: int, ready: asyncio.Future[ObjectMeta], count: bool
    ) -> None:
        start = index * self._slice_bytes
        try:
            async with self._origin.open_first_range(key, start, start + self._slice_bytes - 1) as (
                meta,
                chunks,
            ):
                self._missing.pop(key, None)
                new_version = meta.object_id not in self._versions
                self._versions[meta.object_id] = meta
                self._meta[key] = _MetaEntry(meta, self._clock())
                slice_id = SliceId(meta.object_id, index)
                fill = SliceFill(slice_id, meta, slice_length(index, meta.size, self._slice_bytes))
                fill.task = asyncio.current_task()
                self._fills[slice_id] = fill
                if count:
                    self._metrics.slice_lookups.labels("miss").inc()
                ready.set_result(meta)
                await self._run_fill(fill, chunks)
            # Written after the first slice, off the path to the first byte: a slice that finds
            # no meta file at start-up is deleted, so the order is safe across a crash.
            if self._persist and new_version and self._versions.get(meta.object_id) is meta:
                await asyncio.to_thread(self.store.write_meta, meta)
        except (RangeUnusable, BadGateway, GatewayTimeout):
            # Not answerable as a range, or failed before the metadata arrived: the HEAD path
            # (with its bounded retries) decides.
            if not ready.done():
                await self._settle(ready, self._revalidate(key))
        except NotFound as exc:
            self._missing[key] = self._clock()
            if not ready.done():
                ready.set_exception(exc)
        except EdgeHTTPError as exc:
            if not ready.done():
                ready.set_exception(exc)

    @staticmethod
    async def _settle(
        ready: asyncio.Future[ObjectMeta], source: Coroutine[Any, Any, ObjectMeta]
    ) -> None:
        try:
            ready.set_result(await source)
        except EdgeHTTPError as exc:
            ready.set_exception(exc)

    async def _revalidate(self, key: str) -> ObjectMeta:
        previous = self._meta.get(key)
        try:
            fresh = await self._origin.head(key)
        except NotFound:
            self._missing[key] = self._clock()
            if len(self._missing) > MAX_NEGATIVE_ENTRIES:
                del self._missing[next(iter(self._missing))]
            if previous is not None:
                await self._drop_key(key)
            raise
        except (BadGateway, GatewayTimeout):
            if previous is None:
                raise
            # stale-if-error: the cached version is still the best answer we have.
            previous.checked_at = self._clock() - self._meta_ttl_s + STALE_RETRY_S
            return previous.meta
        self._missing.pop(key, None)
        if previous is not None and previous.meta.object_id != fresh.object_id:
            await self._drop_key(key)
        if fresh.object_id not in self._versions:
            if self._persist:
                await asyncio.to_thread(self.store.write_meta, fresh)
            self._versions[fresh.object_id] = fresh
        self._meta[key] = _MetaEntry(fresh, self._clock())
        return fresh

    def forget(self, key: str) -> None:
        """Make the next request for `key` ask the origin (used when the origin moved on)."""
        entry = self._meta.get(key)
        if entry is not None:
            entry.checked_at = float("-inf")

    async def _drop_key(self, key: str) -> None:
        """Remove the cached version of `key` (slices, meta file, fills in flight)."""
        entry = self._meta.pop(key, None)
        if entry is None:
            return
        meta = entry.meta
        removed = self.index.remove_object(meta.object_id)
        self._fds.close(removed)
        for slice_id, fill in self._fills.items():
            if slice_id.object_id == meta.object_id:
                fill.discard = True
        for slice_id in [s for s in self._recent if s.object_id == meta.object_id]:
            del self._recent[slice_id]
        self._versions.pop(meta.object_id, None)
        self._publish()
        log.debug("dropped %s (%d slices)", key, len(removed))
        await asyncio.to_thread(self.store.delete_object, meta)
        # Every index, not only the resident ones: another worker may have opened a slice
        # file that was written but never committed (purged during its write).
        self._on_removed(tuple(SliceId(meta.object_id, i) for i in range(self.slice_count(meta))))

    # -- slices --------------------------------------------------------------------------------

    def slice_count(self, meta: ObjectMeta) -> int:
        return slice_count(meta.size, self._slice_bytes)

    def meta_age(self, key: str) -> float:
        """Seconds since `key`'s metadata was last confirmed by the origin (inf if never)."""
        entry = self._meta.get(key)
        return float("inf") if entry is None else max(0.0, self._clock() - entry.checked_at)

    def is_resident(self, meta: ObjectMeta, index: int) -> bool:
        return SliceId(meta.object_id, index) in self.index

    def touch(self, slice_ids: Iterable[SliceId]) -> None:
        """Mark slices as used (hits that another worker served from this worker's files)."""
        for slice_id in slice_ids:
            self.index.touch(slice_id)

    def cached_fd(self, meta: ObjectMeta, index: int) -> int | None:
        """A descriptor of a resident slice that the cache owns: use it without awaiting in
        between, never close it (it is closed when the slice leaves the cache)."""
        slice_id = SliceId(meta.object_id, index)
        fd = self._fds.get(slice_id)
        if fd is not None:
            if self.index.touch(slice_id):
                return fd
            self._fds.close([slice_id])
        fd = self._open(slice_id)
        return None if fd is None else self._fds.put(slice_id, fd)

    def open_resident(self, meta: ObjectMeta, index: int, *, count: bool = True) -> int | None:
        """An open descriptor of a slice on disk (the caller closes it), or None on a miss.

        `count=False` leaves the hit uncounted, for callers that count hits themselves.
        """
        fd = self._open(SliceId(meta.object_id, index))
        if fd is not None and count:
            self._metrics.slice_lookups.labels("hit").inc()
        return fd

    def _open(self, slice_id: SliceId) -> int | None:
        if not self.index.touch(slice_id):
            return None
        try:
            return os.open(self.store.slice_path(slice_id), os.O_RDONLY)
        except FileNotFoundError:
            # Deleted behind the index's back (an eviction racing a refill): heal, then miss.
            self.index.discard(slice_id)
            self._fds.close([slice_id])
            self._on_removed((slice_id,))
            self._publish()
            return None

    def fill_for(self, meta: ObjectMeta, index: int, *, count: bool = True) -> SliceFill:
        """The fill bringing slice `index` of `meta`: joined if one is in flight, else started.

        `count=False`: the lookup is counted by whoever answers the client (another worker).
        """
        slice_id = SliceId(meta.object_id, index)
        fill = self._fills.get(slice_id) or self._recent.get(slice_id)
        if fill is not None:
            if count:
                self._metrics.slice_lookups.labels("coalesced").inc()
                self._metrics.coalesced_waiters.inc()
            return fill
        if count:
            self._metrics.slice_lookups.labels("miss").inc()
        fill = SliceFill(slice_id, meta, slice_length(index, meta.size, self._slice_bytes))
        self._fills[slice_id] = fill
        fill.task = self._spawn(self._run_fill(fill))
        return fill

    async def _run_fill(self, fill: SliceFill, first: AsyncIterator[bytes] | None = None) -> None:
        slice_id = fill.slice_id
        admission = self.index.reserve(slice_id, fill.length)
        committed = False
        self._metrics.fills_in_flight.inc()
        self._publish()
        try:
            if admission.evicted:
                self._metrics.evictions.inc(len(admission.evicted))
                await self._evict(admission.evicted)
            if not admission.admitted:
                self._metrics.uncached_fills.inc()
            await self._fetch(fill, first)
            fill.finish()
            if admission.admitted and not fill.discard:
                fill.storing = True
                await asyncio.to_thread(self.store.write_slice, slice_id, fill.buffer)
                if fill.discard:  # purged while we were writing
                    await asyncio.to_thread(self.store.delete_slices, [slice_id])
                    self._on_removed((slice_id,))
                else:
                    self.index.commit(slice_id)
                    committed = True
        except (EdgeHTTPError, asyncio.CancelledError) as exc:
            fill.fail_with(exc, self.forget)
        except OSError:
            # The disk write failed: readers already had every byte; the slice just isn't kept.
            log.exception("could not store slice %s", slice_id)
        finally:
            if not committed:
                self.index.release(slice_id)
            if self._fills.get(slice_id) is fill:
                del self._fills[slice_id]
            if not self._persist and fill.complete and not fill.discard:
                self._recent[slice_id] = fill
                while len(self._recent) > RECENT_FILLS:
                    self._recent.popitem(last=False)
            self._metrics.fills_in_flight.dec()
            self._publish()

    async def _fetch(self, fill: SliceFill, first: AsyncIterator[bytes] | None = None) -> None:
        """Fetch the slice, resuming from the last byte received after a transient failure.

        `first`, when given, is an origin response already open for this slice (a cold GET).
        """
        start = fill.slice_id.index * self._slice_bytes
        last = start + fill.length - 1
        failures = 0
        if first is not None:
            try:
                async for chunk in first:
                    fill.feed(chunk)
            except (BadGateway, GatewayTimeout) as exc:
                if isinstance(exc, OriginChanged):
                    raise
                failures += 1
                log.warning("origin fetch of %s failed (%s), try %d", fill.slice_id, exc, failures)
                if failures > self._retries:
                    raise
        while fill.filled < fill.length:
            try:
                async with self._origin.open_range(fill.meta, start + fill.filled, last) as chunks:
                    async for chunk in chunks:
                        fill.feed(chunk)
            except (OriginChanged, NotFound):
                raise
            except (BadGateway, GatewayTimeout) as exc:
                failures += 1
                log.warning("origin fetch of %s failed (%s), try %d", fill.slice_id, exc, failures)
                if failures > self._retries:
                    raise

    async def _evict(self, evicted: tuple[SliceId, ...]) -> None:
        self._fds.close(evicted)
        await asyncio.to_thread(self.store.delete_slices, evicted)
        self._on_removed(evicted)  # after the unlink: a reader told earlier could reopen it
        # An object version with no slice left on disk and none in flight needs no meta file.
        orphans = []
        for object_id in {s.object_id for s in evicted}:
            if self.index.has_object(object_id) or any(
                s.object_id == object_id for s in self._fills
            ):
                continue
            meta = self._versions.get(object_id)
            if meta is None:
                continue
            entry = self._meta.get(meta.key)
            if entry is not None and entry.meta.object_id == object_id:
                del self._meta[meta.key]
            del self._versions[object_id]
            orphans.append(meta)
        if orphans:
            await asyncio.to_thread(self._delete_versions, orphans)

    # -- admin ---------------------------------------------------------------------------------

    async def purge(self, keys: Iterable[str], prefixes: Iterable[str]) -> int:
        """Remove cached data of these keys and of every key under these prefixes."""
        wanted = set(keys)
        prefix_tuple = tuple(prefixes)

        def matches(key: str) -> bool:
            return key in wanted or bool(prefix_tuple and key.startswith(prefix_tuple))

        targets = [key for key in self._meta if matches(key)]
        for key in [key for key in self._missing if matches(key)]:
            del self._missing[key]
        for key in targets:
            await self._drop_key(key)
        if self._persist:  # a pass-through cache purges only what it remembers
            self._metrics.purged_objects.inc(len(targets))
        return len(targets)

    def prefetch(self, keys: Iterable[str]) -> int:
        """Queue background fills of these objects (up to the prefetch byte limit each)."""
        queued = 0
        for key in keys:
            self._spawn(self._prefetch_one(key))
            queued += 1
        self._metrics.prefetch_queued.inc(queued)
        return queued

    async def _prefetch_one(self, key: str) -> None:
        async with self._prefetch_slots:
            try:
                meta = await self.meta(key)
                wanted = min(meta.size, self._prefetch_max_bytes)
                for index in range(slice_count(wanted, self._slice_bytes)):
                    if self.is_resident(meta, index):
                        continue
                    await self.fill_for(meta, index).wait_complete()
            except EdgeHTTPError as exc:
                log.warning("prefetch of %s failed: %s", key, exc.reason)
