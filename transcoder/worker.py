"""The preview worker: a Redis Streams consumer that turns masters into preview sets.

Delivery is at-least-once: a job is acknowledged (XACK) only after its outcome is recorded in
PostgreSQL. A worker that dies leaves its entry pending; after `claim_idle_s` another worker
claims it (XAUTOCLAIM). A long job keeps its claim fresh with a heartbeat (XCLAIM … JUSTID on
its own entry) so it is not taken while it runs. A job delivered more than `max_deliveries`
times is failed and copied to a dead-letter stream, so a poison message cannot loop forever.
Duplicate deliveries are recognised by the job's status in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aioboto3
import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError, ResponseError

from control import db
from control.jobs import stream_for

from . import ffmpeg
from .config import GpuMode, WorkerSettings

__all__ = ["GROUP", "JobFailed", "PreviewWorker", "detect_encoder"]

log = logging.getLogger("transcoder")

GROUP = "transcoders"
STREAM = stream_for("preview")
DEAD_LETTER = STREAM + ":dead"
CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".jpg": "image/jpeg",
    ".vtt": "text/vtt",
}
# Share of the progress bar each stage stands for.
STAGES = {"download": 0.05, "proxy": 0.80, "hls": 0.05, "images": 0.05, "upload": 0.05}


class JobFailed(Exception):
    """The job cannot succeed (bad input, ffmpeg refused it); the reason is shown to users."""


@dataclass(frozen=True, slots=True)
class Job:
    job_id: uuid.UUID
    asset_id: str
    master_bucket: str
    master_key: str
    previews_bucket: str
    previews_prefix: str

    @classmethod
    def parse(cls, fields: dict[bytes, bytes]) -> Job:
        data = json.loads(fields[b"job"])
        return cls(
            job_id=uuid.UUID(data["job_id"]),
            asset_id=str(data["asset_id"]),
            master_bucket=str(data["master_bucket"]),
            master_key=str(data["master_key"]),
            previews_bucket=str(data["previews_bucket"]),
            previews_prefix=str(data["previews_prefix"]),
        )


async def _run(args: list[str], timeout_s: float) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise JobFailed(f"{Path(args[0]).name} ran longer than {timeout_s:.0f} s") from None
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


async def detect_encoder(settings: WorkerSettings) -> ffmpeg.Encoder:
    """NVENC when a one-frame test encode succeeds (and TRANSCODER_GPU allows), else libx264."""
    if settings.gpu is GpuMode.OFF:
        return ffmpeg.Encoder.CPU
    try:
        code, _, err = await _run(ffmpeg.nvenc_probe_args(settings.ffmpeg), 30)
    except JobFailed:
        code, err = 1, "timed out"
    if code == 0:
        return ffmpeg.Encoder.NVENC
    if settings.gpu is GpuMode.REQUIRE:
        raise RuntimeError(f"TRANSCODER_GPU=require but NVENC does not work: {_last_line(err)}")
    log.info("NVENC unavailable (%s); encoding on the CPU", _last_line(err))
    return ffmpeg.Encoder.CPU


class PreviewWorker:
    def __init__(
        self,
        settings: WorkerSettings,
        encoder: ffmpeg.Encoder,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self._clock = clock
        self._stack = AsyncExitStack()
        self.redis = aioredis.from_url(settings.redis_url)
        self._pool: asyncpg.Pool | None = None
        self._s3: Any = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._pool = await db.connect_pool(self.settings.postgres_url, max_size=2)
        session = aioboto3.Session(
            aws_access_key_id=self.settings.access_key_id,
            aws_secret_access_key=self.settings.secret_access_key,
            region_name=self.settings.region,
        )
        self._s3 = await self._stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=self.settings.endpoint,
                config=AioConfig(s3={"addressing_style": "path"}),
            )
        )
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self._stack.aclose()
        if self._pool is not None:
            await self._pool.close()
        await self.redis.aclose()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "start() first"
        return self._pool

    # -- consuming -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until `stop` is set; Redis trouble is waited out, not fatal."""
        while not stop.is_set():
            try:
                await self.process_next(block_ms=2000)
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable, retrying: %s", exc)
                await asyncio.sleep(2)

    async def process_next(self, block_ms: int = 0) -> bool:
        """Take one job (a stale one from a dead worker first); False when there was none."""
        consumer = self.settings.consumer
        claimed = await self.redis.xautoclaim(
            STREAM, GROUP, consumer, self.settings.claim_idle_s * 1000, "0-0", count=1
        )
        # redis-py types stream replies loosely; these are (id, {field: value}) pairs of bytes.
        entries: list[Any] = list(cast(Any, claimed)[1]) if claimed else []
        if not entries:
            answer: Any = await self.redis.xreadgroup(
                GROUP, consumer, {STREAM: ">"}, count=1, block=block_ms or None
            )
            entries = list(answer[0][1]) if answer else []
        if not entries:
            return False
        entry_id, fields = entries[0]
        await self._handle(cast(bytes, entry_id), cast("dict[bytes, bytes]", fields))
        return True

    async def _deliveries(self, entry_id: bytes) -> int:
        pending = await self.redis.xpending_range(STREAM, GROUP, entry_id, entry_id, 1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            job = Job.parse(fields)
        except (KeyError, ValueError, TypeError) as exc:
            log.error("unreadable job %s dead-lettered: %s", entry_id, exc)
            await self._dead_letter(entry_id, fields, "unreadable job message")
            return
        status = await db.job_status(self.pool, job.job_id)
        if status in (None, "done", "failed"):
            # Deleted asset, or a duplicate delivery of a finished job.
            await self.redis.xack(STREAM, GROUP, entry_id)
            return
        deliveries = await self._deliveries(entry_id)
        if deliveries > self.settings.max_deliveries:
            reason = f"gave up after {deliveries - 1} attempts"
            await db.record_job_progress(self.pool, job.job_id, failure_reason=reason)
            await self._dead_letter(entry_id, fields, reason)
            return
        heartbeat = asyncio.create_task(self._heartbeat(entry_id))
        try:
            await self.process(job)
        except JobFailed as exc:
            log.warning("job %s failed: %s", job.job_id, exc)
            await db.record_job_progress(self.pool, job.job_id, failure_reason=str(exc))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await self.redis.xack(STREAM, GROUP, entry_id)

    async def _heartbeat(self, entry_id: bytes) -> None:
        """Keep our claim on a long job fresh, so XAUTOCLAIM elsewhere does not take it."""
        while True:
            await asyncio.sleep(max(1.0, self.settings.claim_idle_s / 3))
            with contextlib.suppress(RedisError, OSError):
                await self.redis.xclaim(
                    STREAM, GROUP, self.settings.consumer, 0, [entry_id], justid=True
                )

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        await self.redis.xadd(DEAD_LETTER, cast(Any, {**fields, b"reason": reason.encode()}))
        await self.redis.xack(STREAM, GROUP, entry_id)

    # -- one job -----------------------------------------------------------------------------------

    async def process(self, job: Job) -> None:
        """Download, probe, encode, cut, render images, upload, record done, warm the edge."""
        progress = _Progress(self.pool, job.job_id, self._clock)
        await progress.report(0.0, force=True)
        work = Path(tempfile.mkdtemp(prefix="preview-", dir=self.settings.work_dir))
        try:
            master = work / "master"
            await self._download(job, master)
            await progress.stage_done("download")
            code, out, err = await _run(ffmpeg.probe_args(self.settings.ffprobe, str(master)), 120)
            if code != 0:
                raise JobFailed(f"not a readable video: {_last_line(err)}")
            try:
                probe = ffmpeg.parse_probe(out)
            except ffmpeg.ProbeError as exc:
                raise JobFailed(f"not a usable video: {exc}") from exc
            out_dir = work / "out"
            (out_dir / "hls").mkdir(parents=True)
            await self._encode_proxy(master, out_dir / "preview.mp4", probe, progress)
            await self._ffmpeg(
                ffmpeg.hls_args(
                    self.settings.ffmpeg,
                    str(out_dir / "preview.mp4"),
                    str(out_dir / "hls" / "index.m3u8"),
                    str(out_dir / "hls" / "seg_%05d.ts"),
                )
            )
            await progress.stage_done("hls")
            layout = ffmpeg.sprite_layout(probe)
            proxy = str(out_dir / "preview.mp4")
            await self._ffmpeg(
                ffmpeg.poster_args(self.settings.ffmpeg, proxy, str(out_dir / "poster.jpg"), probe)
            )
            await self._ffmpeg(
                ffmpeg.sprite_args(self.settings.ffmpeg, proxy, str(out_dir / "sprite.jpg"), layout)
            )
            (out_dir / "sprite.vtt").write_text(ffmpeg.sprite_vtt(layout, probe.duration_s))
            await progress.stage_done("images")
            keys = await self._upload(job, out_dir)
            await progress.stage_done("upload")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        await db.record_job_progress(self.pool, job.job_id, done=True)
        await self._warm_edge(keys)

    async def _ffmpeg(self, args: list[str]) -> None:
        code, _, err = await _run(args, self.settings.job_timeout_s)
        if code != 0:
            raise JobFailed(f"ffmpeg: {_last_line(err)}")

    async def _encode_proxy(
        self, master: Path, target: Path, probe: ffmpeg.Probe, progress: _Progress
    ) -> None:
        args = ffmpeg.proxy_args(
            self.settings.ffmpeg, str(master), str(target), probe, self.encoder
        )
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None
        assert process.stderr is not None
        stderr_task = asyncio.create_task(process.stderr.read())
        try:
            async with asyncio.timeout(self.settings.job_timeout_s):
                async for raw in process.stdout:
                    fraction = ffmpeg.parse_progress(raw.decode(errors="replace"), probe.duration_s)
                    if fraction is not None:
                        await progress.within("proxy", fraction)
                code = await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise JobFailed(f"encoding ran longer than {self.settings.job_timeout_s} s") from None
        err = (await stderr_task).decode(errors="replace")
        if code != 0:
            raise JobFailed(f"ffmpeg: {_last_line(err)}")
        await progress.stage_done("proxy")

    async def _download(self, job: Job, target: Path) -> None:
        try:
            response = await self._s3.get_object(Bucket=job.master_bucket, Key=job.master_key)
            with target.open("wb") as handle:
                async for chunk in response["Body"].iter_chunks(1 << 20):
                    handle.write(chunk)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise JobFailed("the master is missing from storage") from exc
            raise
        except BotoCoreError:
            raise

    async def _upload(self, job: Job, out_dir: Path) -> list[str]:
        keys = []
        files = await asyncio.to_thread(_files_under, out_dir)
        for path in files:
            key = job.previews_prefix + path.relative_to(out_dir).as_posix()
            content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            await self._s3.upload_file(
                str(path), job.previews_bucket, key, ExtraArgs={"ContentType": content_type}
            )
            keys.append(key)
        return keys

    async def _warm_edge(self, keys: list[str]) -> None:
        base, token = self.settings.edge_admin_base, self.settings.edge_admin_token
        if not base or not token or self._http is None:
            return
        try:
            async with self._http.post(
                f"{base}/prefetch",
                json={"keys": keys},
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                if response.status != 202:
                    log.warning("edge prefetch answered %s", response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("edge prefetch failed: %s", exc)


def _files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


class _Progress:
    """Reports job progress to PostgreSQL, at most twice a second."""

    def __init__(self, pool: asyncpg.Pool, job_id: uuid.UUID, clock: Callable[[], float]) -> None:
        self._pool = pool
        self._job_id = job_id
        self._clock = clock
        self._done = 0.0
        self._last = float("-inf")

    async def report(self, value: float, *, force: bool = False) -> None:
        now = self._clock()
        if force or now - self._last >= 0.5:
            self._last = now
            await db.record_job_progress(self._pool, self._job_id, progress=min(value, 0.99))

    async def within(self, stage: str, fraction: float) -> None:
        await self.report(self._done + STAGES[stage] * fraction)

    async def stage_done(self, stage: str) -> None:
        self._done += STAGES[stage]
        await self.report(self._done)
