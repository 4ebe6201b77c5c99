"""`edge-cache demo`: the edge with embedded defaults, on loopback only.

Starts an embedded S3-compatible server (moto), seeds a previews bucket with the sample clip
shipped in this package (MP4, HLS, poster), starts the edge in front of it with a fresh random
signing key, and prints signed URLs that play.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import secrets
import signal
import tempfile
from importlib import resources
from pathlib import Path

import aioboto3

from .app import Edge, running
from .cli import signed_url
from .config import EdgeSettings

__all__ = ["run_demo", "start_embedded_s3"]

BUCKET = "previews"
ASSET_PREFIX = "assets/demo/"
CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}


def start_embedded_s3() -> tuple[object, str]:
    """Start moto's S3 server on a free loopback port; returns (server, endpoint URL)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise SystemExit(
            "edge-cache demo needs the embedded S3 server: pip install 'video-edge[local]'"
        ) from exc
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


async def _seed(endpoint: str) -> list[str]:
    session = aioboto3.Session(
        aws_access_key_id="demo",
        aws_secret_access_key="demo",  # noqa: S106 - moto accepts any credentials
        region_name="us-east-1",
    )
    keys = []
    async with session.client("s3", endpoint_url=endpoint) as s3:
        await s3.create_bucket(Bucket=BUCKET)
        sample = resources.files("edge_cache") / "sample"
        for item in sorted(sample.iterdir(), key=lambda p: p.name):
            suffix = Path(item.name).suffix
            content_type = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(item.name)[0]
            key = ASSET_PREFIX + ("hls/" if suffix in (".m3u8", ".ts") else "") + item.name
            await s3.put_object(
                Bucket=BUCKET,
                Key=key,
                Body=item.read_bytes(),
                ContentType=content_type or "application/octet-stream",
            )
            keys.append(key)
    return keys


async def run_demo(port: int, admin_port: int, duration_s: float) -> None:
    server, endpoint = start_embedded_s3()
    try:
        await _seed(endpoint)
        with tempfile.TemporaryDirectory(prefix="edge-demo-") as cache_dir:
            env = {
                "WASABI_ENDPOINT": endpoint,
                "WASABI_ACCESS_KEY_ID": "demo",
                "WASABI_SECRET_ACCESS_KEY": "demo",
                "WASABI_BUCKET_PREVIEWS": BUCKET,
                "EDGE_SIGNING_KEY": secrets.token_urlsafe(32),
                "EDGE_ADMIN_TOKEN": secrets.token_urlsafe(24),
                "EDGE_LISTEN": f"127.0.0.1:{port}",
                "EDGE_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
                "EDGE_CACHE_DIR": cache_dir,
                "EDGE_CACHE_MAX_BYTES": "256M",
                "EDGE_SLICE_BYTES": "1M",
                "EDGE_ALLOWED_ORIGINS": "*",
                "EDGE_DRAIN_GRACE_MS": "0",
            }
            settings = EdgeSettings.from_env(env)
            async with running(Edge(settings)) as edge:
                _print_banner(edge.public_url, edge.admin_url, endpoint, edge.edge, env)
                await _wait(duration_s)
    finally:
        server.stop()  # type: ignore[attr-defined]


def _print_banner(public: str, admin: str, endpoint: str, edge: Edge, env: dict[str, str]) -> None:
    mp4 = signed_url(public, f"/{ASSET_PREFIX}preview.mp4", edge.verifier, 3600)
    hls = signed_url(public, f"/{ASSET_PREFIX}*", edge.verifier, 3600) + "hls/index.m3u8"
    poster = signed_url(public, f"/{ASSET_PREFIX}poster.jpg", edge.verifier, 3600)
    print(
        "\n".join(
            [
                f"edge-cache demo: edge {public}, admin {admin}, embedded S3 {endpoint}",
                "",
                f"MP4 (plays in a browser or: ffplay/mpv/vlc):\n  {mp4}",
                f"HLS (prefix token in the path; segments inherit it):\n  {hls}",
                f"poster:\n  {poster}",
                "",
                f"try: curl -s -D- -o /dev/null -H 'Range: bytes=0-99' '{mp4}'",
                "metrics: curl -s -H 'Authorization: Bearer "
                f"{env['EDGE_ADMIN_TOKEN']}' {admin}/metrics",
                "Ctrl-C stops the demo (the embedded S3 server and the cache are discarded).",
            ]
        ),
        flush=True,
    )


async def _wait(duration_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=duration_s or None)
