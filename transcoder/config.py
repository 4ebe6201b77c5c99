"""Worker settings, read from the environment in one explicit step."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from edge_cache.config import env_int, env_required, storage_endpoint
from edge_cache.errors import ConfigError

__all__ = ["GpuMode", "WorkerSettings"]


class GpuMode(Enum):
    AUTO = "auto"  # NVENC when a one-frame test encode works, else the CPU
    OFF = "off"
    REQUIRE = "require"  # refuse to start without NVENC


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    redis_url: str
    postgres_url: str
    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str
    ffmpeg: str
    ffprobe: str
    gpu: GpuMode
    edge_admin_base: str | None
    edge_admin_token: str | None
    consumer: str
    work_dir: Path
    job_timeout_s: int
    claim_idle_s: int
    max_deliveries: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        redis_url = (env.get("REDIS_URL", "") or env.get("VALKEY_URL", "")).strip()
        if not redis_url:
            raise ConfigError("REDIS_URL (or VALKEY_URL) must be set")
        postgres_url = env_required(env, "POSTGRES_URL")
        endpoint = storage_endpoint(env)
        ffmpeg = env.get("FFMPEG_BIN", "").strip() or "ffmpeg"
        ffmpeg_path = shutil.which(ffmpeg)
        if ffmpeg_path is None:
            raise ConfigError(f"FFMPEG_BIN: {ffmpeg!r} not found (Debian: apt-get install ffmpeg)")
        ffprobe = shutil.which(str(Path(ffmpeg_path).with_name("ffprobe"))) or shutil.which(
            "ffprobe"
        )
        if ffprobe is None:
            raise ConfigError("FFMPEG_BIN: no ffprobe beside it or on PATH")
        try:
            gpu = GpuMode(env.get("TRANSCODER_GPU", "").strip() or "auto")
        except ValueError:
            raise ConfigError("TRANSCODER_GPU: must be auto, off or require") from None
        return cls(
            redis_url=redis_url,
            postgres_url=postgres_url,
            endpoint=endpoint,
            region=env.get("WASABI_REGION", "").strip() or "us-east-1",
            access_key_id=env_required(env, "WASABI_ACCESS_KEY_ID"),
            secret_access_key=env_required(env, "WASABI_SECRET_ACCESS_KEY"),
            ffmpeg=ffmpeg_path,
            ffprobe=ffprobe,
            gpu=gpu,
            edge_admin_base=env.get("EDGE_ADMIN_BASE", "").strip().rstrip("/") or None,
            edge_admin_token=env.get("EDGE_ADMIN_TOKEN", "").strip() or None,
            consumer=env.get("TRANSCODER_CONSUMER", "").strip()
            or f"{socket.gethostname()}-{os.getpid()}",
            work_dir=Path(env.get("TRANSCODER_WORK_DIR", "").strip() or "/tmp"),  # noqa: S108
            job_timeout_s=env_int(env, "TRANSCODER_JOB_TIMEOUT_S", 3600, 10, 86_400),
            claim_idle_s=env_int(env, "TRANSCODER_CLAIM_IDLE_S", 120, 1, 86_400),
            max_deliveries=env_int(env, "TRANSCODER_MAX_DELIVERIES", 3, 1, 100),
        )
