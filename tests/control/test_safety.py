"""Auth, validation, rate limits, CORS, health and docs of the control plane."""

from __future__ import annotations

import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.control.conftest import API_KEY, OTHER_KEY, REDIS_URL, ControlFactory

VALID = {"filename": "clip.mp4", "content_type": "video/mp4", "size_bytes": 1000}


async def test_health_ready_and_docs_need_no_key(make_control: ControlFactory) -> None:
    async with make_control() as live, aiohttp.ClientSession() as plain:
        async with plain.get(live.api("/api/health")) as response:
            assert (response.status, await response.json()) == (200, {"ok": True})
        async with plain.get(live.api("/api/ready")) as response:
            assert (response.status, await response.json()) == (
                200,
                {"ok": True, "postgres": True, "redis": True},
            )
        async with plain.get(live.api("/api/docs")) as response:
            assert response.status == 200
            assert "text/html" in response.headers["Content-Type"]
        async with plain.get(live.api("/api/docs/openapi.json")) as response:
            schema = await response.json()
        assert "/api/uploads" in schema["paths"]
        assert "/api/assets/{asset_id}/playback" in schema["paths"]


async def test_readiness_reports_a_dead_redis_without_failing_liveness(
    make_control: ControlFactory,
) -> None:
    async with make_control(REDIS_URL="redis://127.0.0.1:1/0") as live:
        async with aiohttp.ClientSession() as plain:
            async with plain.get(live.api("/api/ready")) as response:
                assert response.status == 503
                assert await response.json() == {"ok": False, "postgres": True, "redis": False}
            async with plain.get(live.api("/api/health")) as response:
                assert response.status == 200


async def test_every_other_endpoint_needs_an_api_key(make_control: ControlFactory) -> None:
    some = uuid.uuid4()
    endpoints = [
        ("GET", "/api/assets"),
        ("GET", f"/api/assets/{some}"),
        ("DELETE", f"/api/assets/{some}"),
        ("POST", f"/api/assets/{some}/promote"),
        ("POST", f"/api/assets/{some}/playback"),
        ("POST", "/api/uploads"),
        ("POST", f"/api/uploads/{some}/complete"),
        ("POST", f"/api/uploads/{some}/abort"),
        ("GET", "/api/metrics"),
    ]
    async with make_control() as live, aiohttp.ClientSession() as plain:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key-wrong-key-wrong"},
            {"X-API-Key": ""},
        ):
            for method, path in endpoints:
                async with plain.request(method, live.api(path), headers=headers) as response:
                    assert response.status == 401, (method, path, headers)
        async with plain.get(live.api("/api/assets"), headers={"X-API-Key": API_KEY}) as response:
            assert response.status == 200
        async with plain.get(
            live.api("/api/metrics"), headers={"Authorization": f"Bearer {API_KEY}"}
        ) as response:
            assert "control_requests_total" in await response.text()


async def test_assets_are_private_to_their_key(
    make_control: ControlFactory, api: aiohttp.ClientSession
) -> None:
    async with make_control() as live:
        async with api.post(live.api("/api/uploads"), json=VALID) as response:
            asset_id = (await response.json())["asset_id"]
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        async with aiohttp.ClientSession(headers=other) as bob:
            for method, path in (
                ("GET", f"/api/assets/{asset_id}"),
                ("POST", f"/api/assets/{asset_id}/promote"),
                ("DELETE", f"/api/assets/{asset_id}"),
            ):
                async with bob.request(method, live.api(path)) as response:
                    assert response.status == 404
            async with bob.get(live.api("/api/assets")) as response:
                assert (await response.json())["items"] == []
        async with api.get(live.api(f"/api/assets/{asset_id}")) as response:
            assert response.status == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({**VALID, "extra": 1}, 400),
        ({**VALID, "filename": "../../etc/passwd"}, 400),
        ({**VALID, "filename": "a/b.mp4"}, 400),
        ({**VALID, "filename": "a\\b.mp4"}, 400),
        ({**VALID, "filename": ".."}, 400),
        ({**VALID, "filename": "line\nbreak.mp4"}, 400),
        ({**VALID, "filename": ""}, 400),
        ({**VALID, "filename": "x" * 256}, 400),
        ({**VALID, "content_type": "text/html"}, 400),
        ({**VALID, "content_type": "video/mp4\r\nX-Evil: 1"}, 400),
        ({**VALID, "size_bytes": 0}, 400),
        ({**VALID, "size_bytes": -5}, 400),
        ({**VALID, "size_bytes": 10**30}, 400),
        ({**VALID, "content_md5": "not-md5"}, 400),
        ({**VALID, "multipart": True, "content_md5": "1B2M2Y8AsgTpgAmY7PhCfg=="}, 400),
        ({"filename": "a.mp4"}, 400),
        ([], 400),
        ("text", 400),
    ],
)
async def test_upload_validation(
    make_control: ControlFactory, api: aiohttp.ClientSession, body: object, status: int
) -> None:
    async with make_control(UPLOAD_MAX_BYTES=str(10**6)) as live:
        async with api.post(live.api("/api/uploads"), json=body) as response:
            assert response.status == status, await response.text()


