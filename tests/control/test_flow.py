"""presign -> PUT -> promote -> job -> progress -> playback, against real PostgreSQL, Redis, S3."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from control import db
from control.jobs import stream_for
from edge_cache.app import running
from tests.conftest import random_bytes
from tests.control.conftest import (
    EDGE_KEY,
    REDIS_URL,
    Buckets,
    ControlFactory,
    LiveControl,
    previews_edge,
)


async def upload(
    api: aiohttp.ClientSession, live: LiveControl, body: bytes, **fields: Any
) -> dict[str, Any]:
    request = {"filename": "My Holiday.mov", "content_type": "video/mp4", "size_bytes": len(body)}
    request.update(fields)
    async with api.post(live.api("/api/uploads"), json=request) as response:
        assert response.status == 201, await response.text()
        created: dict[str, Any] = await response.json()
    put = created["put"]
    # the browser's PUT carries no API key
    async with (
        aiohttp.ClientSession() as plain,
        plain.put(put["url"], data=body, headers=put["headers"]) as response,
    ):
        assert response.status == 200
    return created


def _job_of(entry: Any) -> dict[str, Any] | None:
    """The job an entry carries; None for entries that are not ours to read."""
    try:
        job = json.loads(entry[1][b"job"])
    except (KeyError, ValueError):
        return None
    return job if isinstance(job, dict) else None


async def stream_jobs(job_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Messages for `job_id` on the preview jobs stream (waiting for the relay)."""
    client = aioredis.from_url(REDIS_URL)
    try:
        for _ in range(int(timeout / 0.05)):
            entries = await client.xrange(stream_for("preview"))
            found = [job for job in map(_job_of, entries) if job and job.get("job_id") == job_id]
            if found:
                return found
            await asyncio.sleep(0.05)
        return []
    finally:
        await client.aclose()


async def test_upload_promote_job_progress_and_edge_playback(
    make_control: ControlFactory,
    api: aiohttp.ClientSession,
    buckets: Buckets,
    database_url: str,
    tmp_path: Path,
) -> None:
    source = random_bytes(300_000, seed=21)
    md5 = base64.b64encode(hashlib.md5(source).digest()).decode()  # noqa: S324 - S3's checksum
    async with make_control(
        EDGE_PUBLIC_BASE="http://edge.invalid", EDGE_SIGNING_KEY=EDGE_KEY
    ) as live:
        created = await upload(api, live, source, content_md5=md5)
        asset_id = created["asset_id"]
        signed = parse_qs(urlsplit(created["put"]["url"]).query)["X-Amz-SignedHeaders"][0]
        assert set(signed.split(";")) >= {"content-type", "content-length", "content-md5", "host"}
        # keys are ours: the user's file name is metadata, never a path
        assert await buckets.keys(buckets.staging) == [f"uploads/{asset_id}"]

        async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
            assert response.status == 200
            first = await response.json()
        assert first["created"] is True
        assert first["asset"]["status"] == "promoted"
        assert await buckets.read(buckets.masters, f"assets/{asset_id}/master") == source

        # idempotent, also under concurrency: one master, one job
        results = await asyncio.gather(
            *(api.post(live.api(f"/api/assets/{asset_id}/promote")) for _ in range(5))
        )
        bodies = [await r.json() for r in results]
        assert {b["job_id"] for b in bodies} == {first["job_id"]}
        assert not any(b["created"] for b in bodies)
        conn = await asyncpg.connect(database_url)
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE asset_id = $1", uuid.UUID(asset_id)
            )
            assert count == 1
        finally:
            await conn.close()

        messages = await stream_jobs(first["job_id"])
        assert len(messages) == 1
        assert messages[0]["master_key"] == f"assets/{asset_id}/master"
        assert messages[0]["previews_prefix"] == f"assets/{asset_id}/"

        # the worker reports through the database; the asset's status follows
        pool = live.services.pool
        job_id = uuid.UUID(first["job_id"])
        assert await db.record_job_progress(pool, job_id, progress=0.4)
        async with api.get(live.api(f"/api/assets/{asset_id}")) as response:
            asset = await response.json()
        assert (asset["status"], round(asset["progress"], 2)) == ("processing", 0.4)
        async with api.post(live.api(f"/api/assets/{asset_id}/playback"), json={}) as response:
            assert response.status == 409  # not ready yet

        preview = random_bytes(150_000, seed=22)
        await buckets.put(buckets.previews, f"assets/{asset_id}/preview.mp4", preview, "video/mp4")
        await buckets.put(
            buckets.previews,
            f"assets/{asset_id}/hls/index.m3u8",
            b"#EXTM3U\n",
            "application/vnd.apple.mpegurl",
        )
        assert await db.record_job_progress(pool, job_id, done=True)
        assert not await db.record_job_progress(pool, job_id, progress=0.1)  # finished stays so

        async with api.post(
            live.api(f"/api/assets/{asset_id}/playback"), json={"ttl_s": 600}
        ) as response:
            assert response.status == 200
            playback = await response.json()
        assert playback["via"] == "edge"
        assert "/t/" in playback["hls"]
        async with api.post(
            live.api(f"/api/assets/{asset_id}/playback"), json={"bind_ip": True}
        ) as response:
            bound = await response.json()
        token = parse_qs(urlsplit(bound["mp4"]).query)["token"][0]
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert claims["ip"] == "127.0.0.1"
        assert claims["acl"] == f"/assets/{asset_id}/preview.mp4"

    # The URLs the control plane signed are accepted by a real edge with the same key.
    edge = previews_edge(buckets, tmp_path / "edge")
    async with running(edge) as live_edge, aiohttp.ClientSession() as plain:
        for field, expected in (("mp4", preview), ("hls", b"#EXTM3U\n")):
            url = playback[field].replace("http://edge.invalid", live_edge.public_url)
            async with plain.get(aiohttp.client.URL(url, encoded=True)) as response:
                assert response.status == 200, field
                assert await response.read() == expected


