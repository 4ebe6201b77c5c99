"""Admin listener, rate limits, access log, graceful shutdown and the command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis

from edge_cache.app import RunningEdge
from tests.conftest import ADMIN_TOKEN, SIGNING_KEY, Bucket, EdgeFactory, cache_files, random_bytes
from tests.faultproxy import Fault, FaultProxy

SLICE = 64 * 1024
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def signed(live: RunningEdge, key: str) -> str:
    token = live.edge.verifier.sign("/assets/*", int(time.time()) + 600)
    return f"{live.public_url}/{key}?token={token}"


async def test_admin_requires_the_token(
    make_edge: EdgeFactory, http: aiohttp.ClientSession
) -> None:
    async with make_edge() as live:
        for method, path in (("GET", "/metrics"), ("POST", "/purge"), ("POST", "/prefetch")):
            async with http.request(method, live.admin_url + path) as response:
                assert response.status == 401
            wrong = {"Authorization": "Bearer not-the-token-at-all"}
            async with http.request(method, live.admin_url + path, headers=wrong) as response:
                assert response.status == 401
        # the public listener never answers admin paths
        for path in ("/metrics", "/purge"):
            async with http.post(live.public_url + path, headers=AUTH) as response:
                assert response.status == 405
            async with http.get(live.public_url + path, headers=AUTH) as response:
                assert response.status == 401


async def test_purge_by_key_and_prefix(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    keys = ["assets/a1/preview.mp4", "assets/a1/hls/seg_0.ts", "assets/a2/preview.mp4"]
    for key in keys:
        await bucket.put(key, random_bytes(2 * SLICE))
    async with make_edge() as live:
        for key in keys:
            async with http.get(signed(live, key)) as response:
                await response.read()
        await live.edge.cache.settled()
        assert len(cache_files(live.edge.settings.cache_dir)) == 6

        async with http.post(
            f"{live.admin_url}/purge", json={"prefixes": ["assets/a1/"]}, headers=AUTH
        ) as response:
            assert (response.status, await response.json()) == (200, {"purged": 2})
        assert len(cache_files(live.edge.settings.cache_dir)) == 2
        async with http.post(
            f"{live.admin_url}/purge", json={"keys": ["assets/a2/preview.mp4"]}, headers=AUTH
        ) as response:
            assert await response.json() == {"purged": 1}
        assert cache_files(live.edge.settings.cache_dir) == []
        assert live.edge.index.used_bytes == 0

        before = len(proxy.gets())
        async with http.get(signed(live, keys[0])) as response:
            assert response.headers["X-Cache"] == "MISS"
            await response.read()
        assert len(proxy.gets()) == before + 2

        for body in (
            {"keys": ["/leading-slash"]},
            {"keys": ["a/../b"]},
            {"prefixes": [""]},
            {"keys": "not-a-list"},
            {"other": 1},
            {},
            [],
        ):
            async with http.post(f"{live.admin_url}/purge", json=body, headers=AUTH) as response:
                assert response.status == 400, body
        async with http.post(
            f"{live.admin_url}/purge", data=b"{not json", headers=AUTH
        ) as response:
            assert response.status == 400


async def test_purge_during_a_fill_keeps_the_stale_slice_off_disk(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    key = "assets/a1/preview.mp4"
    source = random_bytes(SLICE)
    await bucket.put(key, source)
    gate = asyncio.Event()
    proxy.faults.append(Fault(match=lambda r: r.method == "GET", gate_after=1000, gate=gate))
    async with make_edge() as live:
        response = await http.get(signed(live, key))
        async with http.post(
            f"{live.admin_url}/purge", json={"keys": [key]}, headers=AUTH
        ) as purge:
            assert await purge.json() == {"purged": 1}
        gate.set()
        assert await response.read() == source  # the reader still gets a whole, correct body
        await live.edge.cache.settled()
        assert cache_files(live.edge.settings.cache_dir) == []


async def test_prefetch_fills_in_the_background(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(3 * SLICE + 10)
    await bucket.put("assets/a1/preview.mp4", source)
    async with make_edge() as live:
        async with http.post(
            f"{live.admin_url}/prefetch",
            json={"keys": ["assets/a1/preview.mp4", "assets/a1/missing.mp4"]},
            headers=AUTH,
        ) as response:
            assert (response.status, await response.json()) == (202, {"queued": 2})
        for _ in range(200):
            if len(cache_files(live.edge.settings.cache_dir)) == 4:
                break
            await asyncio.sleep(0.02)
        await live.edge.cache.settled()
        assert len(cache_files(live.edge.settings.cache_dir)) == 4
        gets = len(proxy.gets())
        async with http.get(signed(live, "assets/a1/preview.mp4")) as response:
            assert response.headers["X-Cache"] == "HIT"
            assert await response.read() == source
        assert len(proxy.gets()) == gets


async def test_metrics_expose_the_edge_families(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    await bucket.put("assets/a1/preview.mp4", random_bytes(1000))
    async with make_edge() as live:
        url = signed(live, "assets/a1/preview.mp4")
        for _ in range(2):
            async with http.get(url) as response:
                await response.read()
            await live.edge.cache.settled()
        async with http.get(f"{live.public_url}/assets/a1/preview.mp4?token=bad") as response:
            assert response.status == 403
        async with http.get(f"{live.admin_url}/metrics", headers=AUTH) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    for family in (
        'edge_requests_total{cache="miss",method="GET",status="200"} 1.0',
        'edge_requests_total{cache="hit",method="GET",status="200"} 1.0',
        'edge_requests_total{cache="none",method="GET",status="403"} 1.0',
        'edge_response_bytes_total{cache="hit"} 1000.0',
        'edge_slice_lookups_total{result="hit"} 1.0',
        'edge_slice_lookups_total{result="miss"} 1.0',
        # one origin request for a cold object: its GET also carried the metadata
        'edge_origin_requests_total{op="get",outcome="ok"} 1.0',
        "edge_origin_bytes_total 1000.0",
        'edge_denials_total{reason="malformed"} 1.0',
        "edge_cache_bytes 1000.0",
        "edge_cache_slices 1.0",
        "edge_fills_in_flight 0.0",
        "edge_origin_latency_seconds_bucket",
        "edge_request_duration_seconds_bucket",
        "edge_cache_evictions_total",
        "edge_coalesced_waiters_total",
        "edge_rate_limited_total",
    ):
        assert family in text, family


async def test_rate_limit_answers_429_with_retry_after(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    await bucket.put("assets/a1/preview.mp4", b"x")
    async with make_edge(RATE_LIMIT_MAX="3", RATE_LIMIT_WINDOW="60") as live:
        url = signed(live, "assets/a1/preview.mp4")
        statuses = []
        for _ in range(5):
            async with http.get(url) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert statuses == [200, 200, 200, 429, 429]
        assert live.edge.metrics.rate_limited._value.get() == 2


async def test_rate_limit_is_shared_through_redis_and_fails_open(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession, tmp_path: object
) -> None:
    await bucket.put("assets/a1/preview.mp4", b"x")
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except OSError:
        pytest.fail(f"Redis is needed at {REDIS_URL} (see README: services)")
    finally:
        await client.aclose()
    # A window of a day with a unique client address: no other test shares these counters.
    client_ip = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    forwarded = {"X-Forwarded-For": client_ip}
    shared = {
        "RATE_LIMIT_MAX": "4",
        "RATE_LIMIT_WINDOW": str(86_400 - uuid.uuid4().int % 1000),
        "REDIS_URL": REDIS_URL,
        "EDGE_TRUSTED_PROXIES": "127.0.0.1",
    }
    async with make_edge(**shared) as first, make_edge(**shared) as second:
        statuses = []
        for live in (first, second, first, second, first, second):
            async with http.get(signed(live, "assets/a1/preview.mp4"), headers=forwarded) as r:
                statuses.append(r.status)
        assert statuses == [200, 200, 200, 200, 429, 429]
    broken = {**shared, "REDIS_URL": "redis://127.0.0.1:1/0"}
    async with make_edge(**broken) as live:
        async with http.get(signed(live, "assets/a1/preview.mp4"), headers=forwarded) as r:
            assert r.status == 200  # Redis down: the local limiter takes over
        assert live.edge.metrics.rate_limit_backend_errors._value.get() == 1


async def test_one_json_access_log_line_per_request(
    make_edge: EdgeFactory,
    bucket: Bucket,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await bucket.put("assets/a1/preview.mp4", b"0123456789")
    async with make_edge() as live:
        url = signed(live, "assets/a1/preview.mp4")
        with caplog.at_level(logging.INFO, logger="edge_cache.access"):
            async with http.get(url, headers={"Range": "bytes=2-5"}) as response:
                assert await response.read() == b"2345"
            async with http.get(f"{live.public_url}/assets/a1/preview.mp4") as response:
                assert response.status == 401
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "edge_cache.access"]
    assert len(lines) == 2
    first, second = lines
    assert first["method"] == "GET"
    assert first["path"] == "/assets/a1/preview.mp4"
    assert (first["status"], first["bytes"], first["cache"]) == (206, 4, "miss")
    assert first["ms"] >= 0
    assert (second["status"], second["cache"]) == (401, "none")
    assert all("token" not in json.dumps(line) for line in lines)


async def test_path_form_tokens_stay_out_of_the_access_log_on_both_paths(
    make_edge: EdgeFactory,
    bucket: Bucket,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await bucket.put("assets/a1/hls/seg_0001.ts", b"segment bytes")
    async with make_edge() as live:
        token = live.edge.verifier.sign("/assets/a1/*", int(time.time()) + 600)
        url = f"{live.public_url}/t/{token}/assets/a1/hls/seg_0001.ts"
        served_fast: list[int] = []
        record = live.edge.fastpath.record

        def counting(*args: object) -> None:
            served_fast.append(1)
            record(*args)  # type: ignore[arg-type]

        live.edge.fastpath.record = counting  # type: ignore[method-assign]
        with caplog.at_level(logging.INFO, logger="edge_cache.access"):
            for _ in range(2):  # a miss (full handler), then a hit (fast path)
                async with http.get(url) as response:
                    assert await response.read() == b"segment bytes"
                await live.edge.cache.settled()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "edge_cache.access"]
    assert [line["cache"] for line in lines] == ["miss", "hit"]
    assert len(served_fast) == 1
    assert all(line["path"] == "/assets/a1/hls/seg_0001.ts" for line in lines)
    assert all(token not in json.dumps(line) for line in lines)


async def test_graceful_shutdown_drains_and_finishes_in_flight_responses(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    source = random_bytes(SLICE)
    await bucket.put("assets/a1/preview.mp4", source)
    gate = asyncio.Event()
    proxy.faults.append(Fault(match=lambda r: r.method == "GET", gate_after=5000, gate=gate))
    edge_cm = make_edge(EDGE_DRAIN_GRACE_MS="400")
    live = await edge_cm.__aenter__()
    response = await http.get(signed(live, "assets/a1/preview.mp4"))
    stopping = asyncio.create_task(edge_cm.__aexit__(None, None, None))
    await asyncio.sleep(0.1)
    async with http.get(f"{live.public_url}/healthz") as health:
        assert health.status == 503
    gate.set()
    assert await response.read() == source  # the in-flight response completes
    await stopping
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"{live.public_url}/healthz")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_cache", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_reports_bad_configuration_in_one_line() -> None:
    base = {"PATH": os.environ.get("PATH", "")}
    result = run_cli("serve", env=base)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "EDGE_SIGNING_KEY" in result.stderr
    result = run_cli("serve", env={**base, "EDGE_SIGNING_KEY": SIGNING_KEY})
    assert result.returncode == 2
    assert result.stderr == "edge-cache: WASABI_ENDPOINT must be set\n"
    result = run_cli(
        "serve",
        env={
            **base,
            "WASABI_ENDPOINT": "http://127.0.0.1:9",
            "WASABI_ACCESS_KEY_ID": "a",
            "WASABI_SECRET_ACCESS_KEY": "b",
            "WASABI_BUCKET_PREVIEWS": "p",
            "EDGE_SIGNING_KEY": SIGNING_KEY,
            "EDGE_CACHE_MAX_BYTES": "huge",
        },
    )
    assert result.returncode == 2
    assert result.stderr.startswith("edge-cache: EDGE_CACHE_MAX_BYTES")
    for command in ("serve", "sign", "demo"):
        assert run_cli(command, "--help", env=base).returncode == 0


async def test_cli_sign_prints_a_url_the_edge_accepts(
    make_edge: EdgeFactory, bucket: Bucket, http: aiohttp.ClientSession
) -> None:
    await bucket.put("assets/a9/hls/index.m3u8", b"#EXTM3U\n")
    async with make_edge() as live:
        env = {"PATH": os.environ.get("PATH", ""), "EDGE_SIGNING_KEY": SIGNING_KEY}
        single = run_cli("sign", "/assets/a9/hls/index.m3u8", "--base", live.public_url, env=env)
        prefix = run_cli("sign", "/assets/a9/*", "--ttl", "60", "--base", live.public_url, env=env)
        assert single.returncode == 0
        assert prefix.returncode == 0
        assert "/t/" in prefix.stdout
        for url in (single.stdout.strip(), prefix.stdout.strip() + "hls/index.m3u8"):
            async with http.get(aiohttp.client.URL(url, encoded=True)) as response:
                assert (response.status, await response.read()) == (200, b"#EXTM3U\n")
        assert run_cli("sign", "/x", env={"PATH": env["PATH"]}).returncode == 2


async def test_shutdown_cancels_stalled_fills_cleanly(
    make_edge: EdgeFactory, bucket: Bucket, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """A fill stuck at the origin does not hold shutdown; it leaves no file and no reservation."""
    await bucket.put("assets/a1/preview.mp4", random_bytes(SLICE))
    never = asyncio.Event()
    proxy.faults.append(Fault(match=lambda r: r.method == "GET", gate_after=100, gate=never))
    edge_cm = make_edge(EDGE_SHUTDOWN_TIMEOUT_S="1", FETCH_TIMEOUT_MS="60000")
    live = await edge_cm.__aenter__()
    response = await http.get(signed(live, "assets/a1/preview.mp4"))
    assert response.status == 200
    started = time.monotonic()
    await edge_cm.__aexit__(None, None, None)
    assert time.monotonic() - started < 5
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()  # cut, not completed with made-up bytes
    cache_dir = live.edge.settings.cache_dir
    assert cache_files(cache_dir) == []
    assert list((cache_dir / "tmp").iterdir()) == []
    assert live.edge.index.used_bytes == 0
    assert live.edge.metrics.fills_in_flight._value.get() == 0
