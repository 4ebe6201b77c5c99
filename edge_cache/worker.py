"""One worker process of `edge-cache serve --workers N`, started by the supervisor.

Not a command of its own: the supervisor passes the worker's slot and run directory in the
environment (EDGE_WORKER_SLOT, EDGE_WORKERS, EDGE_RUN_DIR, EDGE_SUPERVISOR_PID).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from .app import serve
from .cli import configure_logging, run_loop
from .config import EdgeSettings, env_int, env_required
from .errors import ConfigError
from .sharding import Placement
from .supervisor import MAX_WORKERS

__all__ = ["main"]


async def _watch_parent(supervisor_pid: int, stop: asyncio.Event) -> None:
    """Drain and exit if the supervisor is gone (killed outright): no orphaned workers."""
    while not stop.is_set():
        if os.getppid() != supervisor_pid:
            stop.set()
            return
        await asyncio.sleep(1.0)


async def _run(settings: EdgeSettings, placement: Placement, supervisor_pid: int) -> None:
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_parent(supervisor_pid, stop))
    try:
        await serve(settings, placement, stop)
    finally:
        watcher.cancel()


def main() -> int:
    env = dict(os.environ)
    try:
        settings = EdgeSettings.from_env(env)
        workers = env_int(env, "EDGE_WORKERS", 1, 1, MAX_WORKERS)
        slot = env_int(env, "EDGE_WORKER_SLOT", 0, 0, workers - 1)
        placement = Placement(slot, workers, Path(env_required(env, "EDGE_RUN_DIR")))
        supervisor_pid = env_int(env, "EDGE_SUPERVISOR_PID", os.getppid(), 1, 2**31)
    except ConfigError as exc:
        print(f"edge-cache worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(env.get("LOG_LEVEL", "INFO"), worker=slot)
    run_loop(_run(settings, placement, supervisor_pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
