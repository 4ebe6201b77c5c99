"""The hit path's own protocol: raw sockets, pipelining, hand-over to aiohttp, big bodies."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from edge_cache.app import RunningEdge
from edge_cache.fastpath import FastPathProtocol, parse_head
from tests.conftest import ADMIN_TOKEN, Bucket, EdgeFactory, random_bytes

KEY = "assets/a1/preview.mp4"
SIZE = 3 * 1024 * 1024 + 17  # several 64 KiB slices; larger than a socket buffer


def target(live: RunningEdge, key: str = KEY) -> str:
    token = live.edge.verifier.sign("/assets/*", int(time.time()) + 600)
    return f"/{key}?token={token}"


async def read_response(
    reader: asyncio.StreamReader, *, head: bool = False
) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    status = int(status_line.split(b" ")[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if head:  # a HEAD answer announces a length but carries no body
        return status, headers, b""
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def warm(live: RunningEdge, http: aiohttp.ClientSession, key: str = KEY) -> None:
    async with http.get(live.public_url + target(live, key)) as response:
        await response.read()
    await live.edge.cache.settled()


async def test_pipelined_hits_and_a_miss_handed_over_mid_stream(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    hot, cold = random_bytes(SIZE, seed=31), random_bytes(70_000, seed=32)
    await bucket.put(KEY, hot)
    await bucket.put("assets/a1/cold.mp4", cold)
    async with make_edge() as live:
        await warm(live, http)
        path, cold_path = target(live), target(live, "assets/a1/cold.mp4")
        reader, writer = await asyncio.open_connection("127.0.0.1", live.public_port)
        requests = [
            f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\n",
            f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n",
            f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n",  # whole 3 MiB: header + sendfile
            f"GET {cold_path} HTTP/1.1\r\nHost: x\r\n\r\n",  # a miss: aiohttp takes over
            f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=-5\r\n\r\n",
        ]
        writer.write("".join(requests).encode())  # all in one packet
        await writer.drain()
        first = await read_response(reader)
        assert (first[0], first[2]) == (206, hot[10:20])
        assert first[1]["content-range"] == f"bytes 10-19/{SIZE}"
        assert first[1]["x-cache"] == "HIT"
        head_status, head_headers, _ = await read_response(reader, head=True)
        assert (head_status, head_headers["content-length"]) == (200, str(SIZE))
        whole = await read_response(reader)
        assert (whole[0], whole[2] == hot) == (200, True)
        miss = await read_response(reader)
        assert (miss[0], miss[1]["x-cache"], miss[2] == cold) == (200, "MISS", True)
        last = await read_response(reader)
        assert (last[0], last[2]) == (206, hot[-5:])
        writer.close()


async def test_after_a_handed_over_request_the_fast_path_serves_the_same_connection(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    """Players open a connection with a miss and go on with hits: the hits must not stay on
    the full handler for the rest of the connection."""
    hot, cold = random_bytes(SIZE, seed=41), random_bytes(70_000, seed=42)
    await bucket.put(KEY, hot)
    await bucket.put("assets/a1/cold.mp4", cold)
    async with make_edge() as live:
        await warm(live, http)
        fast = live.edge.fastpath
        served_fast: list[int] = []
        record = fast.record

        def counting(*args: object) -> None:
            served_fast.append(1)
            record(*args)  # type: ignore[arg-type]

        fast.record = counting  # type: ignore[method-assign]
        path, cold_path = target(live), target(live, "assets/a1/cold.mp4")
        reader, writer = await asyncio.open_connection("127.0.0.1", live.public_port)
        steps = [
            (f"GET {cold_path} HTTP/1.1\r\nHost: x\r\n\r\n", 200, cold, False),
            (f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=5-9\r\n\r\n", 206, hot[5:10], True),
            (f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n", 200, hot, True),
            (f"GET {path} HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\n\r\n", 304, b"", False),
            (f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=-3\r\n\r\n", 206, hot[-3:], True),
        ]
        for request, status, body, by_fast_path in steps:
            before = len(served_fast)
            writer.write(request.encode())
            got_status, _, got_body = await read_response(reader)
            assert (got_status, got_body == body) == (status, True), request
            assert len(served_fast) - before == int(by_fast_path), request
        writer.close()


@pytest.mark.parametrize(
    ("request_head", "closes"),
    [
        ("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
        ("GET {p} HTTP/1.0\r\n\r\n", True),
        ("GET {p} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
    ],
)
async def test_connection_persistence(
    make_edge: EdgeFactory,
    bucket: Bucket,
    http: aiohttp.ClientSession,
    request_head: str,
    closes: bool,
) -> None:
    await bucket.put(KEY, b"0123456789")
    async with make_edge() as live:
        await warm(live, http)
        reader, writer = await asyncio.open_connection("127.0.0.1", live.public_port)
        writer.write(request_head.format(p=target(live)).encode())
        status, headers, body = await read_response(reader)
        assert (status, body) == (200, b"0123456789")
        assert (headers.get("connection") == "close") is closes
        if closes:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_odd_requests_go_to_the_full_handler(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    await bucket.put(KEY, b"abcdef")
    async with make_edge() as live:
        await warm(live, http)
        p = target(live)
        cases = [
            (f"GET {p} HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\n\r\n", 304),
            (f"GET {p} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0,2-2\r\n\r\n", 206),
            (f"GET {p} HTTP/1.1\r\nHost: x\r\nRange: bytes=99-\r\n\r\n", 416),
            (f"GET {p}&token=again HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (f"GET {p[:-3]}xyz HTTP/1.1\r\nHost: x\r\n\r\n", 403),
            (f"POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
            (f"GET {p} HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\n", 200),
        ]
        for request, expected in cases:
            reader, writer = await asyncio.open_connection("127.0.0.1", live.public_port)
            writer.write(request.encode())
            status, _, _ = await read_response(reader)
            assert status == expected, request
            writer.close()


def test_parse_head_declines_anything_unusual() -> None:
    ok = parse_head(b"GET /a?token=t HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1")
    assert ok is not None
    assert (ok.method, ok.target, ok.keep_alive) == (b"GET", "/a?token=t", True)
    assert ok.headers[b"range"] == b"bytes=0-1"
    for head in (
        b"POST /a HTTP/1.1\r\nHost: x",
        b"GET http://x/a HTTP/1.1\r\nHost: x",
        b"GET /a HTTP/2.0\r\nHost: x",
        b"GET /a HTTP/1.1\r\n folded: line",
        b"GET /a HTTP/1.1\r\nBad Name: x",
        b"GET /a HTTP/1.1\r\nno-colon",
        b"GET /a HTTP/1.1\r\nContent-Length: 5",
        b"GET /a HTTP/1.1\r\nHost: x\r\nhost: y",
        b"GET /\xff HTTP/1.1\r\nHost: x",
        b"GET  /a HTTP/1.1",
    ):
        assert parse_head(head) is None, head


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /a?token=t HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\nUser-Agent: p",
        b"GET /a?token=t HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19",
        b"GET /a?token=t HTTP/1.1\r\nHost: x\r\nRange:   bytes=5-6 \t\r\nX: 1",
        b"GET /a?token=t HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=2-3",
        b"GET /a?token=t HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nrange: bytes=2-3",
        b"GET /a?token=t HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nBad Name: 1",
        b"GET /a?token=t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nRange: bytes=-5",
        b"GET /a?token=t HTTP/1.1\r\nHost: x",
    ],
)
def test_the_per_connection_head_memo_parses_exactly_like_the_strict_parser(raw: bytes) -> None:
    protocol = FastPathProtocol(None, None, set())  # type: ignore[arg-type]
    warm_up = raw.replace(b"Range: bytes=", b"Range: bytes=9")  # same head, another Range
    for each in (warm_up, raw, raw):  # cold memo, then warm
        expected, got = parse_head(each), protocol._head(each)
        if expected is None:
            assert got is None
            continue
        assert got is not None
        assert (got.method, got.target, got.keep_alive) == (
            expected.method,
            expected.target,
            expected.keep_alive,
        )
        assert got.range == expected.headers.get(b"range")
        assert {k: v for k, v in got.headers.items() if k != b"range"} == {
            k: v for k, v in expected.headers.items() if k != b"range"
        }


async def test_hits_are_counted_exactly_when_scraped(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    await bucket.put(KEY, b"x" * 1000)
    async with make_edge() as live:
        await warm(live, http)
        url = live.public_url + target(live)
        for _ in range(7):
            async with http.get(url, headers={"Range": "bytes=0-99"}) as response:
                assert response.headers["X-Cache"] == "HIT"
                await response.read()
        async with http.get(
            f"{live.admin_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as response:
            text = await response.text()
        assert 'edge_requests_total{cache="hit",method="GET",status="206"} 7.0' in text
        assert 'edge_response_bytes_total{cache="hit"} 700.0' in text
        assert 'edge_request_duration_seconds_count{cache="hit"} 7.0' in text


async def test_a_slow_reader_gets_a_large_body_whole(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    """The socket fills, the send continues in a task, and eviction cannot break it."""
    source = random_bytes(SIZE, seed=33)
    await bucket.put(KEY, source)
    async with make_edge() as live:
        await warm(live, http)
        reader, writer = await asyncio.open_connection("127.0.0.1", live.public_port, limit=1 << 16)
        writer.write(f"GET {target(live)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.sleep(0.2)  # let the server fill the socket and park the rest
        async with http.post(
            f"{live.admin_url}/purge",
            json={"keys": [KEY]},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as response:
            assert (await response.json()) == {"purged": 1}
        status, _, body = await read_response(reader)
        assert status == 200
        assert body == source
        writer.close()
