"""`transcoder` command line: run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from edge_cache.cli import configure_logging, run_command
from edge_cache.errors import ConfigError

from .config import WorkerSettings

__all__ = ["main"]

log = logging.getLogger("transcoder")


async def _run(settings: WorkerSettings) -> int:
    from .worker import PreviewWorker, detect_encoder

    try:
        encoder = await detect_encoder(settings)
    except RuntimeError as exc:
        raise ConfigError(str(exc)) from None
    worker = PreviewWorker(settings, encoder)
    await worker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("transcoder %s consuming with %s", settings.consumer, encoder.value)
    try:
        # A stop lets the job in hand finish; an unfinished one is reclaimed by another worker.
        await worker.run(stop)
    finally:
        await worker.close()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    settings = WorkerSettings.from_env(os.environ)
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    return asyncio.run(_run(settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transcoder", description="The preview worker.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="consume preview jobs until SIGTERM")
    run.set_defaults(run=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
