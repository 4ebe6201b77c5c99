"""Slice arithmetic: which fixed-size slices of an object cover a byte range."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["SlicePiece", "slice_count", "slice_length", "slice_pieces"]


@dataclass(frozen=True, slots=True)
class SlicePiece:
    """Bytes [`start`, `end`) within slice `index` (offsets relative to the slice)."""

    index: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def slice_count(size: int, slice_bytes: int) -> int:
    return -(-size // slice_bytes)


def slice_length(index: int, size: int, slice_bytes: int) -> int:
    """Length of slice `index`; the last slice of an object may be short."""
    return min(slice_bytes, size - index * slice_bytes)


def slice_pieces(start: int, end: int, slice_bytes: int) -> Iterator[SlicePiece]:
    """The pieces of slices that cover the inclusive byte range [start, end], in order."""
    position = start
    while position <= end:
        index, offset = divmod(position, slice_bytes)
        piece_end = min(slice_bytes, end - index * slice_bytes + 1)
        yield SlicePiece(index, offset, piece_end)
        position = index * slice_bytes + piece_end
