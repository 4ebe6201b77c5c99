"""Several workers sharing one disk cache (in one process, each on its own port, so every test
chooses which worker a request reaches): single flight across workers, the bound across
workers, hits through non-owners, purge everywhere, owner restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from edge_cache import peers
from edge_cache.app import Edge, RunningEdge, running
from edge_cache.config import EdgeSettings
from edge_cache.sharding import Placement, owner_of
from tests.conftest import ADMIN_TOKEN, Bucket, edge_env, random_bytes
from tests.faultproxy import FaultProxy

SLICE = 64 * 1024
WORKERS = 3

Workers = Callable[..., AbstractAsyncContextManager[list[RunningEdge]]]


def key_owned_by(slot: int, stem: str = "assets/w", workers: int = WORKERS) -> str:
    """A key whose owner is `slot` (ownership is a hash, so search for one)."""
    return next(
        key for n in range(10_000) if owner_of(key := f"{stem}{n}/preview.mp4", workers) == slot
    )


def url(live: RunningEdge, key: str) -> str:
    token = live.edge.verifier.sign(f"/{key}", int(time.time()) + 600)
    return f"{live.public_url}/{key}?token={token}"


def slice_files(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.rglob("*") if p.is_file() and p.suffix[1:].isdigit()]


def slice_bytes_on_disk(cache_dir: Path) -> int:
    """Bytes of slice files, tolerating files evicted while they are being counted."""
    total = 0
    for path in slice_files(cache_dir):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def deleted_fds_under(cache_dir: Path) -> list[str]:
    """Descriptors this process holds on slice files that were deleted."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(cache_dir)) and target.endswith("(deleted)"):
            held.append(target)
    return held


@pytest.fixture
def workers(proxy: FaultProxy, bucket: Bucket, tmp_path: Path, run_dir: Path) -> Workers:
    @asynccontextmanager
    async def factory(
        count: int = WORKERS, manual_flush: bool = False, **overrides: str
    ) -> AsyncIterator[list[RunningEdge]]:
        env = edge_env(proxy.url, bucket.name, tmp_path / "cache", **overrides)
        settings = EdgeSettings.from_env(env)
        async with AsyncExitStack() as stack:
            edges = [
                Edge(
                    settings,
                    registry=CollectorRegistry(),
                    placement=Placement(slot, count, run_dir),
                )
                for slot in range(count)
            ]
            if manual_flush:
                for edge in edges:
                    edge.flush_interval_s = 3600
            yield [await stack.enter_async_context(running(edge)) for edge in edges]

    return factory


async def get(
    http: aiohttp.ClientSession, target: str, range_header: str | None = None
) -> tuple[int, str, bytes]:
    headers = {"Range": range_header} if range_header else {}
    async with http.get(target, headers=headers) as response:
        return response.status, response.headers.get("X-Cache", ""), await response.read()


