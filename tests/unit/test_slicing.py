from __future__ import annotations

from edge_cache.slicing import SlicePiece, slice_count, slice_length, slice_pieces, slice_spans


def test_pieces_cover_a_range_across_slices() -> None:
    assert list(slice_pieces(5, 24, 10)) == [
        SlicePiece(0, 5, 10),
        SlicePiece(1, 0, 10),
        SlicePiece(2, 0, 5),
    ]


def test_spans_are_the_hit_paths_form_of_the_same_pieces() -> None:
    assert slice_spans(5, 24, 10) == [(0, 5, 5), (1, 0, 10), (2, 0, 5)]
    assert slice_spans(12, 13, 10) == [(1, 2, 2)]
    assert slice_spans(0, 9, 10) == [(0, 0, 10)]


def test_range_inside_one_slice() -> None:
    assert list(slice_pieces(12, 13, 10)) == [SlicePiece(1, 2, 4)]


def test_every_byte_is_covered_exactly_once() -> None:
    for start in range(0, 40):
        for end in range(start, 40):
            covered = [
                p.index * 7 + offset
                for p in slice_pieces(start, end, 7)
                for offset in range(p.start, p.end)
            ]
            assert covered == list(range(start, end + 1))


def test_counts_and_short_last_slice() -> None:
    assert slice_count(0, 10) == 0
    assert slice_count(25, 10) == 3
    assert [slice_length(i, 25, 10) for i in range(3)] == [10, 10, 5]
