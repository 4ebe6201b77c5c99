"""`edge-cache serve --workers N` as operators run it: real processes sharing one port
(SO_REUSEPORT) and one cache directory, in front of the counting proxy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_cache.signing import KeyRing, Verifier
from tests.conftest import ADMIN_TOKEN, SIGNING_KEY, Bucket, edge_env, random_bytes
from tests.faultproxy import FaultProxy

SLICE = 64 * 1024
WORKERS = 3
VERIFIER = Verifier(KeyRing.from_env({"EDGE_SIGNING_KEY": SIGNING_KEY}), 0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Supervised:
    process: asyncio.subprocess.Process
    run_dir: Path
    public: str
    admin: str
    log: Path

    def pids(self) -> dict[int, int]:
        try:
            state = json.loads((self.run_dir / "workers.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {int(slot): int(pid) for slot, pid in state["workers"].items()}

    def url(self, key: str) -> str:
        token = VERIFIER.sign(f"/{key}", int(time.time()) + 600)
        return f"{self.public}/{key}?token={token}"

    async def ready(self, workers: int, timeout_s: float = 30) -> dict[int, int]:
        """Wait until `workers` processes answer on their private sockets; their pids."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.returncode is None, self.log.read_text()[-3000:]
            pids = self.pids()
            if len(pids) == workers and all(
                [await _answers(self.run_dir / f"worker-{s}.sock") for s in range(workers)]
            ):
                return pids
            await asyncio.sleep(0.1)
        raise AssertionError("workers not ready:\n" + self.log.read_text()[-3000:])


async def _answers(path: Path) -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        connector = aiohttp.UnixConnector(path=str(path))
        async with aiohttp.ClientSession(connector=connector) as client:
            async with client.get("http://worker/ready") as response:
                return response.status == 200
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def serve_workers(env: dict[str, str], **streams: Any) -> asyncio.subprocess.Process:
    """`edge-cache serve --workers 3` as a child process."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_cache", "serve", "--workers", str(WORKERS), env=env, **streams
    )


@asynccontextmanager
async def supervised(
    proxy: FaultProxy, bucket: Bucket, tmp_path: Path, run_dir: Path, **overrides: str
) -> AsyncIterator[Supervised]:
    public, admin = free_port(), free_port()
    env = {
        **os.environ,
        **edge_env(proxy.url, bucket.name, tmp_path / "cache", **overrides),
        "EDGE_LISTEN": f"127.0.0.1:{public}",
        "EDGE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "EDGE_RUN_DIR": str(run_dir),
        "LOG_LEVEL": "INFO",
    }
    log = tmp_path / "supervisor.log"
    with open(log, "wb") as sink:
        process = await serve_workers(env, stdout=sink, stderr=sink)
    running = Supervised(
        process, run_dir, f"http://127.0.0.1:{public}", f"http://127.0.0.1:{admin}", log
    )
    try:
        await running.ready(WORKERS)
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


def fresh_connections() -> aiohttp.ClientSession:
    """One connection per request, so the kernel spreads requests over the workers."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0), auto_decompress=False
    )


async def scrape(admin: str) -> dict[str, float]:
    """Sums of each sample name on the admin /metrics page (any worker answers)."""
    totals: dict[str, float] = {}
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"{admin}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as response:
            assert response.status == 200
            text = await response.text()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            totals[base] = totals.get(base, 0.0) + float(value)
    return totals


async def test_workers_share_one_port_one_cache_and_one_metrics_page(
    proxy: FaultProxy, bucket: Bucket, tmp_path: Path, run_dir: Path
) -> None:
    key = "assets/mw/preview.mp4"
    source = random_bytes(4 * SLICE, seed=5)
    await bucket.put(key, source)
    async with supervised(proxy, bucket, tmp_path, run_dir) as edge, fresh_connections() as http:

        async def get(range_header: str) -> tuple[int, bytes]:
            async with http.get(edge.url(key), headers={"Range": range_header}) as response:
                return response.status, await response.read()

        start, end = SLICE + 10, 3 * SLICE - 1  # slices 1 and 2
        results = await asyncio.gather(*(get(f"bytes={start}-{end}") for _ in range(60)))
        assert all(r == (206, source[start : end + 1]) for r in results)
        # 60 requests over 3 processes: one origin request per slice, no HEAD.
        assert sorted(s.range or "" for s in proxy.gets(key)) == sorted(
            [f"bytes={SLICE}-{2 * SLICE - 1}", f"bytes={2 * SLICE}-{3 * SLICE - 1}"]
        )
        assert proxy.heads(key) == []
        # The slices are stored once, in the owner's directory.
        stored = [p for p in (tmp_path / "cache").rglob("*.[0-9]*") if p.is_file()]
        deadline = time.monotonic() + 5
        while len(stored) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            stored = [p for p in (tmp_path / "cache").rglob("*.[0-9]*") if p.is_file()]
        assert len(stored) == 2
        assert len({p.parent.parent.parent for p in stored}) == 1

        # Every worker's counts on one page (batched counts reach it within a flush or two).
        deadline = time.monotonic() + 5
        totals = await scrape(edge.admin)
        while totals.get("edge_requests_total", 0) < 60 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            totals = await scrape(edge.admin)
        assert totals["edge_requests_total"] == 60
        assert totals["edge_peer_requests_total"] >= 1  # misses crossed workers
        assert totals["edge_cache_max_bytes"] == 64 * 2**20 // WORKERS * WORKERS
        assert totals["edge_cache_bytes"] == 2 * SLICE


