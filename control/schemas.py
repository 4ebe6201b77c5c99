"""Request and response bodies. Unknown fields are refused (400), strings are bounded."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

__all__ = [
    "AssetOut",
    "AssetPage",
    "CompleteUpload",
    "CompletedPart",
    "MultipartInfo",
    "PartUrl",
    "PlaybackRequest",
    "PlaybackResponse",
    "PromoteResponse",
    "SinglePut",
    "UploadRequest",
    "UploadResponse",
]

# The user's file name is metadata only (keys are generated server-side), but names that look
# like paths are refused outright rather than stored: no separators, no control characters.
FileName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^(?!\.{1,2}$)[^/\\\x00-\x1f\x7f]+$")
]
VideoType = Annotated[
    str, msgspec.Meta(max_length=100, pattern=r"^video/[A-Za-z0-9][A-Za-z0-9.+-]*$")
]
Md5Base64 = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9+/]{22}==$")]


class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


class UploadRequest(_Strict):
    filename: FileName
    content_type: VideoType
    size_bytes: Annotated[int, msgspec.Meta(gt=0, le=5 << 40)]
    multipart: bool = False
    # Base64 MD5 of the file (single PUT only): S3 then refuses a corrupted upload, and promote
    # checks the staged object's ETag against it.
    content_md5: Md5Base64 | None = None


class SinglePut(msgspec.Struct):
    method: Literal["PUT"]
    url: str
    headers: dict[str, str]


class PartUrl(msgspec.Struct):
    part_number: int
    url: str


class MultipartInfo(msgspec.Struct):
    upload_id: str
    part_bytes: int
    parts: list[PartUrl]


class UploadResponse(msgspec.Struct):
    asset_id: uuid.UUID
    status: str
    expires_at: datetime
    put: SinglePut | None = None
    multipart: MultipartInfo | None = None


class CompletedPart(_Strict):
    part_number: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    etag: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class CompleteUpload(_Strict):
    parts: Annotated[list[CompletedPart], msgspec.Meta(min_length=1, max_length=10_000)]


class AssetOut(msgspec.Struct):
    id: uuid.UUID
    status: str
    filename: str
    content_type: str
    size_bytes: int
    progress: float
    failure_reason: str | None
    job_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class AssetPage(msgspec.Struct):
    items: list[AssetOut]
    next_cursor: str | None


class PromoteResponse(msgspec.Struct):
    asset: AssetOut
    job_id: uuid.UUID
    created: bool


class PlaybackRequest(_Strict):
    ttl_s: Annotated[int, msgspec.Meta(ge=60)] | None = None
    bind_ip: bool = False


class PlaybackResponse(msgspec.Struct):
    via: Literal["edge", "storage"]
    expires_at: datetime
    mp4: str
    poster: str
    sprite: str
    vtt: str
    hls: str | None  # path-form prefix token on the edge; none via presigned storage URLs