async def test_playback_falls_back_to_presigned_storage_urls(
    make_control: ControlFactory, api: aiohttp.ClientSession, buckets: Buckets
) -> None:
    source = random_bytes(10_000, seed=23)
    async with make_control() as live:
        asset_id = (await upload(api, live, source))["asset_id"]
        async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
            job_id = uuid.UUID((await response.json())["job_id"])
        preview = random_bytes(5000, seed=24)
        await buckets.put(buckets.previews, f"assets/{asset_id}/preview.mp4", preview, "video/mp4")
        await db.record_job_progress(live.services.pool, job_id, done=True)
        async with api.post(live.api(f"/api/assets/{asset_id}/playback"), json={}) as response:
            playback = await response.json()
        assert playback["via"] == "storage"
        assert playback["hls"] is None
        async with (
            aiohttp.ClientSession() as plain,
            plain.get(aiohttp.client.URL(playback["mp4"], encoded=True)) as response,
        ):
            assert response.status == 200
            assert await response.read() == preview
        async with api.post(
            live.api(f"/api/assets/{asset_id}/playback"), json={"ttl_s": 10**7}
        ) as response:
            assert response.status == 400


async def test_failed_jobs_show_their_reason(
    make_control: ControlFactory, api: aiohttp.ClientSession
) -> None:
    async with make_control() as live:
        asset_id = (await upload(api, live, b"not really a video"))["asset_id"]
        async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
            job_id = uuid.UUID((await response.json())["job_id"])
        await db.record_job_progress(
            live.services.pool, job_id, failure_reason="ffmpeg: Invalid data found"
        )
        async with api.get(live.api(f"/api/assets/{asset_id}")) as response:
            asset = await response.json()
        assert (asset["status"], asset["failure_reason"]) == (
            "failed",
            "ffmpeg: Invalid data found",
        )
        async with api.get(live.api("/api/assets?status=failed")) as response:
            assert asset_id in [a["id"] for a in (await response.json())["items"]]


async def test_promote_refuses_missing_or_mismatched_uploads(
    make_control: ControlFactory, api: aiohttp.ClientSession, buckets: Buckets
) -> None:
    async with make_control() as live:
        request = {"filename": "a.mp4", "content_type": "video/mp4", "size_bytes": 100}
        async with api.post(live.api("/api/uploads"), json=request) as response:
            asset_id = (await response.json())["asset_id"]
        async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
            assert response.status == 409  # nothing uploaded yet
        await buckets.put(buckets.staging, f"uploads/{asset_id}", b"x" * 99, "video/mp4")
        async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
            assert response.status == 409  # wrong size
            assert "99" in (await response.json())["detail"]
        body = b"y" * 50
        md5 = base64.b64encode(hashlib.md5(b"z" * 50).digest()).decode()  # noqa: S324
        created = await upload(api, live, body, content_md5=md5)  # moto does not check the MD5
        async with api.post(live.api(f"/api/assets/{created['asset_id']}/promote")) as response:
            assert response.status == 409
            assert "checksum" in (await response.json())["detail"]
        assert await buckets.keys(buckets.masters) == []


