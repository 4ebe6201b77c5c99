"""`control` command line: serve, migrate."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from edge_cache.cli import configure_logging, run_command
from edge_cache.errors import ConfigError

from .config import ControlSettings

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings = ControlSettings.from_env(os.environ)
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("TRUSTED_PROXIES", "127.0.0.1"),
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from . import db

    url = os.environ.get("POSTGRES_URL", "").strip()
    if not url:
        raise ConfigError("POSTGRES_URL must be set")

    async def run() -> list[int]:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return await db.migrate(conn)
        finally:
            await conn.close()

    try:
        applied = asyncio.run(run())
    except OSError as exc:
        raise ConfigError(f"POSTGRES_URL: cannot connect ({exc})") from None
    print(f"applied migrations {applied}" if applied else "database is up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="control", description="The control plane API.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API (migrations are applied at start-up)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)
    migrate = commands.add_parser("migrate", help="apply database migrations to POSTGRES_URL")
    migrate.set_defaults(run=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
