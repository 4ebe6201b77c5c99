"""Control-plane fixtures: a throwaway database on the real PostgreSQL, the real Redis, buckets on
the embedded S3 server, and the app served by uvicorn on a loopback socket."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import asyncpg
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from control.app import create_app
from control.config import ControlSettings
from control.services import Services
from edge_cache.app import Edge
from edge_cache.config import EdgeSettings

ADMIN_DB_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
API_KEY = "alice-key-0123456789abcdefghij"
OTHER_KEY = "bob-key-0123456789abcdefghijkl"
EDGE_KEY = "control-test-edge-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of its own for this test session, dropped at the end."""
    name = f"control_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_DB_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        pytest.fail(f"PostgreSQL is needed at {ADMIN_DB_URL} (see README: services): {exc}")
    yield ADMIN_DB_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@dataclass
class Buckets:
    endpoint: str
    staging: str
    masters: str
    previews: str
    session: Any

    async def keys(self, bucket: str) -> list[str]:
        async with self.session.client("s3", endpoint_url=self.endpoint) as s3:
            page = await s3.list_objects_v2(Bucket=bucket)
            return [item["Key"] for item in page.get("Contents", [])]

    async def read(self, bucket: str, key: str) -> bytes:
        async with self.session.client("s3", endpoint_url=self.endpoint) as s3:
            response = await s3.get_object(Bucket=bucket, Key=key)
            return bytes(await response["Body"].read())

    async def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        async with self.session.client("s3", endpoint_url=self.endpoint) as s3:
            await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


@pytest.fixture
async def buckets(s3_endpoint: str) -> Buckets:
    session = aioboto3.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    suffix = uuid.uuid4().hex[:10]
    made = Buckets(s3_endpoint, f"stg-{suffix}", f"mst-{suffix}", f"prv-{suffix}", session)
    async with session.client("s3", endpoint_url=s3_endpoint) as s3:
        for name in (made.staging, made.masters, made.previews):
            await s3.create_bucket(Bucket=name)
    return made


def control_env(database_url: str, buckets: Buckets, **overrides: str) -> dict[str, str]:
    env = {
        "POSTGRES_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "WASABI_ENDPOINT": buckets.endpoint,
        "WASABI_ACCESS_KEY_ID": "test",
        "WASABI_SECRET_ACCESS_KEY": "test",
        "WASABI_BUCKET_STAGING": buckets.staging,
        "WASABI_BUCKET_MASTERS": buckets.masters,
        "WASABI_BUCKET_PREVIEWS": buckets.previews,
        "CONTROL_API_KEYS": f"alice:{API_KEY},bob:{OTHER_KEY}",
        "RATE_LIMIT_MAX": "0",
        "RL_PRESIGN_MAX": "0",
        "RL_PROMOTE_MAX": "0",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v != ""}


def previews_edge(buckets: Buckets, cache_dir: Path, **overrides: str) -> Edge:
    """An edge in front of the previews bucket, signing with the control plane's edge key."""
    env = {
        "WASABI_ENDPOINT": buckets.endpoint,
        "WASABI_ACCESS_KEY_ID": "test",
        "WASABI_SECRET_ACCESS_KEY": "test",
        "WASABI_BUCKET_PREVIEWS": buckets.previews,
        "EDGE_SIGNING_KEY": EDGE_KEY,
        "EDGE_LISTEN": "127.0.0.1:0",
        "EDGE_ADMIN_LISTEN": "127.0.0.1:0",
        "EDGE_CACHE_DIR": str(cache_dir),
        "EDGE_DRAIN_GRACE_MS": "0",
        "RATE_LIMIT_MAX": "0",
        **overrides,
    }
    return Edge(EdgeSettings.from_env(env), registry=CollectorRegistry())


@dataclass
class LiveControl:
    url: str
    services: Services

    def api(self, path: str) -> str:
        return self.url + path


ControlFactory = Callable[..., AbstractAsyncContextManager[LiveControl]]


@pytest.fixture
def make_control(database_url: str, buckets: Buckets) -> ControlFactory:
    @asynccontextmanager
    async def factory(**overrides: str) -> AsyncIterator[LiveControl]:
        settings = ControlSettings.from_env(control_env(database_url, buckets, **overrides))
        app = create_app(settings, registry=CollectorRegistry())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", loop="none")
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        try:
            yield LiveControl(f"http://127.0.0.1:{port}", app.state.services)
        finally:
            server.should_exit = True
            await task
            sock.close()

    return factory


@pytest.fixture
async def api() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_KEY}"}, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session
