"""Fixtures: a real S3-compatible server (moto) on loopback, a fault proxy, edge factories."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest
import uvloop
from moto.server import ThreadedMotoServer
from prometheus_client import CollectorRegistry

from edge_cache.app import Edge, RunningEdge, running
from edge_cache.config import EdgeSettings
from tests.faultproxy import FaultProxy

SIGNING_KEY = "test-signing-secret-0123456789abcdef-xyz"
ADMIN_TOKEN = "test-admin-token-0123456789"


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    """Run every async test on uvloop, the loop the edge runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class Bucket:
    """A fresh bucket on the real S3 server, with helpers to put objects."""

    def __init__(self, endpoint: str, name: str) -> None:
        self.endpoint = endpoint
        self.name = name
        self.session = aioboto3.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        )

    async def put(self, key: str, body: bytes, content_type: str = "video/mp4") -> str:
        async with self.session.client("s3", endpoint_url=self.endpoint) as s3:
            result = await s3.put_object(
                Bucket=self.name, Key=key, Body=body, ContentType=content_type
            )
        return str(result["ETag"])

    async def delete(self, key: str) -> None:
        async with self.session.client("s3", endpoint_url=self.endpoint) as s3:
            await s3.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
async def bucket(s3_endpoint: str) -> Bucket:
    created = Bucket(s3_endpoint, f"previews-{uuid.uuid4().hex[:12]}")
    async with created.session.client("s3", endpoint_url=s3_endpoint) as s3:
        await s3.create_bucket(Bucket=created.name)
    return created


@pytest.fixture
async def proxy(s3_endpoint: str) -> AsyncIterator[FaultProxy]:
    fault_proxy = FaultProxy(s3_endpoint)
    await fault_proxy.start()
    yield fault_proxy
    await fault_proxy.close()


def edge_env(endpoint: str, bucket: str, cache_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        "WASABI_ENDPOINT": endpoint,
        "WASABI_ACCESS_KEY_ID": "test",
        "WASABI_SECRET_ACCESS_KEY": "test",
        "WASABI_BUCKET_PREVIEWS": bucket,
        "EDGE_SIGNING_KEY": SIGNING_KEY,
        "EDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        "EDGE_LISTEN": "127.0.0.1:0",
        "EDGE_ADMIN_LISTEN": "127.0.0.1:0",
        "EDGE_CACHE_DIR": str(cache_dir),
        "EDGE_CACHE_MAX_BYTES": "64M",
        "EDGE_SLICE_BYTES": "64K",
        "EDGE_DRAIN_GRACE_MS": "0",
        "EDGE_SHUTDOWN_TIMEOUT_S": "5",
        "RATE_LIMIT_MAX": "0",
        "FETCH_TIMEOUT_MS": "2000",
    }
    env.update(overrides)
    return env


EdgeFactory = Callable[..., AbstractAsyncContextManager[RunningEdge]]


@pytest.fixture
def make_edge(proxy: FaultProxy, bucket: Bucket, tmp_path: Path) -> EdgeFactory:
    """Start an edge in front of the fault proxy; keyword arguments override env variables."""

    @asynccontextmanager
    async def factory(
        *,
        clock: Callable[[], float] | None = None,
        use_sendfile: bool = True,
        cache_dir: Path | None = None,
        **overrides: str,
    ) -> AsyncIterator[RunningEdge]:
        env = edge_env(proxy.url, bucket.name, cache_dir or tmp_path / "cache", **overrides)
        settings = EdgeSettings.from_env(env)
        extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
        edge = Edge(settings, registry=CollectorRegistry(), use_sendfile=use_sendfile, **extra)
        async with running(edge) as live:
            yield live

    return factory


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A directory for unix sockets: short, unlike pytest's tmp_path (sun_path is 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="edge-run-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # auto_decompress off and no cookie jar: we compare raw bytes and send explicit headers.
    async with aiohttp.ClientSession(
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


def random_bytes(size: int, seed: int = 7) -> bytes:
    """Deterministic pseudo-random content: any misplaced byte shows up in a comparison."""
    import random

    return random.Random(seed).randbytes(size)


def cache_files(cache_dir: Path) -> list[Path]:
    """Slice files on disk (not meta files)."""
    root = cache_dir / "objects"
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".meta")]


def disk_bytes(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in cache_files(cache_dir))


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
