"""The buckets, through aioboto3: presigned uploads to Staging, copies to Masters, previews.

Storage-client errors become `StorageError` (or `ObjectMissing`) here and go no further.
"""

from __future__ import annotations

import math
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from .config import StorageSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ["ObjectMissing", "PresignedPart", "Storage", "StorageError"]

MAX_PARTS = 10_000  # S3's limit on parts of a multipart upload


class StorageError(Exception):
    """The object store failed or refused; maps to 502."""


class ObjectMissing(StorageError):
    """The object is not there (yet)."""


@dataclass(frozen=True, slots=True)
class PresignedPart:
    part_number: int
    url: str


@dataclass(frozen=True, slots=True)
class Head:
    size: int
    etag: str


def part_size_for(size: int, preferred: int) -> int:
    """The part size to use: `preferred`, grown so the upload needs at most 10,000 parts."""
    return max(preferred, math.ceil(size / MAX_PARTS))


class Storage:
    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    async def start(self) -> None:
        session = aioboto3.Session(
            aws_access_key_id=self.settings.access_key_id,
            aws_secret_access_key=self.settings.secret_access_key,
            region_name=self.settings.region,
        )
        config = AioConfig(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"mode": "standard", "total_max_attempts": 3},
        )
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self.settings.endpoint, config=config)
        )

    async def close(self) -> None:
        await self._stack.aclose()

    @property
    def s3(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("Storage.start() was not awaited")
        return self._client

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            if status == 404 or code in ("NoSuchKey", "NotFound", "NoSuchUpload"):
                raise ObjectMissing(str(code)) from exc
            raise StorageError(str(code or status)) from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageError(type(exc).__name__) from exc

    # -- uploads to Staging ----------------------------------------------------------------------

    async def presign_put(
        self, key: str, content_type: str, size: int, ttl_s: int, content_md5: str | None
    ) -> str:
        """A PUT URL whose signature covers the content type, exact length and MD5 if given."""
        params: dict[str, Any] = {
            "Bucket": self.settings.bucket_staging,
            "Key": key,
            "ContentType": content_type,
            "ContentLength": size,
        }
        if content_md5 is not None:
            params["ContentMD5"] = content_md5
        url: str = await self.s3.generate_presigned_url(
            "put_object", Params=params, ExpiresIn=ttl_s
        )
        return url

    async def create_multipart(self, key: str, content_type: str) -> str:
        result = await self._call(
            self.s3.create_multipart_upload(
                Bucket=self.settings.bucket_staging, Key=key, ContentType=content_type
            )
        )
        return str(result["UploadId"])

    async def presign_parts(
        self, key: str, upload_id: str, part_count: int, ttl_s: int
    ) -> list[PresignedPart]:
        parts = []
        for number in range(1, part_count + 1):
            url = await self.s3.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": self.settings.bucket_staging,
                    "Key": key,
                    "UploadId": upload_id,
                    "PartNumber": number,
                },
                ExpiresIn=ttl_s,
            )
            parts.append(PresignedPart(number, url))
        return parts

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> None:
        await self._call(
            self.s3.complete_multipart_upload(
                Bucket=self.settings.bucket_staging,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]
                },
            )
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._call(
            self.s3.abort_multipart_upload(
                Bucket=self.settings.bucket_staging, Key=key, UploadId=upload_id
            )
        )

    async def head_staged(self, key: str) -> Head:
        result = await self._call(self.s3.head_object(Bucket=self.settings.bucket_staging, Key=key))
        return Head(size=int(result["ContentLength"]), etag=str(result["ETag"]))

    # -- promote to Masters ------------------------------------------------------------------------

    async def copy_to_masters(
        self, source_key: str, dest_key: str, size: int, threshold: int, part_bytes: int
    ) -> str:
        """Server-side copy; above `threshold` (S3 allows 5 GB per CopyObject) in parts."""
        source = {"Bucket": self.settings.bucket_staging, "Key": source_key}
        masters = self.settings.bucket_masters
        if size <= threshold:
            result = await self._call(
                self.s3.copy_object(Bucket=masters, Key=dest_key, CopySource=source)  # type: ignore[arg-type]
            )
            return str(result["CopyObjectResult"]["ETag"])
        upload_id = str(
            (await self._call(self.s3.create_multipart_upload(Bucket=masters, Key=dest_key)))[
                "UploadId"
            ]
        )
        try:
            part_bytes = part_size_for(size, part_bytes)
            parts = []
            for number, start in enumerate(range(0, size, part_bytes), start=1):
                end = min(start + part_bytes, size) - 1
                result = await self._call(
                    self.s3.upload_part_copy(
                        Bucket=masters,
                        Key=dest_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=source,  # type: ignore[arg-type]
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                )
                parts.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
            done = await self._call(
                self.s3.complete_multipart_upload(
                    Bucket=masters,
                    Key=dest_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )
            )
            return str(done["ETag"])
        except BaseException:
            await self._call(
                self.s3.abort_multipart_upload(Bucket=masters, Key=dest_key, UploadId=upload_id)
            )
            raise

    # -- playback fallback and deletion -----------------------------------------------------------

    async def presign_preview_get(self, key: str, ttl_s: int) -> str:
        url: str = await self.s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.settings.bucket_previews, "Key": key},
            ExpiresIn=ttl_s,
        )
        return url

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many."""
        deleted = 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call(self.s3.list_objects_v2(**kwargs))
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await self._call(
                    self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})  # type: ignore[typeddict-item]
                )
                deleted += len(keys)
            token = page.get("NextContinuationToken")
            if not token:
                return deleted

    async def delete_key(self, bucket: str, key: str) -> None:
        await self._call(self.s3.delete_object(Bucket=bucket, Key=key))

    async def ping(self) -> bool:
        try:
            await self._call(self.s3.head_bucket(Bucket=self.settings.bucket_staging))
        except StorageError:
            return False
        return True
