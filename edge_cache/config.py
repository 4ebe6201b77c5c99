"""Edge settings, read from the environment in one explicit step (`EdgeSettings.from_env`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .clientip import IPNetwork, parse_networks
from .errors import ConfigError
from .signing import KeyRing

__all__ = [
    "EdgeSettings",
    "OriginSettings",
    "env_int",
    "env_required",
    "parse_listen",
    "parse_size",
    "read_env_file",
    "storage_endpoint",
]

_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(variable: str, raw: str) -> int:
    """Parse a byte size such as `800G`, `512M`, `4MiB` or `1048576` (binary units)."""
    match = _SIZE.fullmatch(raw.strip())
    if match is None:
        raise ConfigError(f"{variable}: {raw!r} is not a size (examples: 1048576, 512M, 800G)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def parse_listen(variable: str, raw: str) -> tuple[str, int]:
    """Parse `host:port` (IPv6 as `[::1]:8080`)."""
    host, sep, port_text = raw.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{variable}: {raw!r} is not host:port")
    return host, int(port_text)


def env_int(env: Mapping[str, str], variable: str, default: int, low: int, high: int) -> int:
    """An integer variable within [low, high], or `default` when unset."""
    raw = env.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{variable}: {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{variable}: {value} is outside {low}..{high}")
    return value


def env_required(env: Mapping[str, str], variable: str) -> str:
    """A variable that must be set (surrounding spaces removed)."""
    value = env.get(variable, "").strip()
    if not value:
        raise ConfigError(f"{variable} must be set")
    return value


def _size(env: Mapping[str, str], variable: str, default: str, low: int) -> int:
    value = parse_size(variable, env.get(variable, "").strip() or default)
    if value < low:
        raise ConfigError(f"{variable}: must be at least {low} bytes")
    return value


def storage_endpoint(env: Mapping[str, str]) -> str:
    """WASABI_ENDPOINT: a scheme and a host, nothing else (no bucket, path or credentials)."""
    endpoint = env_required(env, "WASABI_ENDPOINT")
    if not re.fullmatch(r"https?://[^/?#@\s]+/?", endpoint):
        raise ConfigError(
            f"WASABI_ENDPOINT: {endpoint!r} must be a scheme and host, like https://s3.wasabisys.com"
        )
    return endpoint.rstrip("/")


@dataclass(frozen=True, slots=True)
class OriginSettings:
    """Where the previews live: one bucket on one S3-compatible endpoint, read-only."""

    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    timeout_s: float
    retries: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OriginSettings:
        return cls(
            endpoint=storage_endpoint(env),
            region=env.get("WASABI_REGION", "").strip() or "us-east-1",
            access_key_id=env_required(env, "WASABI_ACCESS_KEY_ID"),
            secret_access_key=env_required(env, "WASABI_SECRET_ACCESS_KEY"),
            bucket=env_required(env, "WASABI_BUCKET_PREVIEWS"),
            timeout_s=env_int(env, "FETCH_TIMEOUT_MS", 10_000, 50, 600_000) / 1000,
            retries=env_int(env, "EDGE_ORIGIN_RETRIES", 2, 0, 10),
        )


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """Everything the edge needs; built once, then injected."""

    listen: tuple[str, int]
    admin_listen: tuple[str, int]
    keys: KeyRing
    clock_skew_s: int
    trusted_proxies: tuple[IPNetwork, ...]
    cache_dir: Path
    cache_max_bytes: int
    slice_bytes: int
    admin_token: str | None
    allowed_origins: tuple[str, ...]
    rate_limit_max: int
    rate_limit_window_s: int
    redis_url: str | None
    origin: OriginSettings
    meta_ttl_s: int
    negative_ttl_s: int
    max_ranges: int
    prefetch_max_bytes: int
    drain_grace_s: float
    shutdown_timeout_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EdgeSettings:
        try:
            trusted = parse_networks(env.get("EDGE_TRUSTED_PROXIES", ""))
        except ValueError as exc:
            raise ConfigError(f"EDGE_TRUSTED_PROXIES: {exc}") from None
        admin_token = env.get("EDGE_ADMIN_TOKEN", "").strip() or None
        if admin_token is not None and len(admin_token) < 16:
            raise ConfigError("EDGE_ADMIN_TOKEN: must be at least 16 characters")
        slice_bytes = _size(env, "EDGE_SLICE_BYTES", "4M", 64 << 10)
        cache_max = _size(env, "EDGE_CACHE_MAX_BYTES", "10G", 1)
        if cache_max < slice_bytes:
            raise ConfigError("EDGE_CACHE_MAX_BYTES: must be at least EDGE_SLICE_BYTES")
        origins = tuple(
            o.strip().rstrip("/")
            for o in env.get("EDGE_ALLOWED_ORIGINS", "").split(",")
            if o.strip()
        )
        return cls(
            listen=parse_listen("EDGE_LISTEN", env.get("EDGE_LISTEN", "") or "127.0.0.1:8080"),
            admin_listen=parse_listen(
                "EDGE_ADMIN_LISTEN", env.get("EDGE_ADMIN_LISTEN", "") or "127.0.0.1:9090"
            ),
            keys=KeyRing.from_env(env),
            clock_skew_s=env_int(env, "EDGE_CLOCK_SKEW_S", 30, 0, 3600),
            trusted_proxies=trusted,
            cache_dir=Path(env.get("EDGE_CACHE_DIR", "").strip() or "var/edge-cache"),
            cache_max_bytes=cache_max,
            slice_bytes=slice_bytes,
            admin_token=admin_token,
            allowed_origins=origins,
            rate_limit_max=env_int(env, "RATE_LIMIT_MAX", 600, 0, 10**9),
            rate_limit_window_s=env_int(env, "RATE_LIMIT_WINDOW", 60, 1, 86_400),
            redis_url=env.get("REDIS_URL", "").strip() or None,
            origin=OriginSettings.from_env(env),
            meta_ttl_s=env_int(env, "EDGE_META_TTL_S", 60, 0, 86_400),
            negative_ttl_s=env_int(env, "EDGE_NEGATIVE_TTL_S", 10, 0, 3600),
            max_ranges=env_int(env, "EDGE_MAX_RANGES", 16, 1, 1000),
            prefetch_max_bytes=_size(env, "EDGE_PREFETCH_MAX_BYTES", "256M", 0),
            drain_grace_s=env_int(env, "EDGE_DRAIN_GRACE_MS", 1000, 0, 600_000) / 1000,
            shutdown_timeout_s=env_int(env, "EDGE_SHUTDOWN_TIMEOUT_S", 30, 0, 3600),
        )


def read_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (comments and blank lines skipped; optional quotes stripped)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.removeprefix("export ").partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values
