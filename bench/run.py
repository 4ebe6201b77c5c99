"""Edge vs nginx proxy_cache + slice, side by side on one machine: one command, one table.

    python bench/run.py --runs 3 --duration 10          # all scenarios, medians of 3
    python bench/run.py --scenarios hot1m,hot16k        # a subset
    (scenarios: hot1m hot16k hot4m cold zipf player; "player": viewers reading 16 objects of
    32 MiB front to back in 2 MiB ranges, seeking now and then, from cold caches)
    python bench/run.py --soak 600                      # edge RSS under load for 10 minutes
    python bench/run.py --workers 2 --scenarios hot16k  # N edge workers vs N nginx workers

Both servers run pinned to CPU 0 (one worker each), wrk and the origin run on CPU 1, and the
scenarios alternate edge/nginx run by run. With --workers N > 1 the servers may use every CPU
(wrk and the origin still share CPU 1 with them), each with N worker processes. The origin is
the embedded S3 server (moto) behind a counting proxy, so origin requests can be counted for
both. Everything listens on 127.0.0.1.
Every load loop is bounded by --duration; the whole run by the scenario list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_cache.signing import KeyRing, Verifier  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402

BUCKET = "previews"
KEY = "bench-signing-secret-0123456789abcdef"
ADMIN = "bench-admin-token-0123456789"
MIB = 1 << 20
SLICE = "4M"
SLICE_BYTES = 4 * MIB
SERVER_CPU, CLIENT_CPU = "0", "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def server_cpus(workers: int) -> str:
    return SERVER_CPU if workers == 1 else f"0-{(os.cpu_count() or 1) - 1}"


def pinned(cpu: str, args: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *args] if shutil.which("taskset") and os.cpu_count() else args


# -- origin ------------------------------------------------------------------------------------


class Origin:
    """moto on its own port, behind a counting proxy running in a thread of this process."""

    def __init__(self, workdir: Path) -> None:
        self.moto_port = free_port()
        moto = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        self.moto = subprocess.Popen(
            pinned(CLIENT_CPU, [moto, "-H", "127.0.0.1", "-p", str(self.moto_port)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.moto_port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = FaultProxy(f"http://127.0.0.1:{self.moto_port}")
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result()
        self.url = self.proxy.url
        self.host_port = self.url.removeprefix("http://")
        self.s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.moto_port}",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        self.s3.create_bucket(Bucket=BUCKET)
        # nginx cannot sign S3 requests (nginx-s3-gateway needs njs for SigV4), so the bench
        # bucket is publicly readable; the edge signs its requests all the same.
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{BUCKET}/*",
                }
            ],
        }
        self.s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))

    def put(self, key: str, body: bytes, content_type: str = "video/mp4") -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body, ContentType=content_type)

    def gets(self) -> int:
        return len([s for s in self.proxy.seen if s.method == "GET"])

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.moto.terminate()
        self.moto.wait()


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    cache_dir: Path
    admin_port: int | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_each(self) -> dict[int, int]:
        """Resident KiB of the server's process and of its children (nginx's worker, or the
        edge supervisor's workers)."""
        pid = self.process.pid
        sizes: dict[int, int] = {}
        for each in [pid] + [int(p) for p in _children(pid)]:
            status = Path(f"/proc/{each}/status")
            if status.exists():
                match = re.search(r"VmRSS:\s+(\d+)", status.read_text())
                sizes[each] = int(match.group(1)) if match else 0
        return sizes

    def rss_kib(self) -> int:
        return sum(self.rss_each().values())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM if self.name == "edge" else signal.SIGQUIT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _children(pid: int) -> list[str]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return path.read_text().split() if path.exists() else []


