"""HTTP behaviour over loopback: bytes compared with the source object in the real S3 server."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_cache.app import RunningEdge
from edge_cache.httpspec import http_date, parse_http_date
from tests.conftest import Bucket, EdgeFactory, random_bytes
from tests.faultproxy import FaultProxy

SIZE = 300_000  # 5 slices of 64 KiB, the last one short
KEY = "assets/a1/preview.mp4"


def signed(live: RunningEdge, key: str, acl: str | None = None, ttl: int = 600) -> str:
    token = live.edge.verifier.sign(acl or f"/{key}", int(time.time()) + ttl)
    return f"{live.public_url}/{key}?token={token}"


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    boundary = content_type.split("boundary=")[1].encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        parts.append((headers["Content-Range"], data.removesuffix(b"\r\n")))
    assert body.endswith(b"--" + boundary + b"--\r\n")
    return parts


@pytest.mark.parametrize("use_sendfile", [True, False], ids=["sendfile", "no-sendfile"])
async def test_full_and_ranged_reads_are_byte_exact(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession, use_sendfile: bool
) -> None:
    source = random_bytes(SIZE)
    etag = await bucket.put(KEY, source)
    async with make_edge(use_sendfile=use_sendfile) as live:
        url = signed(live, KEY)
        async with http.get(url) as response:
            assert response.status == 200
            assert await response.read() == source
            assert response.headers["Content-Length"] == str(SIZE)
            assert response.headers["ETag"] == etag
            assert response.headers["Content-Type"] == "video/mp4"
            assert response.headers["Accept-Ranges"] == "bytes"
            assert response.headers["X-Cache"] == "MISS"
            assert response.headers["Server"] == "edge-cache"  # no framework versions
            assert parse_http_date(response.headers["Last-Modified"]) is not None
        await live.edge.cache.settled()
        async with http.get(url) as response:
            assert response.headers["X-Cache"] == "HIT"
            assert response.headers["Server"] == "edge-cache"
            assert await response.read() == source
        rng = random.Random(5)
        for _ in range(40):
            start = rng.randrange(SIZE)
            end = min(SIZE - 1, start + rng.choice([0, 1, 100, 65_535, 65_536, 200_000]))
            async with http.get(url, headers={"Range": f"bytes={start}-{end}"}) as response:
                assert response.status == 206
                assert response.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
                assert response.headers["Content-Length"] == str(end - start + 1)
                assert await response.read() == source[start : end + 1]
        async with http.get(url, headers={"Range": "bytes=-10"}) as response:
            assert await response.read() == source[-10:]
            assert response.headers["Content-Range"] == f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}"


@pytest.mark.parametrize("use_sendfile", [True, False], ids=["sendfile", "no-sendfile"])
async def test_ranges_on_a_cold_cache_are_byte_exact(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession, use_sendfile: bool
) -> None:
    """Each range read first, through fills in flight, spanning slice boundaries."""
    source = random_bytes(SIZE, seed=11)
    await bucket.put(KEY, source)
    async with make_edge(use_sendfile=use_sendfile) as live:
        url = signed(live, KEY)
        for start, end in [(65_530, 65_540), (200_000, 299_999), (0, 0), (131_072, 196_607)]:
            async with http.get(url, headers={"Range": f"bytes={start}-{end}"}) as response:
                assert response.status == 206
                assert await response.read() == source[start : end + 1]


async def test_multipart_byteranges(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(SIZE, seed=2)
    await bucket.put(KEY, source)
    async with make_edge() as live:
        url = signed(live, KEY)
        header = "bytes=0-9, -10, 70000-140000, 999999-"
        async with http.get(url, headers={"Range": header}) as response:
            assert response.status == 206
            body = await response.read()
            assert int(response.headers["Content-Length"]) == len(body)
            parts = parse_multipart(body, response.headers["Content-Type"])
        assert parts == [
            (f"bytes 0-9/{SIZE}", source[:10]),
            (f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}", source[-10:]),
            (f"bytes 70000-140000/{SIZE}", source[70000:140001]),
        ]
        # overlapping parts are coalesced: never more bytes than the union
        async with http.get(url, headers={"Range": "bytes=0-99,50-149,10-20"}) as response:
            assert response.headers["Content-Range"] == f"bytes 0-149/{SIZE}"
            assert await response.read() == source[:150]


async def test_range_edge_cases_and_conditionals(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(1000, seed=3)
    etag = await bucket.put(KEY, source)
    async with make_edge() as live:
        url = signed(live, KEY)

        async def get(headers: dict[str, str], method: str = "GET") -> tuple[int, Any, bytes]:
            async with http.request(method, url, headers=headers) as response:
                return response.status, response.headers, await response.read()

        status, headers, body = await get({"Range": "bytes=100000-"})
        assert status == 416
        assert headers["Content-Range"] == "bytes */1000"
        status, _, body = await get({"Range": "bytes=5-1"})
        assert (status, body) == (200, source)
        status, _, body = await get({"Range": "bytes=0-9", "If-Range": etag})
        assert (status, body) == (206, source[:10])
        status, _, body = await get({"Range": "bytes=0-9", "If-Range": '"stale"'})
        assert (status, body) == (200, source)
        _, first, _ = await get({})
        last_modified = first["Last-Modified"]
        status, _, body = await get({"Range": "bytes=0-9", "If-Range": last_modified})
        assert (status, body) == (206, source[:10])
        older = http_date(parse_http_date(last_modified) - 10)  # type: ignore[operator]
        status, _, body = await get({"Range": "bytes=0-9", "If-Range": older})
        assert (status, body) == (200, source)
        status, headers, body = await get({"If-None-Match": etag})
        assert (status, body) == (304, b"")
        assert headers["ETag"] == etag
        status, _, _ = await get({"If-Modified-Since": last_modified})
        assert status == 304
        status, _, _ = await get({"If-Match": '"nope"'})
        assert status == 412
        status, headers, body = await get({}, method="HEAD")
        assert (status, body) == (200, b"")
        assert headers["Content-Length"] == "1000"
        status, headers, _ = await get({"Range": "bytes=0-9"}, method="HEAD")
        assert status == 206
        assert headers["Content-Length"] == "10"


async def test_empty_object(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    await bucket.put("assets/a1/empty.bin", b"")
    async with (
        make_edge() as live,
        http.get(signed(live, "assets/a1/empty.bin"), headers={"Range": "bytes=0-5"}) as r,
    ):
        assert r.status == 200
        assert await r.read() == b""


async def test_methods_health_and_cors(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    await bucket.put(KEY, b"x" * 100)
    async with make_edge(EDGE_ALLOWED_ORIGINS="https://app.example.com") as live:
        url = signed(live, KEY)
        async with http.post(url) as response:
            assert response.status == 405
            assert response.headers["Server"] == "edge-cache"
            assert "GET" in response.headers["Allow"]
        async with http.delete(url) as response:
            assert response.status == 405
        async with http.get(f"{live.public_url}/healthz") as response:
            assert response.status == 200
        origin = {"Origin": "https://app.example.com"}
        async with http.get(url, headers={**origin, "Range": "bytes=0-0"}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            exposed = response.headers["Access-Control-Expose-Headers"]
            for name in ("Content-Range", "Content-Length", "Accept-Ranges", "ETag"):
                assert name in exposed
            assert "Origin" in response.headers["Vary"]
        async with http.get(url, headers={"Origin": "https://evil.example"}) as response:
            assert response.status == 200
            assert "Access-Control-Allow-Origin" not in response.headers
        preflight = {
            **origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range, x-evil",
        }
        async with http.options(url, headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert response.headers["Access-Control-Allow-Headers"] == "range"
        bad_preflight = {**preflight, "Origin": "https://evil.example"}
        async with http.options(url, headers=bad_preflight) as response:
            assert response.status == 403
        # denials carry CORS headers too, so a browser player can read the status
        async with http.get(f"{live.public_url}/{KEY}", headers=origin) as response:
            assert response.status == 401
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


async def test_token_is_not_part_of_the_cache_key(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(100_000)
    await bucket.put(KEY, source)
    async with make_edge() as live:
        async with http.get(signed(live, KEY)) as response:
            assert await response.read() == source
        await live.edge.cache.settled()
        gets = len(proxy.gets(KEY))
        token = live.edge.verifier.sign("/assets/a1/*", int(time.time()) + 60)
        prefix_url = f"{live.public_url}/t/{token}/{KEY}"
        async with http.get(prefix_url) as response:
            assert response.headers["X-Cache"] == "HIT"
            assert await response.read() == source
        assert len(proxy.gets(KEY)) == gets


VECTORS = json.loads(
    (Path(__file__).resolve().parents[3] / "shared/contracts/signing-vectors.json").read_text()
)


async def test_contract_vectors_end_to_end(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    """Every vector case through the real server, its clock set to the case's `now`.

    The client address of a case arrives as X-Forwarded-For from a trusted loopback proxy.
    """
    for case in VECTORS["cases"]:
        if case["expect"] == "admit":
            await bucket.put(case["path"].lstrip("/"), case["path"].encode())
    now = {"value": 0.0}
    async with make_edge(
        clock=lambda: now["value"],
        EDGE_SIGNING_KEY="",
        EDGE_SIGNING_KEYS=VECTORS["keys"]["EDGE_SIGNING_KEYS"],
        EDGE_CLOCK_SKEW_S=str(VECTORS["leeway_s"]),
        EDGE_TRUSTED_PROXIES="127.0.0.1",
    ) as live:
        for case in VECTORS["cases"]:
            now["value"] = case["now"]
            path = case["path"]
            if "path_token" in case:
                path = f"/t/{case['path_token']}{path}"
            if "query_token" in case:
                path = f"{path}?token={case['query_token']}"
            url = live.public_url + path
            async with http.get(
                aiohttp.client.URL(url, encoded=True),
                headers={"X-Forwarded-For": case["client_ip"]},
            ) as response:
                body = await response.read()
                if case["expect"] == "admit":
                    assert response.status == 200, case["name"]
                    assert body == case["path"].encode(), case["name"]
                else:
                    assert response.status == case["expect"], case["name"]
        text = await (
            await http.get(
                f"{live.admin_url}/metrics",
                headers={"Authorization": "Bearer test-admin-token-0123456789"},
            )
        ).text()
        for reason in (
            "bad_signature",
            "unknown_kid",
            "expired",
            "not_yet_valid",
            "acl",
            "ip",
            "malformed",
        ):
            assert f'edge_denials_total{{reason="{reason}"}}' in text
