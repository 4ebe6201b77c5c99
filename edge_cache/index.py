"""Cache bookkeeping: which slices are on disk, how many bytes they take, what to evict.

Pure logic ("decide, then do"): methods return the slices the caller must delete; no file is
touched here. Space for a fill is reserved before the fill starts, so the bytes on disk (finished
slices plus fills in flight) never exceed the bound, however many fills run at once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Admission", "CacheIndex", "SliceId"]


class SliceId(NamedTuple):
    """Slice `index` of one object version (`object_id` names key + ETag).

    A named tuple, not a frozen dataclass: every hit hashes a few of these, and a tuple's
    hash and equality run in C where a dataclass's run in Python."""

    object_id: str
    index: int  # type: ignore[assignment]  # shadows tuple.index(), which nothing here calls


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of a reservation: admitted or not, and the slices to delete to make room."""

    admitted: bool
    evicted: tuple[SliceId, ...] = ()


@dataclass
class CacheIndex:
    """An LRU index of resident slices plus reservations for slices being filled."""

    max_bytes: int
    _resident: OrderedDict[SliceId, int] = field(default_factory=OrderedDict)
    _reserved: dict[SliceId, int] = field(default_factory=dict)
    _by_object: dict[str, set[int]] = field(default_factory=dict)
    resident_bytes: int = 0
    reserved_bytes: int = 0

    @property
    def used_bytes(self) -> int:
        return self.resident_bytes + self.reserved_bytes

    @property
    def slice_count(self) -> int:
        return len(self._resident)

    def __contains__(self, slice_id: SliceId) -> bool:
        return slice_id in self._resident

    def touch(self, slice_id: SliceId) -> bool:
        """Mark a slice as just used; False when it is not resident."""
        if slice_id not in self._resident:
            return False
        self._resident.move_to_end(slice_id)
        return True

    def reserve(self, slice_id: SliceId, size: int) -> Admission:
        """Reserve room for a slice about to be filled, evicting least-recently-used slices.

        Not admitted (and nothing evicted) when the slice is resident or reserved already, or
        when it cannot fit even after evicting every resident slice.
        """
        if slice_id in self._resident or slice_id in self._reserved or size > self.max_bytes:
            return Admission(admitted=False)
        overflow = self.used_bytes + size - self.max_bytes
        if overflow > self.resident_bytes:
            return Admission(admitted=False)
        evicted: list[SliceId] = []
        while overflow > 0:
            victim, victim_size = self._resident.popitem(last=False)
            self._forget(victim, victim_size)
            evicted.append(victim)
            overflow -= victim_size
        self._reserved[slice_id] = size
        self.reserved_bytes += size
        return Admission(admitted=True, evicted=tuple(evicted))

    def commit(self, slice_id: SliceId) -> None:
        """The reserved slice is now on disk: make it resident and most recently used."""
        size = self._reserved.pop(slice_id)
        self.reserved_bytes -= size
        self._add(slice_id, size)

    def release(self, slice_id: SliceId) -> None:
        """Give back a reservation whose fill failed or was purged."""
        size = self._reserved.pop(slice_id, None)
        if size is not None:
            self.reserved_bytes -= size

    def load(self, slice_id: SliceId, size: int) -> tuple[SliceId, ...]:
        """Add a slice found on disk at start-up (oldest first); returns slices over the bound."""
        self._add(slice_id, size)
        evicted: list[SliceId] = []
        while self.used_bytes > self.max_bytes:
            victim, victim_size = self._resident.popitem(last=False)
            self._forget(victim, victim_size)
            evicted.append(victim)
        return tuple(evicted)

    def discard(self, slice_id: SliceId) -> None:
        """Forget one resident slice (its file is already gone)."""
        size = self._resident.pop(slice_id, None)
        if size is not None:
            self._forget(slice_id, size)

    def has_object(self, object_id: str) -> bool:
        return object_id in self._by_object

    def remove_object(self, object_id: str) -> tuple[SliceId, ...]:
        """Drop every resident slice of an object version; returns them for deletion."""
        indices = self._by_object.get(object_id, set())
        removed = tuple(SliceId(object_id, i) for i in sorted(indices))
        for slice_id in removed:
            self._forget(slice_id, self._resident.pop(slice_id))
        return removed

    def _add(self, slice_id: SliceId, size: int) -> None:
        self._resident[slice_id] = size
        self.resident_bytes += size
        self._by_object.setdefault(slice_id.object_id, set()).add(slice_id.index)

    def _forget(self, slice_id: SliceId, size: int) -> None:
        self.resident_bytes -= size
        indices = self._by_object.get(slice_id.object_id)
        if indices is not None:
            indices.discard(slice_id.index)
            if not indices:
                del self._by_object[slice_id.object_id]
