"""Ownership and layout of a cache shared by several workers (pure logic)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from edge_cache.sharding import Placement, layout_root, owner_of, stale_layouts


def test_every_key_has_one_stable_owner_and_keys_spread_evenly() -> None:
    keys = [f"assets/a{n}/hls/seg_{n % 50:04d}.ts" for n in range(30_000)]
    owners = Counter(owner_of(key, 4) for key in keys)
    assert set(owners) == {0, 1, 2, 3}
    assert max(owners.values()) / min(owners.values()) < 1.1
    assert [owner_of(key, 4) for key in keys[:100]] == [owner_of(key, 4) for key in keys[:100]]
    assert {owner_of(key, 1) for key in keys[:100]} == {0}


def test_shares_add_up_to_no_more_than_the_bound() -> None:
    for workers in (1, 2, 3, 7):
        shares = [Placement(s, workers, Path("/run")).share_of(10**9 + 1) for s in range(workers)]
        assert sum(shares) <= 10**9 + 1
        assert min(shares) >= (10**9 + 1) // workers


def test_a_slot_outside_the_worker_count_is_refused() -> None:
    with pytest.raises(ValueError, match="slot 3"):
        Placement(3, 3, Path("/run"))
    assert Placement(1, 3, Path("/run")).peers == (0, 2)
    assert Placement(1, 3, Path("/run")).socket_path(2) == Path("/run/worker-2.sock")


def test_each_worker_count_has_its_own_layout() -> None:
    assert layout_root(Path("/c"), 0, 1) == Path("/c")
    assert layout_root(Path("/c"), 2, 4) == Path("/c/workers-4/2")
    names = ["objects", "tmp", "workers-2", "workers-4", "lost+found"]
    assert stale_layouts(names, 4) == ["objects", "tmp", "workers-2"]
    assert stale_layouts(names, 1) == ["workers-2", "workers-4"]
