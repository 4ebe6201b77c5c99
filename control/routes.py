"""The API's handlers, all under /api."""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Response
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import db
from .schemas import (
    AssetOut,
    AssetPage,
    CompleteUpload,
    MultipartInfo,
    PartUrl,
    PlaybackRequest,
    PlaybackResponse,
    PromoteResponse,
    SinglePut,
    UploadRequest,
    UploadResponse,
)
from .services import Services, caller_of
from .storage import ObjectMissing, StorageError, part_size_for

__all__ = ["ROUTES"]

log = logging.getLogger("control.api")

PREVIEW_KIND = "preview"
SINGLE_PUT_MAX = 5 << 30  # S3's limit for one PUT


class ApiError(HTTPException):
    pass


def _not_found() -> ApiError:
    return ApiError(status_code=404, detail="asset not found")


def _conflict(detail: str) -> ApiError:
    return ApiError(status_code=409, detail=detail)


def _bad_gateway(exc: StorageError) -> ApiError:
    log.warning("storage error: %s", exc)
    return ApiError(status_code=502, detail="object storage unavailable")


def _asset_out(row: db.AssetRow) -> AssetOut:
    return AssetOut(
        id=row.id,
        status=row.status,
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        progress=row.progress,
        failure_reason=row.failure_reason,
        job_id=row.job_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _multipart_in_progress(row: db.AssetRow) -> str:
    """The asset's open multipart upload id; 409 when there is none."""
    if row.upload_id is None or row.status != "uploading":
        raise _conflict("no multipart upload in progress for this asset")
    return row.upload_id


async def _owned_asset(
    services: Services, request: Request[Any, Any, Any], asset_id: uuid.UUID
) -> db.AssetRow:
    row = await db.get_asset(services.pool, asset_id)
    if row is None or row.owner != caller_of(request):
        raise _not_found()  # another key's asset is indistinguishable from a missing one
    return row


# -- health ---------------------------------------------------------------------------------------


@get("/api/health", tags=["health"], summary="Liveness")
async def health() -> dict[str, bool]:
    return {"ok": True}


@get("/api/ready", tags=["health"], summary="Readiness: PostgreSQL and Redis answer")
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, bool]]:
    services: Services = request.app.state.services
    checks = await services.readiness()
    ok = all(checks.values())
    return Response({"ok": ok, **checks}, status_code=200 if ok else 503)


@get(
    "/api/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    media_type=CONTENT_TYPE_LATEST,
)
async def metrics(request: Request[Any, Any, Any]) -> bytes:
    services: Services = request.app.state.services
    return generate_latest(services.metrics.registry)


# -- uploads --------------------------------------------------------------------------------------


@post(
    "/api/uploads",
    tags=["uploads"],
    status_code=HTTP_201_CREATED,
    summary="Create an asset and its upload URL(s)",
)
async def create_upload(
    request: Request[Any, Any, Any], data: JSONBody[UploadRequest]
) -> UploadResponse:
    services: Services = request.app.state.services
    await services.check_limit(request, "presign")
    settings = services.settings
    if data.size_bytes > settings.upload_max_bytes:
        raise ApiError(status_code=413, detail=f"size_bytes exceeds {settings.upload_max_bytes}")
    multipart = data.multipart or data.size_bytes > SINGLE_PUT_MAX
    if multipart and data.content_md5 is not None:
        raise ApiError(status_code=400, detail="content_md5 applies to single PUT uploads only")
    asset_id = uuid.uuid4()
    key = f"uploads/{asset_id}"
    ttl = settings.upload_url_ttl_s
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl)
    try:
        if multipart:
            part_bytes = part_size_for(data.size_bytes, settings.multipart_part_bytes)
            upload_id = await services.storage.create_multipart(key, data.content_type)
            parts = await services.storage.presign_parts(
                key, upload_id, math.ceil(data.size_bytes / part_bytes), ttl
            )
        else:
            upload_id = None
            url = await services.storage.presign_put(
                key, data.content_type, data.size_bytes, ttl, data.content_md5
            )
    except StorageError as exc:
        raise _bad_gateway(exc) from exc
    await db.insert_asset(
        services.pool,
        asset_id=asset_id,
        owner=caller_of(request),
        filename=data.filename,
        content_type=data.content_type,
        size_bytes=data.size_bytes,
        staging_key=key,
        content_md5=data.content_md5,
        upload_id=upload_id,
    )
    if upload_id is not None:
        return UploadResponse(
            asset_id=asset_id,
            status="uploading",
            expires_at=expires_at,
            multipart=MultipartInfo(
                upload_id=upload_id,
                part_bytes=part_bytes,
                parts=[PartUrl(p.part_number, p.url) for p in parts],
            ),
        )
    headers = {"Content-Type": data.content_type, "Content-Length": str(data.size_bytes)}
    if data.content_md5:
        headers["Content-MD5"] = data.content_md5
    return UploadResponse(
        asset_id=asset_id,
        status="uploading",
        expires_at=expires_at,
        put=SinglePut(method="PUT", url=url, headers=headers),
    )


