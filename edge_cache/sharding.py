"""How N worker processes split one disk cache: ownership by key hash. Pure logic, no I/O.

Each object key has exactly one owner worker. Only the owner fetches the key's slices from the
origin, stores them, and evicts them, inside its share of EDGE_CACHE_MAX_BYTES; so no slice is
ever filled twice at once and the shares add up to the bound, with no cross-process lock on the
request path. Any worker serves hits straight from the owner's files; misses it asks the owner
for, over the owner's private socket (see peers.py).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Placement", "layout_root", "owner_of", "stale_layouts"]

_LAYOUT_PREFIX = "workers-"


def owner_of(key: str, workers: int) -> int:
    """The slot of the worker that owns `key` (stable across restarts for the same count)."""
    if workers == 1:
        return 0
    return zlib.crc32(key.encode()) % workers


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one worker process sits among its siblings."""

    slot: int
    workers: int
    run_dir: Path  # private sockets of every worker, named by slot

    def __post_init__(self) -> None:
        if not 0 <= self.slot < self.workers:
            raise ValueError(f"slot {self.slot} is not in 0..{self.workers - 1}")

    def socket_path(self, slot: int) -> Path:
        return self.run_dir / f"worker-{slot}.sock"

    def share_of(self, max_bytes: int) -> int:
        """This worker's part of the cache bound (the parts add up to at most `max_bytes`)."""
        return max_bytes // self.workers

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(s for s in range(self.workers) if s != self.slot)


def layout_root(cache_dir: Path, slot: int, workers: int) -> Path:
    """The directory a worker stores its slices under.

    One worker keeps the original single-process layout (the cache directory itself); N workers
    each get `workers-<N>/<slot>`, so a change of N never mixes owners in one directory.
    """
    if workers == 1:
        return cache_dir
    return cache_dir / f"{_LAYOUT_PREFIX}{workers}" / str(slot)


def stale_layouts(entries: list[str], workers: int) -> list[str]:
    """Names in the cache directory that belong to a layout for another worker count."""
    stale = [
        name
        for name in entries
        if name.startswith(_LAYOUT_PREFIX) and name != f"{_LAYOUT_PREFIX}{workers}"
    ]
    if workers != 1:
        stale.extend(name for name in entries if name in ("objects", "tmp"))
    return sorted(stale)