async def test_misses_spread_over_workers_cost_one_origin_request_per_slice(
    workers: Workers, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    key = key_owned_by(0)
    source = random_bytes(10 * SLICE)
    await bucket.put(key, source)
    async with workers() as live:
        start, end = 3 * SLICE + 100, 5 * SLICE - 1  # slices 3 and 4
        results = await asyncio.gather(
            *(get(http, url(live[n % WORKERS], key), f"bytes={start}-{end}") for n in range(60))
        )
        assert all(status == 206 and body == source[start : end + 1] for status, _, body in results)
        assert sorted(s.range or "" for s in proxy.gets(key)) == [
            f"bytes={3 * SLICE}-{4 * SLICE - 1}",
            f"bytes={4 * SLICE}-{5 * SLICE - 1}",
        ]
        assert proxy.heads(key) == []  # the cold GET carried the metadata, for every worker
        for peer in live[1:]:
            asked = peer.edge.metrics.peer_requests.labels("slice", "ok")._value.get()
            assert asked >= 1  # the non-owners really went through the owner
        await live[0].edge.cache.settled()
        # stored once, in the owner's directory, and counted in the owner's share only
        assert live[0].edge.index.slice_count == 2
        assert all(w.edge.index.slice_count == 0 for w in live[1:])


async def test_a_cold_key_through_a_non_owner_is_stored_by_the_owner_and_then_hits(
    workers: Workers, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    key = key_owned_by(2)
    source = random_bytes(3 * SLICE + 17, seed=3)
    await bucket.put(key, source)
    async with workers() as live:
        status, cache, body = await get(http, url(live[0], key))
        assert (status, cache, body) == (200, "MISS", source)
        await live[2].edge.cache.settled()
        owner_root = live[2].edge.cache.store.root
        assert len(slice_files(owner_root)) == 4
        assert slice_files(live[0].edge.cache.store.root) == []
        origin_gets = len(proxy.gets(key))
        assert origin_gets == 4
        # Every worker now answers from the owner's files, without the origin.
        for worker in live:
            for range_header in (None, f"bytes={SLICE - 5}-{2 * SLICE + 5}"):
                status, cache, body = await get(http, url(worker, key), range_header)
                assert cache == "HIT"
                if range_header is None:
                    assert (status, body) == (200, source)
                else:
                    assert (status, body) == (206, source[SLICE - 5 : 2 * SLICE + 6])
        assert len(proxy.gets(key)) == origin_gets
        assert len(proxy.heads(key)) == 0  # metadata came from the owner, not the origin


async def test_the_bound_holds_across_workers_under_concurrent_fills(
    workers: Workers, bucket: Bucket, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    keys = [f"assets/b{n}/preview.mp4" for n in range(12)]
    sources = {key: random_bytes(4 * SLICE, seed=n) for n, key in enumerate(keys)}
    for key, body in sources.items():
        await bucket.put(key, body)
    bound = 12 * SLICE  # 4 slices per worker; the 48 slices asked for cannot all stay
    async with workers(EDGE_CACHE_MAX_BYTES=str(bound)) as live:
        cache_dir = tmp_path / "cache"
        samples: list[int] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                samples.append(slice_bytes_on_disk(cache_dir))
                await asyncio.sleep(0.002)

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(
            *(get(http, url(live[n % WORKERS], key)) for n, key in enumerate(keys * 2))
        )
        for worker in live:
            await worker.edge.cache.settled()
        done.set()
        await sampler
        assert all(
            body == sources[key] for (_, _, body), key in zip(results, keys * 2, strict=True)
        )
        assert samples
        assert max(samples) <= bound
        assert slice_bytes_on_disk(cache_dir) <= bound
        for worker in live:
            assert worker.edge.index.used_bytes <= bound // WORKERS


async def test_hits_served_by_non_owners_keep_a_slice_in_the_owners_lru(
    workers: Workers, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    hot = key_owned_by(1, "assets/hot")
    cold = [key_owned_by(1, f"assets/c{n}x") for n in range(6)]
    for n, key in enumerate([hot, *cold]):
        await bucket.put(key, random_bytes(SLICE, seed=n))
    # Worker 1's share is 3 slices.
    async with workers(manual_flush=True, EDGE_CACHE_MAX_BYTES=str(9 * SLICE)) as live:
        owner, reader = live[1].edge, live[0]
        await get(http, url(reader, hot))
        await owner.cache.settled()
        for key in cold:
            status, cache, _ = await get(http, url(reader, hot))
            assert (status, cache) == (200, "HIT")  # served from the owner's file
            await reader.edge.flush()  # the batched touch reaches the owner
            await get(http, url(live[2], key))
            await owner.cache.settled()
        gets_before = len(proxy.gets(hot))
        status, cache, _ = await get(http, url(live[2], hot))
        assert (status, cache) == (200, "HIT")
        assert len(proxy.gets(hot)) == gets_before == 1
        assert owner.index.used_bytes <= 3 * SLICE


async def test_evicted_slices_are_not_held_open_by_other_workers(
    workers: Workers, bucket: Bucket, tmp_path: Path
) -> None:
    keys = [key_owned_by(0, f"assets/e{n}x") for n in range(4)]
    for n, key in enumerate(keys):
        await bucket.put(key, random_bytes(SLICE, seed=n))
    # The owner's share is 2 slices; notes between workers go out only when flushed here.
    # A connection whose request the fast path handed over stays with the full handler: one
    # connection per request, so that hits take the fast path (which keeps descriptors).
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    async with http, workers(manual_flush=True, EDGE_CACHE_MAX_BYTES=str(6 * SLICE)) as live:
        owner, reader = live[0].edge, live[1]
        for key in keys:
            await get(http, url(live[0], key))
            await owner.cache.settled()
            for _ in range(2):  # the second is a fast-path hit
                status, cache, _ = await get(http, url(reader, key))
                assert (status, cache) == (200, "HIT")
        assert deleted_fds_under(tmp_path / "cache") != []  # evicted, still open in the reader
        await owner.flush()  # the owner announces its removals
        assert deleted_fds_under(tmp_path / "cache") == []


async def test_purge_through_any_worker_reaches_the_owner(
    workers: Workers, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    key = key_owned_by(2)
    await bucket.put(key, random_bytes(SLICE, seed=1))
    async with workers() as live:
        for worker in live:
            await get(http, url(worker, key))
        await live[2].edge.cache.settled()
        assert len(proxy.gets(key)) == 1
        await bucket.put(key, b"new version")
        async with http.post(
            f"{live[0].admin_url}/purge",
            json={"prefixes": ["assets/"]},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as response:
            assert response.status == 200
            assert (await response.json())["purged"] == 1
        assert slice_files(live[2].edge.cache.store.root) == []
        for worker in live:
            status, _, body = await get(http, url(worker, key))
            assert (status, body) == (200, b"new version")


async def test_purge_names_a_worker_it_could_not_reach(
    workers: Workers, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    async with workers() as live:
        live[1].edge.placement.socket_path(1).unlink()  # type: ignore[union-attr]
        async with http.post(
            f"{live[0].admin_url}/purge",
            json={"keys": ["assets/x/preview.mp4"]},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as response:
            assert response.status == 503
            assert (await response.json())["unreachable_workers"] == [1]


async def test_a_missing_owner_means_uncached_origin_reads_not_errors(
    proxy: FaultProxy,
    bucket: Bucket,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    run_dir: Path,
) -> None:
    """Worker 1 of 2 runs alone, as while worker 0 restarts: its misses for worker 0's keys
    go to the origin and are not stored on disk; its own keys are cached as usual."""
    theirs, mine = key_owned_by(0, workers=2), key_owned_by(1, workers=2)
    source = random_bytes(3 * SLICE, seed=9)
    await bucket.put(theirs, source)
    await bucket.put(mine, source)
    env = edge_env(proxy.url, bucket.name, tmp_path / "cache")
    edge = Edge(
        EdgeSettings.from_env(env),
        registry=CollectorRegistry(),
        placement=Placement(1, 2, run_dir),
    )
    async with running(edge) as live:
        for key in (theirs, mine, theirs):
            status, _, body = await get(http, url(live, key), f"bytes={SLICE}-")
            assert (status, body) == (206, source[SLICE:])
        await edge.cache.settled()
        assert edge.metrics.peer_fallbacks._value.get() >= 2
        # One GET per slice: the second request found the pass-through's last slices in
        # memory; none of them reached the disk.
        assert len(proxy.gets(theirs)) == 2
        assert len(proxy.gets(mine)) == 2
        assert edge.index.slice_count == 2
        assert all("workers-2/1/" in str(p) for p in slice_files(tmp_path / "cache"))


async def test_a_worker_remembers_a_bounded_number_of_other_workers_keys(
    workers: Workers,
    bucket: Bucket,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peers, "MAX_KNOWN_KEYS", 2)
    keys = [key_owned_by(1, f"assets/m{n}x") for n in range(3)]
    for n, key in enumerate(keys):
        await bucket.put(key, random_bytes(1000, seed=n))
    async with workers() as live:
        reader = live[0].edge.peer_cache
        assert reader is not None
        for n, key in enumerate(keys):
            status, _, body = await get(http, url(live[0], key))
            assert (status, body) == (200, random_bytes(1000, seed=n))
        assert [reader.fresh_meta(key) is not None for key in keys] == [False, True, True]
        status, _, _ = await get(http, url(live[0], keys[0]))  # asks the owner again
        assert status == 200