@post(
    "/api/uploads/{asset_id:uuid}/complete",
    tags=["uploads"],
    status_code=HTTP_200_OK,
    summary="Complete a multipart upload",
)
async def complete_upload(
    request: Request[Any, Any, Any], asset_id: FromPath[uuid.UUID], data: JSONBody[CompleteUpload]
) -> AssetOut:
    services: Services = request.app.state.services
    row = await _owned_asset(services, request, asset_id)
    upload_id = _multipart_in_progress(row)
    numbers = [p.part_number for p in data.parts]
    if len(set(numbers)) != len(numbers):
        raise ApiError(status_code=400, detail="part numbers must be unique")
    try:
        await services.storage.complete_multipart(
            row.staging_key, upload_id, [(p.part_number, p.etag) for p in data.parts]
        )
        head = await services.storage.head_staged(row.staging_key)
    except ObjectMissing as exc:
        raise _conflict("the upload is unknown to storage (expired or aborted)") from exc
    except StorageError as exc:
        raise ApiError(status_code=400, detail=f"storage refused the parts: {exc}") from exc
    if head.size != row.size_bytes:
        raise _conflict(f"uploaded {head.size} bytes, declared {row.size_bytes}")
    await db.set_status(services.pool, asset_id, "staged", upload_id=None, staged_etag=head.etag)
    updated = await db.get_asset(services.pool, asset_id)
    assert updated is not None
    return _asset_out(updated)


@post(
    "/api/uploads/{asset_id:uuid}/abort",
    tags=["uploads"],
    status_code=HTTP_200_OK,
    summary="Abort a multipart upload",
)
async def abort_upload(request: Request[Any, Any, Any], asset_id: FromPath[uuid.UUID]) -> AssetOut:
    services: Services = request.app.state.services
    row = await _owned_asset(services, request, asset_id)
    upload_id = _multipart_in_progress(row)
    try:
        await services.storage.abort_multipart(row.staging_key, upload_id)
    except ObjectMissing:
        pass  # already gone: the goal is reached
    except StorageError as exc:
        raise _bad_gateway(exc) from exc
    await db.set_status(
        services.pool, asset_id, "failed", upload_id=None, failure_reason="upload aborted"
    )
    updated = await db.get_asset(services.pool, asset_id)
    assert updated is not None
    return _asset_out(updated)


# -- assets ---------------------------------------------------------------------------------------