def start_edge(workdir: Path, origin: Origin, cache_max: str, workers: int = 1) -> Server:
    port, admin = free_port(), free_port()
    cache_dir = workdir / "edge-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    env = {
        **os.environ,
        "WASABI_ENDPOINT": origin.url,
        "WASABI_ACCESS_KEY_ID": "bench",
        "WASABI_SECRET_ACCESS_KEY": "bench",
        "WASABI_BUCKET_PREVIEWS": BUCKET,
        "EDGE_SIGNING_KEY": KEY,
        "EDGE_ADMIN_TOKEN": ADMIN,
        "EDGE_LISTEN": f"127.0.0.1:{port}",
        "EDGE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "EDGE_CACHE_DIR": str(cache_dir),
        "EDGE_CACHE_MAX_BYTES": cache_max,
        "EDGE_SLICE_BYTES": SLICE,
        "EDGE_META_TTL_S": "3600",
        "EDGE_DRAIN_GRACE_MS": "0",
        "RATE_LIMIT_MAX": "0",
        "LOG_LEVEL": "WARNING",
        "FETCH_TIMEOUT_MS": "30000",
    }
    run_dir = workdir / "edge-run"
    env["EDGE_RUN_DIR"] = str(run_dir)
    binary = str(Path(sys.executable).with_name("edge-cache"))
    command = [binary, "serve", "--workers", str(workers)]
    process = subprocess.Popen(pinned(server_cpus(workers), command), env=env)
    wait_port(port)
    if workers > 1:  # every worker's private socket up: misses then go to their owners
        deadline = time.monotonic() + 30
        while not all((run_dir / f"worker-{s}.sock").exists() for s in range(workers)):
            if time.monotonic() > deadline:
                raise RuntimeError("edge workers did not start")
            time.sleep(0.05)
    return Server("edge", port, process, cache_dir, admin)


def start_nginx(workdir: Path, origin: Origin, cache_max: str, workers: int = 1) -> Server:
    port = free_port()
    prefix = workdir / "nginx"
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    script = ROOT / "bench" / "baseline" / "start-nginx.sh"
    size = cache_max.lower() if cache_max[-1].isalpha() else cache_max
    process = subprocess.Popen(
        pinned(
            server_cpus(workers),
            [
                str(script),
                str(prefix),
                str(port),
                origin.host_port,
                BUCKET,
                SLICE.lower(),
                size,
                str(workers),
            ],
        )
    )
    wait_port(port)
    return Server("nginx", port, process, prefix / "cache")


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    bytes: int
    seconds: float
    errors: int
    non2xx: int
    p50_ms: float
    p99_ms: float
    p999_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mbps(self) -> float:
        return self.bytes / self.seconds / 1e6


def wrk(
    url: str,
    paths_file: Path,
    conns: int,
    duration: int,
    mode: str,
    range_bytes: int,
    object_size: int,
) -> Load:
    args = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(ROOT / "bench" / "player.lua"),
        url,
        "--",
        str(paths_file),
        mode,
        str(range_bytes),
        str(object_size),
    ]
    out = subprocess.run(pinned(CLIENT_CPU, args), capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("JSON "))
    data = json.loads(line[5:])
    return Load(
        requests=data["requests"],
        bytes=data["bytes"],
        seconds=data["duration_us"] / 1e6,
        errors=data["errors"],
        non2xx=data["non2xx"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        p999_ms=data["p999_us"] / 1000,
    )


def signer() -> Verifier:
    return Verifier(KeyRing.from_env({"EDGE_SIGNING_KEY": KEY}), 0)


def signed_paths(keys: list[str]) -> list[str]:
    verifier = signer()
    exp = int(time.time()) + 7200
    return [f"/{k}?token={verifier.sign('/' + k, exp)}" for k in keys]


def warm(base: str, paths: list[str], object_size: int, step: int) -> None:
    """Fetch every object once, whole or in `step` ranges, so the hot runs are all hits."""

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            sem = asyncio.Semaphore(8)

            async def one(path: str, start: int) -> None:
                end = min(start + step, object_size) - 1
                async with (
                    sem,
                    http.get(base + path, headers={"Range": f"bytes={start}-{end}"}) as r,
                ):
                    await r.read()
                    if r.status not in (200, 206):
                        raise RuntimeError(f"warm-up {path}: {r.status}")

            await asyncio.gather(*(one(p, s) for p in paths for s in range(0, object_size, step)))

    asyncio.run(run())


def edge_metric(server: Server, name: str, labels: str = "") -> float:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.admin_port}/metrics",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    with urllib.request.urlopen(request) as response:  # noqa: S310 - loopback admin listener
        text = response.read().decode()
    pattern = re.escape(name) + (re.escape(labels) if labels else r"(\{\})?") + r" ([0-9.e+]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def disk_mib(directory: Path) -> float:
    """Bytes of cached data on disk (what the size bound is about), in MiB."""
    total = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    return total / MIB


