"""The outbox survives a Redis outage; migrations are idempotent and safe to run concurrently."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import aiohttp
import asyncpg

from control import db
from tests.control.conftest import ADMIN_DB_URL, REDIS_URL, ControlFactory
from tests.control.test_flow import stream_jobs, upload


async def test_a_promote_during_a_redis_outage_loses_no_job(
    make_control: ControlFactory, api: aiohttp.ClientSession, database_url: str
) -> None:
    async with make_control(REDIS_URL="redis://127.0.0.1:1/0") as down:
        asset_id = (await upload(api, down, b"m" * 2000))["asset_id"]
        async with api.post(down.api(f"/api/assets/{asset_id}/promote")) as response:
            assert response.status == 200  # the promote does not depend on Redis
            job_id = (await response.json())["job_id"]
        for _ in range(100):
            if down.services.metrics.outbox_errors._value.get() >= 1:
                break
            await asyncio.sleep(0.02)
        assert down.services.metrics.outbox_errors._value.get() >= 1
        conn = await asyncpg.connect(database_url)
        try:
            pending = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                " AND payload->>'job_id' = $1",
                job_id,
            )
        finally:
            await conn.close()
        assert pending == 1

    # Restarted with Redis back: the relay publishes what waited, exactly once.
    async with make_control() as up:
        messages = await stream_jobs(job_id, timeout=10)
        assert len(messages) == 1
        assert messages[0]["asset_id"] == asset_id
        assert up.services.metrics.outbox_published._value.get() >= 1


async def test_relay_publishes_each_message_once_with_two_instances(
    make_control: ControlFactory, api: aiohttp.ClientSession
) -> None:
    async with make_control() as first, make_control() as second:
        job_ids = []
        for live in (first, second, first, second):
            asset_id = (await upload(api, live, b"n" * 100))["asset_id"]
            async with api.post(live.api(f"/api/assets/{asset_id}/promote")) as response:
                job_ids.append((await response.json())["job_id"])
        for job_id in job_ids:
            assert len(await stream_jobs(job_id)) == 1


async def test_migrations_are_idempotent_and_serialised() -> None:
    name = f"control_migrate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DB_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_DB_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        conns = [await asyncpg.connect(url) for _ in range(3)]
        results = await asyncio.gather(*(db.migrate(c) for c in conns))
        assert sorted(results, key=len) == [[], [], list(range(1, len(db.MIGRATIONS) + 1))]
        assert await db.migrate(conns[0]) == []
        tables = {
            r["tablename"]
            for r in await conns[0].fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname='public'"
            )
        }
        assert {"assets", "jobs", "outbox", "schema_migrations"} <= tables
        for conn in conns:
            await conn.close()

        env = {"PATH": os.environ.get("PATH", ""), "POSTGRES_URL": url}
        result = subprocess.run(
            [sys.executable, "-m", "control", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stdout.strip()) == (0, "database is up to date")
        result = subprocess.run(
            [sys.executable, "-m", "control", "migrate"],
            env={"PATH": env["PATH"]},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert result.stderr == "control: POSTGRES_URL must be set\n"
        result = subprocess.run(
            [sys.executable, "-m", "control", "serve"],
            env={"PATH": env["PATH"], "POSTGRES_URL": url, "REDIS_URL": REDIS_URL},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert result.stderr.startswith("control: WASABI_ENDPOINT")
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