async def test_limits_on_sizes_ids_and_queries(
    make_control: ControlFactory, api: aiohttp.ClientSession
) -> None:
    async with make_control(UPLOAD_MAX_BYTES=str(10**6), CONTROL_MAX_BODY_BYTES="2048") as live:
        async with api.post(
            live.api("/api/uploads"), json={**VALID, "size_bytes": 10**6 + 1}
        ) as response:
            assert response.status == 413
        async with api.post(
            live.api("/api/uploads"), json={**VALID, "filename": "x" * 5000}
        ) as response:
            assert response.status == 413  # body over CONTROL_MAX_BODY_BYTES
        async with api.post(
            live.api("/api/uploads"), data=b"{broken", headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
        for path in (
            "/api/assets/not-a-uuid",
            "/api/assets/..%2F..%2Fetc",
            "/api/assets?status=bogus",
            "/api/assets?limit=0",
            "/api/assets?limit=1000",
            "/api/assets?cursor=%%%",
            "/api/assets?cursor=bm90IGEgY3Vyc29y",
        ):
            async with api.get(live.api(path)) as response:
                assert response.status in (400, 404), path
                assert response.status < 500
        async with api.post(
            live.api(f"/api/assets/{uuid.uuid4()}/playback"), json={"ttl_s": 10}
        ) as response:
            assert response.status == 400


async def test_pagination_walks_every_asset_once(
    make_control: ControlFactory, api: aiohttp.ClientSession
) -> None:
    async with make_control() as live:
        created = []
        for number in range(7):
            async with api.post(
                live.api("/api/uploads"), json={**VALID, "filename": f"f{number}.mp4"}
            ) as response:
                created.append((await response.json())["asset_id"])
        seen: list[str] = []
        cursor = None
        while True:
            query = f"?limit=3&status=uploading{f'&cursor={cursor}' if cursor else ''}"
            async with api.get(live.api("/api/assets" + query)) as response:
                page = await response.json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        mine = [s for s in seen if s in created]
        assert mine == list(reversed(created))  # newest first, each once


async def clear_limits() -> None:
    """Counters of earlier runs in the same window must not leak into this one."""
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter("control:rl:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_rate_limits_answer_429_with_retry_after(
    make_control: ControlFactory, api: aiohttp.ClientSession
) -> None:
    await clear_limits()
    async with make_control(RL_PRESIGN_MAX="2", RL_PRESIGN_WINDOW="3600") as live:
        statuses = []
        for _ in range(3):
            async with api.post(live.api("/api/uploads"), json=VALID) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert 1 <= int(response.headers["Retry-After"]) <= 3600
        assert statuses == [201, 201, 429]
        async with api.get(live.api("/api/assets")) as response:
            assert response.status == 200  # other endpoints keep working
    async with make_control(RATE_LIMIT_MAX="3", RATE_LIMIT_WINDOW="3600") as live:
        statuses = []
        async with aiohttp.ClientSession(headers={"X-API-Key": OTHER_KEY}) as bob:
            for _ in range(20):
                async with bob.get(live.api("/api/assets")) as response:
                    statuses.append(response.status)
        assert 429 in statuses
        assert statuses.count(200) <= 3


async def test_rate_limits_fail_open_when_redis_is_down(
    make_control: ControlFactory, api: aiohttp.ClientSession
) -> None:
    async with make_control(REDIS_URL="redis://127.0.0.1:1/0", RL_PRESIGN_MAX="5") as live:
        async with api.post(live.api("/api/uploads"), json=VALID) as response:
            assert response.status == 201
        assert live.services.metrics.rate_limit_fallback._value.get() >= 1


async def test_cors_only_for_allowed_origins(make_control: ControlFactory) -> None:
    async with make_control(ALLOWED_ORIGINS="https://app.example.com") as live:
        async with aiohttp.ClientSession() as plain:
            preflight = {
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }
            async with plain.options(live.api("/api/uploads"), headers=preflight) as response:
                assert response.status in (200, 204)
                assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            evil = {**preflight, "Origin": "https://evil.example"}
            async with plain.options(live.api("/api/uploads"), headers=evil) as response:
                assert response.headers.get("Access-Control-Allow-Origin") != "https://evil.example"
            async with plain.get(
                live.api("/api/health"), headers={"Origin": "https://evil.example"}
            ) as response:
                assert "Access-Control-Allow-Origin" not in response.headers
