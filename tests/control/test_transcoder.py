"""The preview worker with real ffmpeg: a control-plane job in, previews out, on the edge."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from control import db
from edge_cache.app import running
from tests.control.conftest import (
    EDGE_KEY,
    REDIS_URL,
    Buckets,
    ControlFactory,
    LiveControl,
    previews_edge,
)
from tests.control.test_flow import upload
from transcoder.config import WorkerSettings
from transcoder.ffmpeg import Encoder
from transcoder.worker import DEAD_LETTER, GROUP, STREAM, PreviewWorker

SAMPLE = Path(__file__).resolve().parents[2] / "edge_cache" / "sample" / "preview.mp4"

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")

WorkerFactory = Callable[..., AbstractAsyncContextManager[PreviewWorker]]


@pytest.fixture
async def fresh_stream() -> AsyncIterator[None]:
    """An empty job stream during the test, and none of its entries left behind after it."""
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.delete(STREAM, DEAD_LETTER)
        yield
        await client.delete(STREAM, DEAD_LETTER)
    finally:
        await client.aclose()


@pytest.fixture
def make_worker(
    database_url: str, buckets: Buckets, tmp_path: Path, fresh_stream: None
) -> WorkerFactory:
    @asynccontextmanager
    async def factory(**overrides: str) -> AsyncIterator[PreviewWorker]:
        env = {
            "REDIS_URL": REDIS_URL,
            "POSTGRES_URL": database_url,
            "WASABI_ENDPOINT": buckets.endpoint,
            "WASABI_ACCESS_KEY_ID": "test",
            "WASABI_SECRET_ACCESS_KEY": "test",
            "TRANSCODER_GPU": "off",
            "TRANSCODER_WORK_DIR": str(tmp_path),
            "TRANSCODER_CONSUMER": f"test-{uuid.uuid4().hex[:6]}",
            **overrides,
        }
        worker = PreviewWorker(WorkerSettings.from_env(env), Encoder.CPU)
        await worker.start()
        try:
            yield worker
        finally:
            await worker.close()

    return factory


async def promote_upload(
    api: aiohttp.ClientSession, live: LiveControl, body: bytes
) -> tuple[str, str]:
    asset_id = (await upload(api, live, body))["asset_id"]
    async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
        job_id = (await response.json())["job_id"]
    return asset_id, job_id


async def wait_for_stream(job_id: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    try:
        for _ in range(200):
            entries = await client.xrange(STREAM)
            if any(f'"job_id": "{job_id}"'.encode() in f.get(b"job", b"") for _, f in entries):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the relay did not publish the job")
    finally:
        await client.aclose()


async def test_a_real_video_becomes_a_preview_set_served_by_the_edge(
    make_control: ControlFactory,
    make_worker: WorkerFactory,
    api: aiohttp.ClientSession,
    buckets: Buckets,
    tmp_path: Path,
) -> None:
    edge = previews_edge(buckets, tmp_path / "edge", EDGE_ADMIN_TOKEN="edge-admin-token-for-tests")
    async with (
        running(edge) as live_edge,
        make_control(EDGE_PUBLIC_BASE=live_edge.public_url, EDGE_SIGNING_KEY=EDGE_KEY) as live,
        make_worker(
            EDGE_ADMIN_BASE=live_edge.admin_url, EDGE_ADMIN_TOKEN="edge-admin-token-for-tests"
        ) as worker,
    ):
        asset_id, job_id = await promote_upload(api, live, SAMPLE.read_bytes())
        await wait_for_stream(job_id)
        assert await worker.process_next()

        async with api.get(live.api(f"/api/assets/{asset_id}")) as response:
            asset = await response.json()
        assert (asset["status"], asset["progress"]) == ("ready", 1.0)
        keys = set(await buckets.keys(buckets.previews))
        prefix = f"assets/{asset_id}/"
        for name in ("preview.mp4", "poster.jpg", "sprite.jpg", "sprite.vtt", "hls/index.m3u8"):
            assert prefix + name in keys
        playlist = (await buckets.read(buckets.previews, prefix + "hls/index.m3u8")).decode()
        segments = [line for line in playlist.splitlines() if line.endswith(".ts")]
        assert len(segments) >= 2  # a 6 s clip in 4 s segments
        assert all(prefix + "hls/" + s in keys for s in segments)
        poster = await buckets.read(buckets.previews, prefix + "poster.jpg")
        assert poster[:3] == b"\xff\xd8\xff"  # JPEG
        vtt = (await buckets.read(buckets.previews, prefix + "sprite.vtt")).decode()
        assert vtt.startswith("WEBVTT")
        assert "sprite.jpg#xywh=0,0,160," in vtt

        # the proxy is a real H.264 MP4 of about the same duration
        proxy = tmp_path / "proxy.mp4"
        proxy.write_bytes(await buckets.read(buckets.previews, prefix + "preview.mp4"))
        probe = await asyncio.create_subprocess_exec(
            "ffprobe",
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            str(proxy),
            stdout=asyncio.subprocess.PIPE,
        )
        info = json.loads((await probe.communicate())[0])
        video = next(s for s in info["streams"] if s["codec_type"] == "video")
        assert video["codec_name"] == "h264"
        assert 5.0 < float(info["format"]["duration"]) < 7.0

        # the worker warmed the edge, and the signed playback URLs play from it
        for _ in range(100):
            if edge.index.slice_count >= len(keys):
                break
            await asyncio.sleep(0.05)
        async with api.post(live.api(f"/api/assets/{asset_id}/playback"), json={}) as response:
            playback = await response.json()
        async with aiohttp.ClientSession() as plain:
            async with plain.get(aiohttp.client.URL(playback["mp4"], encoded=True)) as response:
                assert response.headers["X-Cache"] == "HIT"
                assert await response.read() == proxy.read_bytes()
            hls = aiohttp.client.URL(playback["hls"], encoded=True)
            async with plain.get(hls) as response:
                assert (await response.text()) == playlist
            segment_url = str(hls).rsplit("/", 1)[0] + "/" + segments[0]
            async with plain.get(aiohttp.client.URL(segment_url, encoded=True)) as response:
                assert response.status == 200  # the prefix token in the path covers segments


async def test_a_corrupt_upload_fails_with_a_reason(
    make_control: ControlFactory, make_worker: WorkerFactory, api: aiohttp.ClientSession
) -> None:
    async with make_control() as live, make_worker() as worker:
        asset_id, job_id = await promote_upload(api, live, b"\x00\x01 this is no video " * 100)
        await wait_for_stream(job_id)
        assert await worker.process_next()
        async with api.get(live.api(f"/api/assets/{asset_id}")) as response:
            asset = await response.json()
        assert asset["status"] == "failed"
        assert asset["failure_reason"].startswith("not a readable video")
        assert not await worker.process_next()  # acknowledged: not delivered again


async def test_a_dead_workers_job_is_reclaimed_and_duplicates_are_skipped(
    make_control: ControlFactory, make_worker: WorkerFactory, api: aiohttp.ClientSession
) -> None:
    async with make_control() as live, make_worker(TRANSCODER_CLAIM_IDLE_S="1") as survivor:
        asset_id, job_id = await promote_upload(api, live, SAMPLE.read_bytes())
        await wait_for_stream(job_id)
        client = aioredis.from_url(REDIS_URL)
        try:
            # A worker that reads the job and dies before acknowledging it.
            taken = await client.xreadgroup(GROUP, "doomed", {STREAM: ">"}, count=1)
            assert taken
            assert not await survivor.process_next()  # not idle long enough yet
            await asyncio.sleep(1.2)
            assert await survivor.process_next()
            async with api.get(live.api(f"/api/assets/{asset_id}")) as response:
                assert (await response.json())["status"] == "ready"
            # A duplicate delivery of the finished job is acknowledged without work.
            entry = (await client.xrange(STREAM))[0]
            await client.xadd(STREAM, entry[1])
            assert await survivor.process_next()
            assert await db.job_status(live.services.pool, uuid.UUID(job_id)) == "done"
            pending = await client.xpending(STREAM, GROUP)
            assert pending["pending"] == 0
        finally:
            await client.aclose()


async def test_poison_messages_are_dead_lettered(
    make_control: ControlFactory, make_worker: WorkerFactory, api: aiohttp.ClientSession
) -> None:
    async with (
        make_control() as live,
        make_worker(TRANSCODER_CLAIM_IDLE_S="1", TRANSCODER_MAX_DELIVERIES="2") as worker,
    ):
        client = aioredis.from_url(REDIS_URL)
        try:
            await client.xadd(STREAM, {"job": "{not json"})
            assert await worker.process_next()
            dead = await client.xrange(DEAD_LETTER)
            assert dead[-1][1][b"reason"] == b"unreadable job message"

            # A job whose worker keeps dying is failed after TRANSCODER_MAX_DELIVERIES.
            asset_id, job_id = await promote_upload(api, live, SAMPLE.read_bytes())
            await wait_for_stream(job_id)
            for consumer in ("crash-1", "crash-2"):
                await asyncio.sleep(1.1)
                claimed = await client.xautoclaim(STREAM, GROUP, consumer, 1000, "0-0", count=1)
                if not claimed[1]:
                    await client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1)
            await asyncio.sleep(1.1)
            assert await worker.process_next()
            async with api.get(live.api(f"/api/assets/{asset_id}")) as response:
                asset = await response.json()
            assert asset["status"] == "failed"
            assert asset["failure_reason"].startswith("gave up after")
        finally:
            await client.aclose()
