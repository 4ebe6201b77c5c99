"""`edge-cache` command line: serve, sign, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from .config import EdgeSettings, env_int, parse_listen, read_env_file
from .errors import ConfigError
from .signing import KeyRing, Verifier
from .store import clear_stale_layouts

__all__ = ["main"]


class _JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "edge_cache.access":
            return record.getMessage()  # already one JSON object
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(level: str = "INFO", worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)


def _environment(env_file: str | None) -> dict[str, str]:
    """Values from --env-file, overridden by the real environment."""
    env: dict[str, str] = {}
    if env_file:
        env.update(read_env_file(Path(env_file)))
    env.update(os.environ)
    return env


def run_loop(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        asyncio.run(coro)  # type: ignore[arg-type]


def _serve(args: argparse.Namespace) -> int:
    from .app import serve
    from .supervisor import MAX_WORKERS, Supervisor, check_workers

    env = _environment(args.env_file)
    if args.host or args.port:
        host, port = parse_listen("EDGE_LISTEN", env.get("EDGE_LISTEN") or "127.0.0.1:8080")
        env["EDGE_LISTEN"] = f"{args.host or host}:{args.port or port}"
    workers = args.workers or env_int(env, "EDGE_WORKERS", 1, 1, MAX_WORKERS)
    settings = EdgeSettings.from_env(env)
    check_workers(settings, workers)
    configure_logging(env.get("LOG_LEVEL", "INFO"))
    if workers == 1:
        clear_stale_layouts(settings.cache_dir, 1)
        run_loop(serve(settings))
        return 0
    run_dir = env.get("EDGE_RUN_DIR", "").strip()
    supervisor = Supervisor(env, settings, workers, Path(run_dir) if run_dir else None)
    status = 0

    async def supervise() -> None:
        nonlocal status
        status = await supervisor.run()

    run_loop(supervise())
    return status


def signed_url(
    base: str, path_or_prefix: str, verifier: Verifier, ttl_s: int, ip: str | None = None
) -> str:
    """A playback URL: query form for one object, path form (`/t/<token>/...`) for a prefix."""
    if not path_or_prefix.startswith("/"):
        path_or_prefix = "/" + path_or_prefix
    token = verifier.sign(path_or_prefix, int(time.time()) + ttl_s, ip=ip)
    base = base.rstrip("/")
    if path_or_prefix.endswith("/*"):
        return f"{base}/t/{token}{quote(path_or_prefix[:-1])}"
    return f"{base}{quote(path_or_prefix)}?token={token}"


def _sign(args: argparse.Namespace) -> int:
    env = _environment(args.env_file)
    keys = KeyRing.from_env(env)
    base = args.base or env.get("EDGE_PUBLIC_BASE") or ""
    if not base:
        host, port = parse_listen("EDGE_LISTEN", env.get("EDGE_LISTEN") or "127.0.0.1:8080")
        base = f"http://{host}:{port}"
    if args.ttl <= 0:
        raise ConfigError("--ttl: must be a positive number of seconds")
    print(signed_url(base, args.path, Verifier(keys, 0), args.ttl, args.ip))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    run_loop(run_demo(port=args.port, admin_port=args.admin_port, duration_s=args.duration))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-cache", description="Signed, slice-cached edge for video previews."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the edge server")
    serve.add_argument("--host", help="listen address (overrides EDGE_LISTEN's host)")
    serve.add_argument("--port", type=int, help="listen port (overrides EDGE_LISTEN's port)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port and the cache (default EDGE_WORKERS, else 1)",
    )
    serve.add_argument("--env-file", help="KEY=VALUE file read before the environment")
    serve.set_defaults(run=_serve)

    sign = commands.add_parser("sign", help="print a signed playback URL")
    sign.add_argument("path", help="object path (/assets/a1/preview.mp4) or prefix (/assets/a1/*)")
    sign.add_argument("--ttl", type=int, default=3600, help="seconds until expiry (default 3600)")
    sign.add_argument("--ip", help="bind the token to this client address or CIDR block")
    sign.add_argument("--base", help="URL base (default EDGE_PUBLIC_BASE, else EDGE_LISTEN)")
    sign.add_argument("--env-file", help="KEY=VALUE file read before the environment")
    sign.set_defaults(run=_sign)

    demo = commands.add_parser(
        "demo", help="embedded S3 server + sample video + edge on loopback; prints signed URLs"
    )
    demo.add_argument("--port", type=int, default=8080, help="edge port (default 8080)")
    demo.add_argument("--admin-port", type=int, default=9090, help="admin port (default 9090)")
    demo.add_argument(
        "--duration", type=float, default=0, help="stop after N seconds (0: run until Ctrl-C)"
    )
    demo.set_defaults(run=_demo)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse and run a subcommand; configuration errors become one line and exit status 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{parser.prog}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
