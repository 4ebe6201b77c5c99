"""Origin failures: every fault gives a clear status, a broken body is never disguised, and the
edge talks to no host but its configured endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from edge_cache.app import RunningEdge
from tests.conftest import Bucket, EdgeFactory, cache_files, random_bytes
from tests.faultproxy import Fault, FaultProxy

SLICE = 64 * 1024
KEY = "assets/a1/preview.mp4"


def signed(live: RunningEdge, key: str = KEY) -> str:
    token = live.edge.verifier.sign("/assets/*", int(time.time()) + 600)
    return f"{live.public_url}/{key}?token={token}"


def for_key(method: str, key: str = KEY) -> Callable[[web.Request], bool]:
    return lambda request: request.method == method and request.path.endswith(key)


async def test_missing_objects_are_404_and_briefly_negative_cached(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    async with make_edge(EDGE_NEGATIVE_TTL_S="60") as live:
        url = signed(live, "assets/a1/missing.mp4")
        for _ in range(3):
            async with http.get(url) as response:
                assert response.status == 404
        # one origin request in all (the GET that found nothing), then the negative entry
        assert len(proxy.heads("missing.mp4")) + len(proxy.gets("missing.mp4")) == 1
        # a purge forgets the negative entry, so an upload becomes visible at once
        await bucket.put("assets/a1/missing.mp4", b"now here")
        async with http.post(
            f"{live.admin_url}/purge",
            json={"keys": ["assets/a1/missing.mp4"]},
            headers={"Authorization": "Bearer test-admin-token-0123456789"},
        ) as response:
            assert response.status == 200
        async with http.get(url) as response:
            assert (response.status, await response.read()) == (200, b"now here")


async def test_origin_errors_are_502_after_bounded_retries(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    await bucket.put(KEY, b"x" * 1000)
    proxy.faults.append(Fault(match=for_key("HEAD"), status=500, times=100))
    proxy.faults.append(Fault(match=for_key("GET"), status=500, times=100))
    async with make_edge(EDGE_ORIGIN_RETRIES="2") as live:
        async with http.get(signed(live)) as response:
            assert response.status == 502
        # the cold GET, then the metadata path with its 1 + 2 bounded tries
        assert (len(proxy.gets(KEY)), len(proxy.heads(KEY))) == (1, 3)
        proxy.faults.clear()
        async with http.get(signed(live)) as response:
            assert (response.status, await response.read()) == (200, b"x" * 1000)


async def test_a_stalled_origin_is_504(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    await bucket.put(KEY, b"x" * 1000)
    proxy.faults.append(Fault(match=for_key("HEAD"), stall_s=2.0, times=2))
    proxy.faults.append(Fault(match=for_key("GET"), stall_s=2.0, times=1))
    async with make_edge(FETCH_TIMEOUT_MS="200", EDGE_ORIGIN_RETRIES="1") as live:
        started = time.monotonic()
        async with http.get(signed(live)) as response:
            assert response.status == 504
        assert time.monotonic() - started < 1.5  # two bounded attempts, not two full stalls


async def test_a_stall_mid_slice_resumes_from_the_last_byte(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(SLICE)
    await bucket.put(KEY, source)
    never = asyncio.Event()
    proxy.faults.append(Fault(match=for_key("GET"), gate_after=20_000, gate=never))
    async with make_edge(FETCH_TIMEOUT_MS="300") as live:
        async with http.get(signed(live)) as response:
            assert (response.status, await response.read()) == (200, source)
        ranges = [s.range for s in proxy.gets(KEY)]
        assert ranges == [f"bytes=0-{SLICE - 1}", f"bytes=20000-{SLICE - 1}"]
        await live.edge.cache.settled()
        async with http.get(signed(live)) as response:
            assert response.headers["X-Cache"] == "HIT"
            assert await response.read() == source


async def test_a_reset_mid_body_resumes_transparently(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(2 * SLICE)
    await bucket.put(KEY, source)
    proxy.faults.append(Fault(match=for_key("GET"), reset_after=30_000, times=1))
    async with make_edge() as live:
        async with http.get(signed(live)) as response:
            assert (response.status, await response.read()) == (200, source)
        assert len(proxy.gets(KEY)) == 3  # slice 0 twice (resumed), slice 1 once


@pytest.mark.parametrize("use_sendfile", [True, False], ids=["sendfile", "no-sendfile"])
async def test_an_origin_failing_after_headers_aborts_the_client_and_caches_nothing(
    make_edge: EdgeFactory,
    bucket: Bucket,
    proxy: FaultProxy,
    http: aiohttp.ClientSession,
    use_sendfile: bool,
) -> None:
    source = random_bytes(SLICE)
    await bucket.put(KEY, source)
    # every attempt (1 + 2 retries) breaks after 10 000 bytes: 30 000 of 65 536 arrive
    proxy.faults.append(Fault(match=for_key("GET"), reset_after=10_000, times=3))
    async with make_edge(use_sendfile=use_sendfile) as live:
        async with http.get(signed(live)) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(SLICE)
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        await live.edge.cache.settled()
        assert cache_files(live.edge.settings.cache_dir) == []
        assert live.edge.index.used_bytes == 0
        # the origin recovers: the next request is whole and gets cached
        async with http.get(signed(live)) as response:
            assert await response.read() == source
        await live.edge.cache.settled()
        assert len(cache_files(live.edge.settings.cache_dir)) == 1


async def test_a_wrong_range_from_the_origin_is_refused(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """An origin answering 200 with the whole object to a range request must not be cached."""
    await bucket.put(KEY, random_bytes(3 * SLICE))
    proxy.faults.append(Fault(match=for_key("GET"), status=200, body=b"z" * SLICE, times=100))
    async with make_edge() as live:
        async with http.get(signed(live), headers={"Range": "bytes=0-99"}) as response:
            assert response.status == 502
        await live.edge.cache.settled()
        assert cache_files(live.edge.settings.cache_dir) == []


class Decoy:
    """Another host on loopback that the edge must never contact."""

    def __init__(self) -> None:
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(text="decoy")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.2", 0).start()
        self.url = f"http://127.0.0.2:{self.runner.addresses[0][1]}"


@pytest.fixture
async def decoy() -> AsyncIterator[Decoy]:
    server = Decoy()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_redirects_from_the_origin_are_not_followed(
    make_edge: EdgeFactory,
    bucket: Bucket,
    proxy: FaultProxy,
    http: aiohttp.ClientSession,
    decoy: Decoy,
    status: int,
) -> None:
    await bucket.put(KEY, b"x" * 100)
    location = {"Location": f"{decoy.url}/{bucket.name}/{KEY}"}
    for method in ("HEAD", "GET"):
        proxy.faults.append(Fault(match=for_key(method), status=status, headers=location, times=9))
    async with make_edge() as live, http.get(signed(live)) as response:
        assert response.status == 502
    assert decoy.hits == 0


async def raw_request(live: RunningEdge, request_line: str, headers: str = "") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", live.public_port)
    writer.write(f"{request_line}\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_the_edge_is_not_an_open_proxy(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, decoy: Decoy
) -> None:
    await bucket.put(KEY, b"x" * 100)
    async with make_edge() as live:
        token = live.edge.verifier.sign("/*", int(time.time()) + 600)
        attempts = [
            f"GET {decoy.url}/{KEY}?token={token} HTTP/1.1",
            f"GET /t/{token}/{decoy.url}/x HTTP/1.1",
            f"GET /t/{token}//127.0.0.2/x HTTP/1.1",
            f"GET /t/{token}/%2F%2F127.0.0.2/x HTTP/1.1",
            f"CONNECT {decoy.url.removeprefix('http://')} HTTP/1.1",
        ]
        for line in attempts:
            answer = await raw_request(live, line)
            status = int(answer.split(b" ", 2)[1])
            assert status in (400, 405), (line, answer[:80])
        answer = await raw_request(
            live, f"GET /{KEY}?token={token} HTTP/1.1", headers=f"X-Forwarded-Host: {decoy.url}\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200")
    assert decoy.hits == 0
    assert all(seen.path.startswith(f"/{bucket.name}") for seen in proxy.seen)


async def test_proxy_variables_in_the_environment_are_ignored(
    make_edge: EdgeFactory,
    bucket: Bucket,
    http: aiohttp.ClientSession,
    decoy: Decoy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """botocore would route through HTTP(S)_PROXY; the edge's origin traffic must not."""
    await bucket.put(KEY, b"y" * 100)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, decoy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with make_edge() as live, http.get(signed(live)) as response:
        assert (response.status, await response.read()) == (200, b"y" * 100)
    assert decoy.hits == 0