def nginx_cache_counts(server: Server) -> dict[str, int]:
    log = server.cache_dir.parent / "access.log"
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            status = line.split(" ", 1)[0]
            counts[status] = counts.get(status, 0) + 1
    return counts


# -- scenarios ----------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    metric: str
    edge: list[float] = field(default_factory=list)
    nginx: list[float] = field(default_factory=list)
    higher_is_better: bool = True

    def median(self, side: str) -> float:
        values = self.edge if side == "edge" else self.nginx
        return statistics.median(values) if values else float("nan")

    def ratio(self) -> float:
        nginx = self.median("nginx")
        return self.median("edge") / nginx if nginx else float("nan")


@dataclass
class Bench:
    workdir: Path
    origin: Origin
    runs: int
    duration: int
    workers: int = 1
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, scenario: str, metric: str, higher_is_better: bool = True) -> Row:
        for existing in self.rows:
            if (existing.scenario, existing.metric) == (scenario, metric):
                return existing
        created = Row(scenario, metric, higher_is_better=higher_is_better)
        self.rows.append(created)
        return created

    @contextmanager
    def servers(self, cache_max: str) -> Iterator[tuple[Server, Server]]:
        edge = start_edge(self.workdir, self.origin, cache_max, self.workers)
        nginx = start_nginx(self.workdir, self.origin, cache_max, self.workers)
        try:
            yield edge, nginx
        finally:
            edge.stop()
            nginx.stop()

    def hot(
        self,
        name: str,
        keys: list[str],
        size: int,
        conns: int,
        range_bytes: int,
        metric_of: Callable[[Load], float],
        metric: str,
    ) -> None:
        paths = signed_paths(keys)
        paths_file = self.workdir / f"{name}.paths"
        paths_file.write_text("\n".join(paths) + "\n")
        with self.servers("20G") as (edge, nginx):
            for server in (edge, nginx):
                warm(server.base, paths, size, min(size, 4 * MIB))
            for run in range(self.runs):
                order = (edge, nginx) if run % 2 == 0 else (nginx, edge)
                for server in order:
                    load = wrk(
                        server.base, paths_file, conns, self.duration, "uniform", range_bytes, size
                    )
                    if load.errors or load.non2xx:
                        self.notes.append(
                            f"{name} {server.name}: {load.errors} errors, {load.non2xx} non-2xx"
                        )
                    getattr(self.row(name, metric), server.name).append(metric_of(load))
                    getattr(self.row(name, "p99 ms", False), server.name).append(load.p99_ms)
            self.notes.append(
                f"{name}: RSS after runs: edge {edge.rss_kib() // 1024} MiB, "
                f"nginx {nginx.rss_kib() // 1024} MiB"
            )

    def cold(self, big_key: str, big_size: int) -> None:
        """Scenario 4: TTFB of a cold 1 MiB range mid-object, and 50 identical cold requests."""
        path = signed_paths([big_key])[0]
        start = big_size // 2
        header = {"Range": f"bytes={start}-{start + MIB - 1}"}

        def origin_answer_ms() -> float:
            """How long the origin took to answer the last object GET (headers), in ms."""
            last = [s for s in self.origin.proxy.seen if s.method == "GET"][-1]
            return (last.answered - last.started) * 1000

        async def ttfb(base: str, count: int) -> list[float]:
            async with aiohttp.ClientSession() as http:

                async def one() -> float:
                    began = time.perf_counter()
                    async with http.get(base + path, headers=header) as response:
                        await response.content.readany()
                        first = time.perf_counter() - began
                        await response.read()
                        assert response.status == 206, response.status
                        return first * 1000

                return list(await asyncio.gather(*(one() for _ in range(count))))

        async def direct_ttfb() -> float:
            """A client's own time to the first byte of that slice straight from the origin
            (through the same counting proxy; the bench bucket is publicly readable)."""
            first = start // SLICE_BYTES * SLICE_BYTES
            url = f"{self.origin.url}/{BUCKET}/{big_key}"
            async with aiohttp.ClientSession() as http:
                began = time.perf_counter()
                slice_range = {"Range": f"bytes={first}-{first + SLICE_BYTES - 1}"}
                async with http.get(url, headers=slice_range) as response:
                    await response.content.readany()
                    elapsed = time.perf_counter() - began
                    await response.read()
            return elapsed * 1000

        for run in range(self.runs):
            with self.servers("20G") as (edge, nginx):
                order = (edge, nginx) if run % 2 == 0 else (nginx, edge)
                for server in order:
                    direct = asyncio.run(direct_ttfb())
                    single = asyncio.run(ttfb(server.base, 1))[0]
                    getattr(
                        self.row("cold", "TTFB minus a direct origin GET of the slice, ms", False),
                        server.name,
                    ).append(single - direct)
                    getattr(self.row("cold", "TTFB ms, one request", False), server.name).append(
                        single
                    )
                    # The target: the origin's own answer to that slice GET + at most 10 ms.
                    getattr(
                        self.row("cold", "TTFB minus origin answer to its slice GET, ms", False),
                        server.name,
                    ).append(single - origin_answer_ms())
            with self.servers("20G") as (edge, nginx):
                for server in (edge, nginx):
                    before = self.origin.gets()
                    times = asyncio.run(ttfb(server.base, 50))
                    getattr(
                        self.row("cold", "origin GETs for 50 concurrent", False), server.name
                    ).append(self.origin.gets() - before)
                    getattr(
                        self.row("cold", "TTFB ms p50 of 50 concurrent", False), server.name
                    ).append(statistics.median(times))
                    getattr(
                        self.row("cold", "TTFB ms max of 50 concurrent", False), server.name
                    ).append(max(times))

    def mixed(
        self,
        name: str,
        keys: list[str],
        size: int,
        cache_max: str,
        mode: str = "zipf",
        range_bytes: int = 0,
    ) -> None:
        """Zipf popularity from cold servers: whole GETs ("zipf"), or viewers reading objects
        front to back in `range_bytes` steps with seeks ("player")."""
        paths = signed_paths(keys)
        paths_file = self.workdir / f"{name}.paths"
        paths_file.write_text("\n".join(paths) + "\n")
        for run in range(self.runs):
            with self.servers(cache_max) as (edge, nginx):
                order = (edge, nginx) if run % 2 == 0 else (nginx, edge)
                for server in order:
                    load = wrk(server.base, paths_file, 32, self.duration, mode, range_bytes, size)
                    if load.errors or load.non2xx:
                        self.notes.append(
                            f"{name} {server.name}: {load.errors} errors, {load.non2xx} non-2xx"
                        )
                    if server.name == "edge":
                        hit = edge_metric(server, "edge_slice_lookups_total", '{result="hit"}')
                        miss = edge_metric(server, "edge_slice_lookups_total", '{result="miss"}')
                        joined = edge_metric(
                            server, "edge_slice_lookups_total", '{result="coalesced"}'
                        )
                        # Joined fills cost no origin fetch; nginx logs its lock waiters as HIT.
                        ratio = (hit + joined) / max(1.0, hit + miss + joined)
                    else:
                        time.sleep(1.5)  # access log flush=1s
                        counts = nginx_cache_counts(server)
                        total = sum(counts.values())
                        ratio = counts.get("HIT", 0) / max(1, total)
                    getattr(self.row(name, "hit ratio %"), server.name).append(ratio * 100)
                    getattr(
                        self.row(name, "cache MiB on disk at the end", False), server.name
                    ).append(disk_mib(server.cache_dir))
                    getattr(self.row(name, "MB/s"), server.name).append(load.mbps)
                    getattr(self.row(name, "p99 ms", False), server.name).append(load.p99_ms)
                    getattr(self.row(name, "p999 ms", False), server.name).append(load.p999_ms)

    def table(self) -> str:
        lines = [
            "| scenario | metric | edge | nginx | edge/nginx |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in self.rows:
            lines.append(
                f"| {row.scenario} | {row.metric} | {row.median('edge'):,.1f} | "
                f"{row.median('nginx'):,.1f} | {row.ratio():.2f} |"
            )
        return "\n".join(lines)


def soak(workdir: Path, origin: Origin, seconds: int, workers: int = 1) -> None:
    keys = [f"bench/seg/{i:03d}.ts" for i in range(64)]
    for key in keys:
        origin.put(key, random.randbytes(MIB))
    paths = signed_paths(keys)
    paths_file = workdir / "soak.paths"
    paths_file.write_text("\n".join(paths) + "\n")
    edge = start_edge(workdir, origin, "20G", workers)
    try:
        warm(edge.base, paths, MIB, MIB)
        samples = [edge.rss_each()]
        for _ in range(max(1, seconds // 30)):
            load = wrk(edge.base, paths_file, 32, 30, "uniform", 0, MIB)
            samples.append(edge.rss_each())
            each = ", ".join(f"{kib // 1024}" for kib in samples[-1].values())
            print(f"rss MiB per process [{each}], {load.mbps:,.0f} MB/s", flush=True)
        for pid in samples[1]:
            series = [sample.get(pid, 0) for sample in samples[1:]]
            first, last = series[0], series[-1]
            print(
                f"pid {pid} RSS over {seconds} s: start {first // 1024} MiB, end "
                f"{last // 1024} MiB, max {max(series) // 1024} MiB, "
                f"change {100 * (last - first) / max(1, first):+.1f}%"
            )
    finally:
        edge.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--scenarios", default="hot1m,hot16k,hot4m,cold,zipf,player")
    parser.add_argument("--big-mib", type=int, default=512, help="size of the large object")
    parser.add_argument("--soak", type=int, default=0, help="edge-only RSS soak, seconds")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per server")
    parser.add_argument(
        "--zipf-cache", default="64M", help="cache bound of both servers in the zipf scenario"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        sys.exit("bench: needs wrk and nginx (Debian: apt-get install wrk nginx-light)")
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    origin = Origin(workdir)
    try:
        if args.soak:
            soak(workdir, origin, args.soak, args.workers)
            return
        bench = Bench(workdir, origin, args.runs, args.duration, args.workers)
        wanted = set(args.scenarios.split(","))
        rng = random.Random(1)
        if "hot1m" in wanted:
            keys = [f"bench/seg/{i:03d}.ts" for i in range(64)]
            for key in keys:
                origin.put(key, rng.randbytes(MIB))
            bench.hot("hot1m", keys, MIB, 32, 0, lambda load: load.mbps, "MB/s")
        if "hot16k" in wanted:
            origin.put("bench/ranges.mp4", rng.randbytes(64 * MIB))
            bench.hot(
                "hot16k",
                ["bench/ranges.mp4"],
                64 * MIB,
                64,
                16 * 1024,
                lambda load: load.rps,
                "req/s",
            )
        big = args.big_mib * MIB
        if "hot4m" in wanted or "cold" in wanted:
            origin.put("bench/big.mp4", os.urandom(big))
        if "hot4m" in wanted:
            bench.hot("hot4m", ["bench/big.mp4"], big, 16, 4 * MIB, lambda load: load.mbps, "MB/s")
        if "cold" in wanted:
            bench.cold("bench/big.mp4", big)
        if "zipf" in wanted:
            keys = [f"bench/zipf/{i:03d}.ts" for i in range(200)]
            for key in keys:
                origin.put(key, rng.randbytes(MIB))
            bench.mixed("zipf", keys, MIB, args.zipf_cache)
        if "player" in wanted:
            keys = [f"bench/play/{i:02d}.mp4" for i in range(16)]
            for key in keys:
                origin.put(key, rng.randbytes(32 * MIB))
            bench.mixed("player", keys, 32 * MIB, "20G", "player", 2 * MIB)
        print()
        print(
            f"edge vs nginx, {args.workers} worker(s) each, medians of {args.runs} runs of "
            f"{args.duration} s (servers on CPU {server_cpus(args.workers)}, "
            f"wrk and origin on CPU {CLIENT_CPU})"
        )
        print(bench.table())
        for note in bench.notes:
            print(f"- {note}")
    finally:
        origin.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
