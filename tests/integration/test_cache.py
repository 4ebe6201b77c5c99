"""Cache behaviour: single flight, streaming while filling, sparse fills, the bound, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from pathlib import Path

import aiohttp
import pytest

from edge_cache.app import RunningEdge
from tests.conftest import Bucket, EdgeFactory, cache_files, random_bytes
from tests.faultproxy import Fault, FaultProxy

SLICE = 64 * 1024
KEY = "assets/a1/preview.mp4"


def signed(live: RunningEdge, key: str = KEY) -> str:
    token = live.edge.verifier.sign(f"/{key}", int(time.time()) + 600)
    return f"{live.public_url}/{key}?token={token}"


def slice_ranges(start: int, end: int) -> set[str]:
    """The Range headers the edge must send to the origin for bytes [start, end]."""
    first, last = start // SLICE, end // SLICE
    return {f"bytes={i * SLICE}-{(i + 1) * SLICE - 1}" for i in range(first, last + 1)}


async def fetch(http: aiohttp.ClientSession, url: str, range_header: str | None = None) -> bytes:
    headers = {"Range": range_header} if range_header else {}
    async with http.get(url, headers=headers) as response:
        assert response.status in (200, 206)
        return await response.read()


async def test_concurrent_misses_cause_one_origin_request_per_slice(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(10 * SLICE)
    await bucket.put(KEY, source)
    async with make_edge() as live:
        url = signed(live)
        start, end = 3 * SLICE + 100, 5 * SLICE - 1  # slices 3 and 4
        bodies = await asyncio.gather(
            *(fetch(http, url, f"bytes={start}-{end}") for _ in range(50))
        )
        assert all(body == source[start : end + 1] for body in bodies)
        assert sorted(s.range or "" for s in proxy.gets(KEY)) == sorted(slice_ranges(start, end))
        # no HEAD: the first slice's GET carried the object's metadata
        assert len(proxy.heads(KEY)) == 0
        metrics = live.edge.metrics
        assert metrics.coalesced_waiters._value.get() >= 49


async def test_waiters_receive_bytes_while_the_slice_fills(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """A reader that joined a fill gets the bytes already fetched before the fill completes."""
    source = random_bytes(SLICE)
    await bucket.put(KEY, source)
    gate = asyncio.Event()
    proxy.faults.append(
        Fault(match=lambda r: r.method == "GET", gate_after=20_000, gate=gate, times=1)
    )
    async with make_edge() as live:
        url = signed(live)
        responses = [await http.get(url) for _ in range(3)]  # all three are now waiting
        try:
            for response in responses:
                assert response.status == 200
                head = await asyncio.wait_for(response.content.readexactly(20_000), 5)
                assert head == source[:20_000]
            assert not gate.is_set()  # the fill is still stalled at the origin
            gate.set()
            for response in responses:
                assert head + await response.read() == source
        finally:
            for response in responses:
                response.release()
        assert len(proxy.gets(KEY)) == 1


async def test_a_range_in_a_large_object_fetches_only_its_slices(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(8 << 20)  # 128 slices
    await bucket.put(KEY, source)
    async with make_edge() as live:
        start, end = 4_000_000, 4_200_000
        assert await fetch(http, signed(live), f"bytes={start}-{end}") == source[start : end + 1]
        await live.edge.cache.settled()
        assert {s.range for s in proxy.gets(KEY)} == slice_ranges(start, end)
        assert len(proxy.gets(KEY)) == 4
        assert sum(p.stat().st_size for p in cache_files(live.edge.settings.cache_dir)) == 4 * SLICE


def bytes_on_disk(cache_dir: Path) -> int:
    """Slice bytes in the cache, finished or being written (tmp/), meta files aside; a file
    renamed or evicted between the listing and its stat is simply not counted."""
    total = 0
    for path in cache_dir.rglob("*"):
        if not path.name.endswith(".meta"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file():
                    total += path.stat().st_size
    return total


async def test_disk_bound_holds_under_concurrent_fills(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    source = random_bytes(24 * SLICE)
    await bucket.put(KEY, source)
    bound = 4 * SLICE
    cache_dir = tmp_path / "bounded"
    async with make_edge(cache_dir=cache_dir, EDGE_CACHE_MAX_BYTES=str(bound)) as live:
        url = signed(live)
        peak = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, bytes_on_disk(cache_dir), live.edge.index.used_bytes)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        ranges = [(i * SLICE, (i + 1) * SLICE - 1) for i in range(24)] * 2
        # A wave of concurrent fills: only what fits gets room, the rest streams uncached.
        bodies = await asyncio.gather(*(fetch(http, url, f"bytes={a}-{b}") for a, b in ranges))
        assert all(body == source[a : b + 1] for body, (a, b) in zip(bodies, ranges, strict=True))
        await live.edge.cache.settled()
        assert live.edge.metrics.uncached_fills._value.get() > 0
        # Then one slice after another: each new one evicts the least recently used.
        for a, b in ranges[:24]:
            assert await fetch(http, url, f"bytes={a}-{b}") == source[a : b + 1]
            await live.edge.cache.settled()
        done.set()
        await watcher
        assert peak <= bound
        assert bytes_on_disk(cache_dir) <= bound
        assert live.edge.metrics.evictions._value.get() >= 20
        # what the index calls resident is exactly what is on disk
        assert live.edge.index.resident_bytes == bytes_on_disk(cache_dir)


async def test_restart_keeps_the_cache_and_drops_damaged_files(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(5 * SLICE + 123)
    await bucket.put(KEY, source)
    async with make_edge() as live:
        assert await fetch(http, signed(live)) == source
        await live.edge.cache.settled()
        cache_dir = live.edge.settings.cache_dir
    assert len(proxy.gets(KEY)) == 6

    async with make_edge() as live:
        assert await fetch(http, signed(live)) == source
        assert len(proxy.gets(KEY)) == 6  # every byte came from disk
        assert len(proxy.heads(KEY)) == 1  # metadata revalidated once after the restart

    # Damage the cache while the edge is down: a truncated slice, tmp debris, a stray file.
    slices = sorted(cache_files(cache_dir), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    victim = slices[2]
    victim.write_bytes(victim.read_bytes()[:1000])
    (cache_dir / "tmp" / "half-written").write_bytes(b"x" * 10)
    (victim.parent / "stray.file").write_bytes(b"?")

    async with make_edge() as live:
        assert not (cache_dir / "tmp" / "half-written").exists()
        assert not (victim.parent / "stray.file").exists()
        assert await fetch(http, signed(live)) == source
        assert [s.range for s in proxy.gets(KEY)[6:]] == [f"bytes={2 * SLICE}-{3 * SLICE - 1}"]


async def test_a_changed_origin_object_is_never_mixed_with_old_slices(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    old = random_bytes(3 * SLICE, seed=1)
    new = random_bytes(3 * SLICE, seed=2)
    await bucket.put(KEY, old)
    async with make_edge(EDGE_META_TTL_S="3600") as live:
        url = signed(live)
        assert await fetch(http, url, f"bytes=0-{SLICE - 1}") == old[:SLICE]
        await live.edge.cache.settled()
        await bucket.put(KEY, new)

        # Starts on the cached old slice 0, then needs slice 1, which the origin now refuses
        # (If-Match fails): the response must break, not splice old and new bytes.
        async with http.get(url, headers={"Range": f"bytes=0-{2 * SLICE - 1}"}) as response:
            assert response.status == 206
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()

        # The edge has noticed: the next request sees the new version whole.
        assert await fetch(http, url) == new
        await live.edge.cache.settled()
        assert await fetch(http, url, f"bytes=0-{SLICE - 1}") == new[:SLICE]


async def test_a_change_found_before_the_first_byte_is_served_as_the_new_version(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    old = random_bytes(3 * SLICE, seed=3)
    new = random_bytes(2 * SLICE, seed=4)
    await bucket.put(KEY, old)
    async with make_edge(EDGE_META_TTL_S="3600") as live:
        url = signed(live)
        assert await fetch(http, url, "bytes=0-9") == old[:10]
        await bucket.put(KEY, new)
        # slice 1 is not cached: its fill gets 412, the edge re-reads metadata before answering
        async with http.get(url, headers={"Range": f"bytes={SLICE}-{SLICE + 9}"}) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes {SLICE}-{SLICE + 9}/{2 * SLICE}"
            assert await response.read() == new[SLICE : SLICE + 10]


async def test_revalidation_drops_old_version_files(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    old = random_bytes(2 * SLICE, seed=5)
    new = random_bytes(2 * SLICE, seed=6)
    await bucket.put(KEY, old)
    async with make_edge(EDGE_META_TTL_S="0") as live:
        url = signed(live)
        assert await fetch(http, url) == old
        await live.edge.cache.settled()
        old_files = set(cache_files(live.edge.settings.cache_dir))
        assert len(old_files) == 2
        await bucket.put(KEY, new)
        assert await fetch(http, url) == new
        await live.edge.cache.settled()
        remaining = set(cache_files(live.edge.settings.cache_dir))
        assert not (old_files & remaining)
        assert len(remaining) == 2


async def test_a_cold_key_costs_one_origin_request(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """The first slice's GET carries the metadata, so a cold request needs no HEAD before it."""
    source = random_bytes(3 * SLICE + 5)
    await bucket.put(KEY, source)
    await bucket.put("assets/a1/empty.bin", b"")
    await bucket.put("assets/a1/tail.bin", source)
    async with make_edge() as live:
        start = SLICE + 7
        async with http.get(signed(live), headers={"Range": f"bytes={start}-{start + 99}"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes {start}-{start + 99}/{len(source)}"
            assert r.headers["ETag"] == f'"{hashlib.md5(source).hexdigest()}"'  # noqa: S324
            assert await r.read() == source[start : start + 100]
        object_requests = [s for s in proxy.seen if s.path.endswith(KEY)]
        assert [(s.method, s.range) for s in object_requests] == [
            ("GET", f"bytes={SLICE}-{2 * SLICE - 1}")
        ]
        # a suffix range needs the size first: HEAD, then the slice
        async with http.get(
            signed(live, "assets/a1/tail.bin"), headers={"Range": "bytes=-10"}
        ) as r:
            assert await r.read() == source[-10:]
        assert len(proxy.heads("tail.bin")) == 1
        # an empty object cannot answer a range: the HEAD path serves it
        async with http.get(signed(live, "assets/a1/empty.bin")) as r:
            assert (r.status, await r.read()) == (200, b"")
        # HEAD requests never fetch bytes
        async with http.head(signed(live, "assets/a1/other.bin")) as r:
            assert r.status == 404
        assert proxy.gets("other.bin") == []