async def test_multipart_upload_and_multipart_copy(
    make_control: ControlFactory, api: aiohttp.ClientSession, buckets: Buckets
) -> None:
    source = random_bytes(11 << 20, seed=25)
    async with make_control(
        UPLOAD_PART_BYTES=str(5 << 20),
        COPY_MULTIPART_THRESHOLD=str(6 << 20),
        COPY_PART_BYTES=str(5 << 20),
    ) as live:
        request = {
            "filename": "big.mp4",
            "content_type": "video/mp4",
            "size_bytes": len(source),
            "multipart": True,
        }
        async with api.post(live.api("/api/uploads"), json=request) as response:
            created = await response.json()
        info = created["multipart"]
        assert info["part_bytes"] == 5 << 20
        assert [p["part_number"] for p in info["parts"]] == [1, 2, 3]
        asset_id = created["asset_id"]
        async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
            assert response.status == 409  # not completed yet
        parts = []
        async with aiohttp.ClientSession() as plain:
            for part in info["parts"]:
                start = (part["part_number"] - 1) * info["part_bytes"]
                chunk = source[start : start + info["part_bytes"]]
                async with plain.put(part["url"], data=chunk) as response:
                    assert response.status == 200
                    parts.append(
                        {"part_number": part["part_number"], "etag": response.headers["ETag"]}
                    )
        async with api.post(
            live.api(f"/api/uploads/{asset_id}/complete"), json={"parts": parts}
        ) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "staged"
        async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
            assert response.status == 200
        assert await buckets.read(buckets.masters, f"assets/{asset_id}/master") == source

        # abort of another multipart upload
        async with api.post(live.api("/api/uploads"), json=request) as response:
            other = (await response.json())["asset_id"]
        async with api.post(live.api(f"/api/uploads/{other}/abort")) as response:
            assert (await response.json())["status"] == "failed"
        async with api.post(live.api(f"/api/uploads/{other}/abort")) as response:
            assert response.status == 409


async def test_delete_removes_objects_and_purges_the_edge(
    make_control: ControlFactory, api: aiohttp.ClientSession, buckets: Buckets, tmp_path: Path
) -> None:
    edge = previews_edge(buckets, tmp_path / "edge", EDGE_ADMIN_TOKEN="edge-admin-token-for-tests")
    async with (
        running(edge) as live_edge,
        make_control(
            EDGE_PUBLIC_BASE=live_edge.public_url,
            EDGE_SIGNING_KEY=EDGE_KEY,
            EDGE_ADMIN_BASE=live_edge.admin_url,
            EDGE_ADMIN_TOKEN="edge-admin-token-for-tests",
        ) as live,
    ):
        asset_id = (await upload(api, live, b"v" * 1000))["asset_id"]
        async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
            job_id = uuid.UUID((await response.json())["job_id"])
        await buckets.put(
            buckets.previews, f"assets/{asset_id}/preview.mp4", b"p" * 500, "video/mp4"
        )
        await db.record_job_progress(live.services.pool, job_id, done=True)
        async with api.post(live.api(f"/api/assets/{asset_id}/playback"), json={}) as response:
            mp4 = (await response.json())["mp4"]
        async with aiohttp.ClientSession() as plain:
            async with plain.get(aiohttp.client.URL(mp4, encoded=True)) as response:
                assert await response.read() == b"p" * 500
            await edge.cache.settled()
            assert edge.index.slice_count == 1

            async with api.delete(live.api(f"/api/assets/{asset_id}")) as response:
                assert response.status == 204
            assert edge.index.slice_count == 0  # purged from the edge's cache
            for bucket in (buckets.staging, buckets.masters, buckets.previews):
                assert await buckets.keys(bucket) == []
            async with api.get(live.api(f"/api/assets/{asset_id}")) as response:
                assert response.status == 404
            async with plain.get(aiohttp.client.URL(mp4, encoded=True)) as response:
                assert response.status == 404
