from __future__ import annotations

import random

from edge_cache.index import CacheIndex, SliceId


def sid(name: str, index: int = 0) -> SliceId:
    return SliceId(name, index)


def test_reserve_commit_and_lru_eviction_order() -> None:
    index = CacheIndex(max_bytes=300)
    for name in "abc":
        assert index.reserve(sid(name), 100).admitted
        index.commit(sid(name))
    assert index.touch(sid("a"))  # a is now the most recently used
    admission = index.reserve(sid("d"), 100)
    assert admission.admitted
    assert admission.evicted == (sid("b"),)
    index.commit(sid("d"))
    assert sid("b") not in index
    assert index.used_bytes == 300


def test_reservations_count_against_the_bound_and_are_not_evicted() -> None:
    index = CacheIndex(max_bytes=250)
    assert index.reserve(sid("a"), 100).admitted
    assert index.reserve(sid("b"), 100).admitted
    refused = index.reserve(sid("c"), 100)
    assert not refused.admitted
    assert refused.evicted == ()
    index.release(sid("a"))
    assert index.reserve(sid("c"), 100).admitted
    assert index.used_bytes == 200


def test_duplicate_and_oversized_reservations_are_refused() -> None:
    index = CacheIndex(max_bytes=100)
    assert index.reserve(sid("a"), 50).admitted
    assert not index.reserve(sid("a"), 50).admitted
    index.commit(sid("a"))
    assert not index.reserve(sid("a"), 50).admitted
    assert not index.reserve(sid("b"), 101).admitted


def test_remove_object_drops_all_its_slices() -> None:
    index = CacheIndex(max_bytes=1000)
    for i in range(3):
        index.reserve(sid("a", i), 10)
        index.commit(sid("a", i))
    index.reserve(sid("b"), 10)
    index.commit(sid("b"))
    assert index.remove_object("a") == (sid("a", 0), sid("a", 1), sid("a", 2))
    assert not index.has_object("a")
    assert index.has_object("b")
    assert index.used_bytes == 10


def test_load_keeps_the_newest_within_the_bound() -> None:
    index = CacheIndex(max_bytes=200)
    evicted = [e for name in "abc" for e in index.load(sid(name), 100)]
    assert evicted == [sid("a")]
    assert index.used_bytes == 200


def test_random_operations_never_exceed_the_bound() -> None:
    rng = random.Random(3)
    index = CacheIndex(max_bytes=1000)
    reserved: set[SliceId] = set()
    resident: set[SliceId] = set()
    for step in range(5000):
        slice_id = sid(f"o{rng.randrange(40)}", rng.randrange(4))
        action = rng.random()
        if action < 0.5:
            admission = index.reserve(slice_id, rng.randrange(1, 200))
            resident -= set(admission.evicted)
            if admission.admitted:
                reserved.add(slice_id)
        elif action < 0.8 and reserved:
            done = reserved.pop()
            index.commit(done)
            resident.add(done)
        elif reserved:
            index.release(reserved.pop())
        else:
            index.touch(slice_id)
        assert index.used_bytes <= 1000, step
        assert {s for s in resident if s in index} == resident
