"""PostgreSQL: versioned migrations and the queries of the control plane (plain asyncpg)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

__all__ = [
    "MIGRATIONS",
    "STATUSES",
    "AssetRow",
    "claim_outbox",
    "connect_pool",
    "migrate",
    "record_job_progress",
]

STATUSES = ("uploading", "staged", "promoted", "processing", "ready", "failed")

# Append only: each entry runs once, in order, inside its own transaction.
MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE assets (
        id uuid PRIMARY KEY,
        owner text NOT NULL,
        status text NOT NULL CHECK (status IN
            ('uploading', 'staged', 'promoted', 'processing', 'ready', 'failed')),
        filename text NOT NULL,
        content_type text NOT NULL,
        size_bytes bigint NOT NULL CHECK (size_bytes > 0),
        staging_key text NOT NULL,
        content_md5 text,
        upload_id text,
        staged_etag text,
        master_key text,
        master_etag text,
        progress real NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
        failure_reason text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX assets_status_created ON assets (status, created_at DESC, id);
    CREATE INDEX assets_created ON assets (created_at DESC, id);
    CREATE TABLE jobs (
        id uuid PRIMARY KEY,
        asset_id uuid NOT NULL UNIQUE REFERENCES assets (id) ON DELETE CASCADE,
        kind text NOT NULL,
        status text NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE outbox (
        id bigserial PRIMARY KEY,
        topic text NOT NULL,
        payload jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz
    );
    CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
    """,
)

# pg_advisory_lock key: one instance migrates at a time, the others wait and find nothing to do.
_MIGRATION_LOCK = 0x6564_6765_6374_6C31  # "edgectl1"


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the versions applied (empty when up to date)."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30
    )


@dataclass(frozen=True, slots=True)
class AssetRow:
    id: uuid.UUID
    owner: str
    status: str
    filename: str
    content_type: str
    size_bytes: int
    staging_key: str
    content_md5: str | None
    upload_id: str | None
    staged_etag: str | None
    master_key: str | None
    master_etag: str | None
    progress: float
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    job_id: uuid.UUID | None = None

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> AssetRow:
        return cls(**{k: record[k] for k in record.keys()})  # noqa: SIM118 - Record API


_ASSET_COLUMNS = (
    "a.id, a.owner, a.status, a.filename, a.content_type, a.size_bytes, a.staging_key,"
    " a.content_md5, a.upload_id, a.staged_etag, a.master_key, a.master_etag, a.progress,"
    " a.failure_reason,"
    " a.created_at, a.updated_at, j.id AS job_id"
)


