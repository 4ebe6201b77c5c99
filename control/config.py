"""Control-plane settings, read from the environment in one explicit step."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from edge_cache.config import env_int, env_required, storage_endpoint
from edge_cache.errors import ConfigError
from edge_cache.signing import KeyRing

__all__ = ["ApiKey", "ControlSettings", "StorageSettings", "parse_api_keys"]

_GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured API key, kept only as its SHA-256; `name` labels it in logs and limits."""

    name: str
    digest: bytes


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """CONTROL_API_KEYS: comma-separated `name:key` (or bare keys, named key1, key2, ...)."""
    keys = []
    for number, item in enumerate((i.strip() for i in raw.split(",") if i.strip()), start=1):
        name, sep, secret = item.partition(":")
        if not sep:
            name, secret = f"key{number}", item
        if len(secret) < 24:
            raise ConfigError("CONTROL_API_KEYS: each key must be at least 24 characters")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"CONTROL_API_KEYS: bad key name {name!r}")
        keys.append(ApiKey(name, hashlib.sha256(secret.encode()).digest()))
    if not keys:
        raise ConfigError("CONTROL_API_KEYS must be set (name:key, comma-separated)")
    if len({k.name for k in keys}) != len(keys):
        raise ConfigError("CONTROL_API_KEYS: key names must be unique")
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str
    bucket_staging: str
    bucket_masters: str
    bucket_previews: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StorageSettings:
        return cls(
            endpoint=storage_endpoint(env),
            region=env.get("WASABI_REGION", "").strip() or "us-east-1",
            access_key_id=env_required(env, "WASABI_ACCESS_KEY_ID"),
            secret_access_key=env_required(env, "WASABI_SECRET_ACCESS_KEY"),
            bucket_staging=env_required(env, "WASABI_BUCKET_STAGING"),
            bucket_masters=env_required(env, "WASABI_BUCKET_MASTERS"),
            bucket_previews=env_required(env, "WASABI_BUCKET_PREVIEWS"),
        )


@dataclass(frozen=True, slots=True)
class Limit:
    max_requests: int
    window_s: int


@dataclass(frozen=True, slots=True)
class ControlSettings:
    postgres_url: str
    redis_url: str
    storage: StorageSettings
    api_keys: tuple[ApiKey, ...]
    edge_public_base: str | None
    edge_keys: KeyRing | None
    edge_admin_base: str | None
    edge_admin_token: str | None
    allowed_origins: tuple[str, ...]
    global_limit: Limit
    presign_limit: Limit
    promote_limit: Limit
    upload_max_bytes: int
    upload_url_ttl_s: int
    multipart_part_bytes: int
    copy_multipart_threshold: int
    copy_part_bytes: int
    playback_ttl_default_s: int
    playback_ttl_max_s: int
    max_body_bytes: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ControlSettings:
        redis_url = (env.get("REDIS_URL", "") or env.get("VALKEY_URL", "")).strip()
        if not redis_url:
            raise ConfigError("REDIS_URL (or VALKEY_URL) must be set")
        if not re.match(r"(redis|rediss|unix)://", redis_url):
            raise ConfigError("REDIS_URL: must start with redis://, rediss:// or unix://")
        postgres_url = env_required(env, "POSTGRES_URL")
        if not re.match(r"postgres(ql)?://", postgres_url):
            raise ConfigError("POSTGRES_URL: must start with postgresql://")
        edge_base = env.get("EDGE_PUBLIC_BASE", "").strip().rstrip("/") or None
        if edge_base is not None and not re.fullmatch(r"https?://[^?#\s]+", edge_base):
            raise ConfigError(f"EDGE_PUBLIC_BASE: {edge_base!r} is not an http(s) URL")
        # Keys are needed only to sign edge URLs; without an edge, playback is presigned storage.
        edge_keys = KeyRing.from_env(env) if edge_base is not None else None
        ttl_max = env_int(env, "PLAYBACK_TTL_MAX_S", 86_400, 60, 30 * 86_400)
        limits = {
            name: Limit(
                env_int(env, f"{prefix}_MAX", default_max, 0, 10**9),
                env_int(env, f"{prefix}_WINDOW", 60, 1, 86_400),
            )
            for name, prefix, default_max in (
                ("global", "RATE_LIMIT", 600),
                ("presign", "RL_PRESIGN", 60),
                ("promote", "RL_PROMOTE", 30),
            )
        }
        return cls(
            postgres_url=postgres_url,
            redis_url=redis_url,
            storage=StorageSettings.from_env(env),
            api_keys=parse_api_keys(env.get("CONTROL_API_KEYS", "")),
            edge_public_base=edge_base,
            edge_keys=edge_keys,
            edge_admin_base=env.get("EDGE_ADMIN_BASE", "").strip().rstrip("/") or None,
            edge_admin_token=env.get("EDGE_ADMIN_TOKEN", "").strip() or None,
            allowed_origins=tuple(
                o.strip().rstrip("/")
                for o in env.get("ALLOWED_ORIGINS", "").split(",")
                if o.strip()
            ),
            global_limit=limits["global"],
            presign_limit=limits["presign"],
            promote_limit=limits["promote"],
            upload_max_bytes=env_int(env, "UPLOAD_MAX_BYTES", 50 * _GIB, 1, 5 << 40),
            upload_url_ttl_s=env_int(env, "UPLOAD_URL_TTL_S", 3600, 60, 7 * 86_400),
            multipart_part_bytes=env_int(env, "UPLOAD_PART_BYTES", 64 << 20, 5 << 20, 5 * _GIB),
            copy_multipart_threshold=env_int(
                env, "COPY_MULTIPART_THRESHOLD", 5 * _GIB, 5 << 20, 5 * _GIB
            ),
            copy_part_bytes=env_int(env, "COPY_PART_BYTES", 512 << 20, 5 << 20, 5 * _GIB),
            playback_ttl_default_s=min(3600, ttl_max),
            playback_ttl_max_s=ttl_max,
            max_body_bytes=env_int(env, "CONTROL_MAX_BODY_BYTES", 1 << 20, 1024, 64 << 20),
        )