async def _slow_download(public: str, target: str) -> tuple[socket.socket, bytes]:
    """Open a GET with a small receive buffer and read only the head and a little body."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    host, port = public.removeprefix("http://").split(":")
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
    received = b""
    while len(received) < 64 * 1024:
        received += await loop.sock_recv(sock, 16 * 1024)
    return sock, received


async def _finish(sock: socket.socket, received: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))[15:]
    )
    while len(body) < length:
        chunk = await loop.sock_recv(sock, 256 * 1024)
        if not chunk:
            break
        body += chunk
    sock.close()
    return body


async def test_restarting_one_worker_drops_no_connection(
    proxy: FaultProxy, bucket: Bucket, tmp_path: Path, run_dir: Path
) -> None:
    key = "assets/big/preview.mp4"
    source = random_bytes(8 * 2**20, seed=11)
    await bucket.put(key, source)
    async with (
        supervised(proxy, bucket, tmp_path, run_dir, EDGE_SHUTDOWN_TIMEOUT_S="30") as edge,
        fresh_connections() as http,
    ):
        async with http.get(edge.url(key)) as response:  # warm the cache
            assert await response.read() == source
        before = edge.pids()
        target = edge.url(key).removeprefix(edge.public)
        downloads = [await _slow_download(edge.public, target) for _ in range(8)]

        os.kill(before[1], signal.SIGTERM)  # one worker drains and is replaced
        bodies = await asyncio.gather(*(_finish(sock, got) for sock, got in downloads))
        assert all(hashlib.sha256(b).digest() == hashlib.sha256(source).digest() for b in bodies)

        after = await edge.ready(WORKERS)
        assert after[1] != before[1]
        assert not alive(before[1])
        assert {s: after[s] for s in (0, 2)} == {s: before[s] for s in (0, 2)}
        for _ in range(6):
            async with http.get(edge.url(key), headers={"Range": "bytes=0-99"}) as response:
                assert (response.status, await response.read()) == (206, source[:100])


async def test_a_killed_worker_is_replaced_and_sighup_replaces_all(
    proxy: FaultProxy, bucket: Bucket, tmp_path: Path, run_dir: Path
) -> None:
    key = "assets/k/preview.mp4"
    source = random_bytes(2 * SLICE + 3, seed=2)
    await bucket.put(key, source)
    async with supervised(proxy, bucket, tmp_path, run_dir) as edge, fresh_connections() as http:

        async def check() -> None:
            for _ in range(6):
                async with http.get(edge.url(key)) as response:
                    assert (response.status, await response.read()) == (200, source)

        await check()
        before = edge.pids()
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while edge.pids().get(0) == before[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        after = await edge.ready(WORKERS)
        assert after[0] != before[0]
        assert not alive(before[0])
        assert {s: after[s] for s in (1, 2)} == {s: before[s] for s in (1, 2)}
        await check()

        assert edge.process.pid is not None
        os.kill(edge.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rolled = edge.pids()
            if all(rolled.get(s) != after[s] for s in range(WORKERS)):
                break
            await asyncio.sleep(0.1)
        rolled = await edge.ready(WORKERS)
        assert all(rolled[s] != after[s] for s in range(WORKERS))
        assert not any(alive(after[s]) for s in range(WORKERS))
        await check()

        edge.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(edge.process.wait(), 30) == 0
        assert not any(alive(rolled[s]) for s in range(WORKERS))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"EDGE_LISTEN": "127.0.0.1:0"}, "EDGE_LISTEN: several workers need a fixed port, not 0"),
        (
            {"EDGE_CACHE_MAX_BYTES": "128K"},
            "EDGE_CACHE_MAX_BYTES: each of 3 workers needs at least EDGE_SLICE_BYTES",
        ),
    ],
)
async def test_settings_workers_cannot_share_are_refused_in_one_line(
    overrides: dict[str, str], message: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **edge_env("http://127.0.0.1:9", "previews", tmp_path / "cache"),
        "EDGE_LISTEN": "127.0.0.1:18080",
        "EDGE_ADMIN_LISTEN": "127.0.0.1:19090",
        **overrides,
    }
    process = await serve_workers(env, stderr=asyncio.subprocess.PIPE)
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert stderr.decode().strip() == f"edge-cache: {message}"


async def test_workers_that_keep_dying_stop_the_supervisor_instead_of_looping(
    proxy: FaultProxy, bucket: Bucket, tmp_path: Path, run_dir: Path
) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / f"workers-{WORKERS}").write_text("not a directory")  # every worker fails
    env = {
        **os.environ,
        **edge_env(proxy.url, bucket.name, cache_dir),
        "EDGE_LISTEN": f"127.0.0.1:{free_port()}",
        "EDGE_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "EDGE_RUN_DIR": str(run_dir),
    }
    process = await serve_workers(
        env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    last = json.loads(stderr.decode().strip().splitlines()[-1])
    assert last["level"] == "error"
    assert "exited 5 times within 10 s of starting" in last["msg"]