async def insert_asset(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    asset_id: uuid.UUID,
    owner: str,
    filename: str,
    content_type: str,
    size_bytes: int,
    staging_key: str,
    content_md5: str | None,
    upload_id: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO assets (id, owner, status, filename, content_type, size_bytes,"
        " staging_key, content_md5, upload_id)"
        " VALUES ($1, $2, 'uploading', $3, $4, $5, $6, $7, $8)",
        asset_id,
        owner,
        filename,
        content_type,
        size_bytes,
        staging_key,
        content_md5,
        upload_id,
    )


async def get_asset(
    conn: asyncpg.Connection | asyncpg.Pool, asset_id: uuid.UUID, *, lock: bool = False
) -> AssetRow | None:
    # _ASSET_COLUMNS is a constant; values always travel as parameters.
    sql = (
        f"SELECT {_ASSET_COLUMNS} FROM assets a"  # noqa: S608
        " LEFT JOIN jobs j ON j.asset_id = a.id WHERE a.id = $1"
    )
    if lock:
        sql += " FOR UPDATE OF a"
    record = await conn.fetchrow(sql, asset_id)
    return AssetRow.from_record(record) if record is not None else None


async def list_assets(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    owner: str,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[AssetRow]:
    """Newest first, keyset-paginated by (created_at, id)."""
    clauses: list[str] = ["a.owner = $1"]
    args: list[Any] = [owner]
    if status is not None:
        args.append(status)
        clauses.append(f"a.status = ${len(args)}")
    if after is not None:
        args.extend(after)
        clauses.append(f"(a.created_at, a.id) < (${len(args) - 1}, ${len(args)})")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(limit)
    records = await conn.fetch(
        f"SELECT {_ASSET_COLUMNS} FROM assets a LEFT JOIN jobs j ON j.asset_id = a.id"  # noqa: S608
        f" {where} ORDER BY a.created_at DESC, a.id DESC LIMIT ${len(args)}",
        *args,
    )
    return [AssetRow.from_record(r) for r in records]


async def set_status(
    conn: asyncpg.Connection | asyncpg.Pool, asset_id: uuid.UUID, status: str, **fields: Any
) -> None:
    assignments = ["status = $2", "updated_at = now()"]
    args: list[Any] = [asset_id, status]
    for column in (
        "master_key",
        "master_etag",
        "failure_reason",
        "progress",
        "upload_id",
        "staged_etag",
    ):
        if column in fields:
            args.append(fields.pop(column))
            assignments.append(f"{column} = ${len(args)}")
    assert not fields, f"unknown columns {sorted(fields)}"
    await conn.execute(f"UPDATE assets SET {', '.join(assignments)} WHERE id = $1", *args)  # noqa: S608


async def delete_asset(conn: asyncpg.Connection | asyncpg.Pool, asset_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM assets WHERE id = $1", asset_id)


async def enqueue_job(
    conn: asyncpg.Connection, *, asset_id: uuid.UUID, kind: str, payload: dict[str, Any]
) -> uuid.UUID:
    """Record a job and its outbox message; call inside the promote's transaction."""
    job_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO jobs (id, asset_id, kind, status) VALUES ($1, $2, $3, 'queued')",
        job_id,
        asset_id,
        kind,
    )
    await conn.execute(
        "INSERT INTO outbox (topic, payload) VALUES ($1, $2)",
        kind,
        {**payload, "job_id": str(job_id), "asset_id": str(asset_id)},
    )
    return job_id


async def claim_outbox(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Lock unpublished messages (skipping those another instance holds); use in a transaction."""
    return list(
        await conn.fetch(
            "SELECT id, topic, payload FROM outbox WHERE published_at IS NULL"
            " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            limit,
        )
    )


async def mark_published(conn: asyncpg.Connection, ids: Sequence[int]) -> None:
    await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", ids)


async def outbox_backlog(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def record_job_progress(
    conn: asyncpg.Connection | asyncpg.Pool,
    job_id: uuid.UUID,
    *,
    progress: float | None = None,
    done: bool = False,
    failure_reason: str | None = None,
) -> bool:
    """The preview worker's report: the job and its asset's status follow. False if unknown.

    Running: asset `processing` with progress in [0, 1]; done: `ready`; failed: `failed` with
    the reason. A finished job is not reopened by a late progress report.
    """
    if failure_reason is not None:
        job_status, asset_status = "failed", "failed"
    elif done:
        job_status, asset_status = "done", "ready"
    else:
        job_status, asset_status = "running", "processing"
    value = 1.0 if done else max(0.0, min(1.0, progress or 0.0))
    result = await conn.fetchval(
        """
        WITH job AS (
            UPDATE jobs SET status = $2, updated_at = now()
            WHERE id = $1 AND status IN ('queued', 'running')
            RETURNING asset_id
        )
        UPDATE assets SET status = $3, progress = $4, failure_reason = $5, updated_at = now()
        WHERE id = (SELECT asset_id FROM job)
        RETURNING id
        """,
        job_id,
        job_status,
        asset_status,
        value,
        failure_reason,
    )
    return result is not None


async def job_status(conn: asyncpg.Connection | asyncpg.Pool, job_id: uuid.UUID) -> str | None:
    """The job's status (queued, running, done, failed), or None for an unknown job."""
    status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    return None if status is None else str(status)
