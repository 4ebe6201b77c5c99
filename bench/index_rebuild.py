"""How long the edge takes to rebuild its cache index from disk at start-up.

Lays out N slices (10 per object, tiny files: the cost is in the file count, not the bytes) the
way the edge stores them, then times `EdgeCache.start()` (directory walk, length checks, LRU
load) several times and prints the median. Local disk only; no network.

    python bench/index_rebuild.py --slices 100000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from edge_cache.cache import EdgeCache
from edge_cache.config import OriginSettings
from edge_cache.index import CacheIndex, SliceId
from edge_cache.metrics import EdgeMetrics
from edge_cache.origin import ObjectMeta, Origin
from edge_cache.store import DiskStore

SLICE_BYTES = 64
PER_OBJECT = 10


def lay_out(root: Path, slices: int) -> None:
    store = DiskStore(root, SLICE_BYTES)
    store.scan()  # creates the directories
    payload = b"x" * SLICE_BYTES
    for number in range(slices // PER_OBJECT):
        meta = ObjectMeta(
            key=f"assets/a{number}/preview.mp4",
            etag=f'"{number:032x}"',
            size=SLICE_BYTES * PER_OBJECT,
            content_type="video/mp4",
            last_modified=1_700_000_000,
        )
        store.write_meta(meta)
        for index in range(PER_OBJECT):
            store.write_slice(SliceId(meta.object_id, index), payload)


async def rebuild(root: Path) -> tuple[float, int]:
    origin = Origin(  # never contacted: start() only reads the disk
        OriginSettings("http://127.0.0.1:9", "us-east-1", "x", "y", "bucket", 1.0, 0)
    )
    index = CacheIndex(max_bytes=1 << 40)
    cache = EdgeCache(
        store=DiskStore(root, SLICE_BYTES),
        origin=origin,
        index=index,
        metrics=EdgeMetrics(CollectorRegistry()),
        slice_bytes=SLICE_BYTES,
        meta_ttl_s=60,
        negative_ttl_s=10,
        retries=0,
        prefetch_max_bytes=0,
    )
    started = time.perf_counter()
    await cache.start()
    return time.perf_counter() - started, index.slice_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-rebuild-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        lay_out(root, args.slices)
        print(f"laid out {args.slices} slices in {time.perf_counter() - started:.1f} s")
        timings = []
        for run in range(args.runs):
            seconds, count = asyncio.run(rebuild(root))
            assert count == args.slices, (count, args.slices)
            timings.append(seconds)
            print(f"run {run + 1}: {seconds:.3f} s ({count} slices)")
        print(f"median rebuild: {statistics.median(timings):.3f} s for {args.slices} slices")


if __name__ == "__main__":
    main()
