"""`edge-cache serve --workers N`: N worker processes on one port, one disk cache.

The supervisor binds nothing itself. Each worker binds the public and admin ports with
SO_REUSEPORT (the kernel spreads connections), owns the keys that hash to its slot
(sharding.py) and answers the others over a unix socket in the run directory (peers.py).

Signals: SIGTERM/SIGINT drain every worker and exit; SIGHUP restarts the workers one at a time,
each replacement ready before the next goes. A worker that exits for any other reason is
started again (with backoff); one that keeps dying within seconds of its start stops the
supervisor instead of looping forever. A worker that receives SIGTERM itself drains and is
replaced: a graceful restart of one worker that leaves the others' connections alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
from prometheus_client import multiprocess

from .config import EdgeSettings
from .errors import ConfigError
from .sharding import Placement
from .store import clear_stale_layouts

__all__ = ["Supervisor", "check_workers"]

log = logging.getLogger("edge_cache.supervisor")

MAX_WORKERS = 64
QUICK_EXIT_S = 10.0  # a worker that dies sooner than this after its start counts as failing
MAX_QUICK_EXITS = 5
READY_TIMEOUT_S = 60.0
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes
_MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"  # Linux 5.14+


def _reads(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def check_workers(settings: EdgeSettings, workers: int) -> None:
    """Settings that several workers cannot share; raises ConfigError naming the variable."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers: {workers} is outside 1..{MAX_WORKERS}")
    if workers == 1:
        return
    if settings.listen[1] == 0:
        raise ConfigError("EDGE_LISTEN: several workers need a fixed port, not 0")
    if settings.admin_listen[1] == 0:
        raise ConfigError("EDGE_ADMIN_LISTEN: several workers need a fixed port, not 0")
    if settings.cache_max_bytes // workers < settings.slice_bytes:
        raise ConfigError(
            f"EDGE_CACHE_MAX_BYTES: each of {workers} workers needs at least EDGE_SLICE_BYTES"
        )


class Supervisor:
    def __init__(
        self, env: Mapping[str, str], settings: EdgeSettings, workers: int, run_dir: Path | None
    ) -> None:
        check_workers(settings, workers)
        self._env = dict(env)
        self._settings = settings
        self._workers = workers
        self._own_run_dir = run_dir is None
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="edge-cache-"))
        if len(str(self.run_dir / f"worker-{workers - 1}.sock")) > _MAX_SOCKET_PATH:
            raise ConfigError(f"EDGE_RUN_DIR: {self.run_dir} is too long for a unix socket path")
        self._metrics_dir = self.run_dir / "metrics"
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._failure: str | None = None
        self._rolling: asyncio.Task[None] | None = None
        self._spawned = asyncio.Condition()  # notified whenever a worker process starts

    def _placement(self, slot: int) -> Placement:
        return Placement(slot, self._workers, self.run_dir)

    def _child_env(self, slot: int) -> dict[str, str]:
        env = dict(self._env)
        env.update(
            EDGE_WORKERS=str(self._workers),
            EDGE_WORKER_SLOT=str(slot),
            EDGE_RUN_DIR=str(self.run_dir),
            PROMETHEUS_MULTIPROC_DIR=str(self._metrics_dir),
            EDGE_SUPERVISOR_PID=str(os.getpid()),
        )
        return env

    def _write_state(self) -> None:
        """`workers.json` in the run directory: who is who, for operators and tests."""
        state = {
            "supervisor": os.getpid(),
            "workers": {str(slot): proc.pid for slot, proc in sorted(self._procs.items())},
        }
        temp = self.run_dir / "workers.json.tmp"
        temp.write_text(json.dumps(state))
        os.replace(temp, self.run_dir / "workers.json")

    async def run(self) -> int:
        """Run the workers until told to stop; returns the exit status."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._metrics_dir, ignore_errors=True)  # counts of an earlier run
        self._metrics_dir.mkdir()
        for name in clear_stale_layouts(self._settings.cache_dir, self._workers):
            log.info("removed %s: a cache layout for another worker count", name)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._roll)
        keepers = [asyncio.create_task(self._keep(slot)) for slot in range(self._workers)]
        log.info("supervising %d workers, run directory %s", self._workers, self.run_dir)
        if _reads(_MIGRATE_REQ) == "0":
            log.info(
                "%s is 0: a restarting worker's listener drops connections still in its accept "
                "queue; set it to 1 to have the kernel move them to the other workers",
                _MIGRATE_REQ.replace("/proc/sys/", "").replace("/", "."),
            )
        await self._stopping.wait()
        log.info("stopping workers")
        if self._rolling is not None:
            self._rolling.cancel()
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        limit = self._settings.drain_grace_s + self._settings.shutdown_timeout_s + 10
        _, late = await asyncio.wait(keepers, timeout=limit)
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if late:
            await asyncio.wait(late, timeout=5)
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._failure:
            log.error("%s", self._failure)
            return 1
        return 0

    async def _keep(self, slot: int) -> None:
        """Keep one worker running in `slot` until the supervisor stops."""
        quick_exits = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            # A session of its own: Ctrl-C in a terminal reaches the supervisor only, which
            # then stops the workers in order (instead of them exiting and being replaced).
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edge_cache.worker",
                env=self._child_env(slot),
                start_new_session=True,
            )
            self._procs[slot] = proc
            self._write_state()
            async with self._spawned:
                self._spawned.notify_all()
            code = await proc.wait()
            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(proc.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                return
            lived = time.monotonic() - started
            quick_exits = quick_exits + 1 if lived < QUICK_EXIT_S and code != 0 else 0
            if quick_exits >= MAX_QUICK_EXITS:
                self._failure = (
                    f"worker {slot} exited {quick_exits} times within {QUICK_EXIT_S:.0f} s of "
                    f"starting (last status {code}); see its log lines above"
                )
                self._stopping.set()
                return
            if code == 0:
                log.info("worker %d (pid %d) finished; starting its replacement", slot, proc.pid)
            else:
                log.warning("worker %d (pid %d) exited with %s; restarting", slot, proc.pid, code)
                await asyncio.sleep(min(0.2 * 2**quick_exits, 10.0))

    def _roll(self) -> None:
        if self._rolling is None or self._rolling.done():
            self._rolling = asyncio.create_task(self._restart_all())

    async def _restart_all(self) -> None:
        """Replace the workers one at a time, each replacement ready before the next goes."""
        log.info("rolling restart of %d workers", self._workers)
        for slot in range(self._workers):
            await self._replace(slot)
        log.info("rolling restart done")

    async def _replace(self, slot: int) -> None:
        old = self._procs.get(slot)
        if old is None or old.returncode is not None:
            return
        old.send_signal(signal.SIGTERM)  # it drains; its keeper starts the replacement
        await old.wait()
        async with self._spawned:
            await self._spawned.wait_for(lambda: self._procs.get(slot) is not old)
        await self.wait_ready(slot)

    async def wait_ready(self, slot: int, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Wait until the worker in `slot` answers on its private socket."""
        path = str(self._placement(slot).socket_path(slot))
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as client:
            while time.monotonic() < deadline and not self._stopping.is_set():
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with client.get("http://worker/ready") as response:
                        if response.status == 200:
                            return True
                await asyncio.sleep(0.05)
        return False
