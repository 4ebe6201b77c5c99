"""Slice arithmetic: which fixed-size slices of an object cover a byte range."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["SlicePiece", "slice_count", "slice_length", "slice_pieces", "slice_spans"]


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


def slice_spans(start: int, end: int, slice_bytes: int) -> list[tuple[int, int, int]]:
    """(slice index, offset in the slice, byte count) for each slice covering the inclusive
    byte range [start, end], in order. Plain tuples: the hit path calls this per request."""
    spans = []
    position = start
    while position <= end:
        index, offset = divmod(position, slice_bytes)
        count = min(slice_bytes - offset, end - position + 1)
        spans.append((index, offset, count))
        position += count
    return spans


def slice_pieces(start: int, end: int, slice_bytes: int) -> Iterator[SlicePiece]:
    """The pieces of slices that cover the inclusive byte range [start, end], in order."""
    for index, offset, count in slice_spans(start, end, slice_bytes):
        yield SlicePiece(index, offset, offset + count)