def _encode_cursor(row: db.AssetRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ApiError(status_code=400, detail="bad cursor") from exc


@get("/api/assets", tags=["assets"], summary="List assets, newest first")
async def list_assets(
    request: Request[Any, Any, Any],
    status: Annotated[
        str | None, QueryParameter(pattern="^(" + "|".join(db.STATUSES) + ")$")
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
) -> AssetPage:
    services: Services = request.app.state.services
    rows = await db.list_assets(
        services.pool,
        owner=caller_of(request),
        status=status,
        after=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    page = rows[:limit]
    return AssetPage(
        items=[_asset_out(r) for r in page],
        next_cursor=_encode_cursor(page[-1]) if len(rows) > limit else None,
    )


@get(
    "/api/assets/{asset_id:uuid}",
    tags=["assets"],
    summary="One asset, with its status and progress",
)
async def get_asset(request: Request[Any, Any, Any], asset_id: FromPath[uuid.UUID]) -> AssetOut:
    return _asset_out(await _owned_asset(request.app.state.services, request, asset_id))


@delete(
    "/api/assets/{asset_id:uuid}",
    tags=["assets"],
    status_code=HTTP_204_NO_CONTENT,
    summary="Delete an asset: objects, previews, edge cache",
)
async def delete_asset(request: Request[Any, Any, Any], asset_id: FromPath[uuid.UUID]) -> None:
    services: Services = request.app.state.services
    row = await _owned_asset(services, request, asset_id)
    storage = services.storage
    try:
        if row.upload_id is not None:
            with contextlib.suppress(ObjectMissing):
                await storage.abort_multipart(row.staging_key, row.upload_id)
        await storage.delete_key(storage.settings.bucket_staging, row.staging_key)
        if row.master_key:
            await storage.delete_key(storage.settings.bucket_masters, row.master_key)
        await storage.delete_prefix(storage.settings.bucket_previews, f"assets/{asset_id}/")
    except StorageError as exc:
        raise _bad_gateway(exc) from exc
    await services.purge_edge(f"assets/{asset_id}/")
    await db.delete_asset(services.pool, asset_id)


@post(
    "/api/assets/{asset_id:uuid}/promote",
    tags=["assets"],
    status_code=HTTP_200_OK,
    summary="Copy the staged upload to Masters and queue its previews (idempotent)",
)
async def promote(
    request: Request[Any, Any, Any], asset_id: FromPath[uuid.UUID]
) -> PromoteResponse:
    services: Services = request.app.state.services
    await services.check_limit(request, "promote")
    settings = services.settings
    storage = services.storage
    async with services.pool.acquire() as conn, conn.transaction():
        # The row lock serialises concurrent promotes of one asset: the second one waits,
        # then finds the work done and returns the same job.
        row = await db.get_asset(conn, asset_id, lock=True)
        if row is None or row.owner != caller_of(request):
            raise _not_found()
        if row.job_id is not None:
            return PromoteResponse(asset=_asset_out(row), job_id=row.job_id, created=False)
        if row.status not in ("uploading", "staged"):
            raise _conflict(f"asset is {row.status}")
        if row.upload_id is not None:
            raise _conflict("complete the multipart upload first")
        try:
            head = await storage.head_staged(row.staging_key)
        except ObjectMissing as exc:
            raise _conflict("the upload has not arrived in staging") from exc
        except StorageError as exc:
            raise _bad_gateway(exc) from exc
        if head.size != row.size_bytes:
            raise _conflict(f"staged object is {head.size} bytes, declared {row.size_bytes}")
        expected = _expected_etag(row)
        if expected is not None and head.etag != expected:
            raise _conflict("staged object does not match the declared checksum")
        master_key = f"assets/{asset_id}/master"
        try:
            master_etag = await storage.copy_to_masters(
                row.staging_key,
                master_key,
                head.size,
                settings.copy_multipart_threshold,
                settings.copy_part_bytes,
            )
        except StorageError as exc:
            raise _bad_gateway(exc) from exc
        await db.set_status(
            conn, asset_id, "promoted", master_key=master_key, master_etag=master_etag
        )
        job_id = await db.enqueue_job(
            conn,
            asset_id=asset_id,
            kind=PREVIEW_KIND,
            payload={
                "master_bucket": storage.settings.bucket_masters,
                "master_key": master_key,
                "previews_bucket": storage.settings.bucket_previews,
                "previews_prefix": f"assets/{asset_id}/",
            },
        )
        row = await db.get_asset(conn, asset_id)
        assert row is not None
    services.metrics.promotions.inc()
    services.relay.kick()
    return PromoteResponse(asset=_asset_out(row), job_id=job_id, created=True)


def _expected_etag(row: db.AssetRow) -> str | None:
    """The ETag the staged object must have, when the client gave us a way to know it."""
    if row.staged_etag is not None:
        return row.staged_etag
    if row.content_md5 is not None:
        return '"' + base64.b64decode(row.content_md5).hex() + '"'
    return None


# -- playback -------------------------------------------------------------------------------------


@post(
    "/api/assets/{asset_id:uuid}/playback",
    tags=["playback"],
    status_code=HTTP_200_OK,
    summary="Signed playback URLs for the asset's previews",
)
async def playback(
    request: Request[Any, Any, Any], asset_id: FromPath[uuid.UUID], data: JSONBody[PlaybackRequest]
) -> PlaybackResponse:
    services: Services = request.app.state.services
    settings = services.settings
    row = await _owned_asset(services, request, asset_id)
    if row.status != "ready":
        raise _conflict(f"previews are not ready (asset is {row.status})")
    ttl = data.ttl_s or settings.playback_ttl_default_s
    if ttl > settings.playback_ttl_max_s:
        raise ApiError(
            status_code=400, detail=f"ttl_s must be at most {settings.playback_ttl_max_s}"
        )
    expires = int(time.time()) + ttl
    prefix = f"/assets/{asset_id}/"
    names = {
        "mp4": "preview.mp4",
        "poster": "poster.jpg",
        "sprite": "sprite.jpg",
        "vtt": "sprite.vtt",
    }
    if settings.edge_public_base is not None and services.signer is not None:
        base = settings.edge_public_base
        ip = request.client.host if data.bind_ip and request.client else None
        signer = services.signer
        urls = {
            field: f"{base}{prefix}{name}?token={signer.sign(prefix + name, expires, ip=ip)}"
            for field, name in names.items()
        }
        hls_token = services.signer.sign(prefix + "*", expires, ip=ip)
        return PlaybackResponse(
            via="edge",
            expires_at=datetime.fromtimestamp(expires, UTC),
            hls=f"{base}/t/{hls_token}{prefix}hls/index.m3u8",
            **urls,
        )
    try:
        urls = {
            field: await services.storage.presign_preview_get(prefix[1:] + name, ttl)
            for field, name in names.items()
        }
    except StorageError as exc:
        raise _bad_gateway(exc) from exc
    return PlaybackResponse(
        via="storage", expires_at=datetime.fromtimestamp(expires, UTC), hls=None, **urls
    )


ROUTES = [
    health,
    ready,
    metrics,
    create_upload,
    complete_upload,
    abort_upload,
    list_assets,
    get_asset,
    delete_asset,
    promote,
    playback,
]
