"""Range and conditional rules; range cases mirror nginx's range.t / range_if_range.t."""

from __future__ import annotations

import pytest

from edge_cache.httpspec import (
    ByteRange,
    Full,
    Partial,
    Precondition,
    Unsatisfiable,
    Validators,
    evaluate_preconditions,
    http_date,
    if_range_holds,
    multipart_layout,
    parse_range,
)

R = ByteRange


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, Full()),
        ("bytes=0-8", Partial((R(0, 8),))),
        ("bytes=-10", Partial((R(990, 999),))),
        ("bytes=990-", Partial((R(990, 999),))),
        ("bytes=990-1990", Partial((R(990, 999),))),
        ("bytes=0-10001", Partial((R(0, 999),))),
        ("bytes=-2000", Partial((R(0, 999),))),
        ("bytes=100000-", Unsatisfiable()),
        ("bytes=1000-1000", Unsatisfiable()),
        ("bytes=-0", Unsatisfiable()),
        ("bytes=0-9, -10, 10-19", Partial((R(0, 9), R(990, 999), R(10, 19)))),
        ("bytes=0-9, 100000-", Partial((R(0, 9),))),
        ("bytes=0-9,,20-29", Partial((R(0, 9), R(20, 29)))),
        ("BYTES=0-0", Partial((R(0, 0),))),
        ("bytes = 0-0", Partial((R(0, 0),))),
        # overlapping parts are coalesced (RFC 9110 §14.3), never amplified
        ("bytes=0-99, 50-149", Partial((R(0, 149),))),
        ("bytes=200-299, 0-99, 90-110", Partial((R(0, 110), R(200, 299)))),
        ("bytes=0-0,0-0,0-0", Partial((R(0, 0),))),
        # parts adding up to more than the body: the whole body instead
        ("bytes=0-599, 500-999, -600", Full()),
        # invalid headers are ignored
        ("bytes=5-4", Full()),
        ("bytes=abc", Full()),
        ("bytes=", Full()),
        ("bytes=-", Full()),
        ("items=0-5", Full()),
        ("0-5", Full()),
        ("bytes=0-5,x", Full()),
        ("bytes=1-2-3", Full()),
        ("bytes=+1-2", Full()),
    ],
)
def test_parse_range(header: str | None, expected: object) -> None:
    assert parse_range(header, 1000, max_ranges=16) == expected


def test_too_many_ranges_is_the_whole_body() -> None:
    header = "bytes=" + ",".join(f"{i * 10}-{i * 10}" for i in range(17))
    assert parse_range(header, 1000, max_ranges=16) == Full()
    assert isinstance(parse_range(header, 1000, max_ranges=17), Partial)


def test_empty_representation_ignores_range() -> None:
    assert parse_range("bytes=0-0", 0, 16) == Full()


def test_multipart_layout_frames_parts_exactly() -> None:
    layout = multipart_layout((R(0, 1), R(5, 5)), 10, "video/mp4", "B")
    body = b"0123456789"
    framed = b"".join(head + body[r.start : r.end + 1] for head, r in layout.parts) + layout.tail
    assert framed == (
        b"--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-1/10\r\n\r\n01"
        b"\r\n--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 5-5/10\r\n\r\n5"
        b"\r\n--B--\r\n"
    )
    assert layout.content_length == len(framed)
    assert layout.content_type == "multipart/byteranges; boundary=B"


ETAG = '"abc"'
LM = 1_700_000_000
V = Validators(ETAG, LM)
BEFORE, AT, AFTER = http_date(LM - 60), http_date(LM), http_date(LM + 60)


def pre(**headers: str) -> Precondition:
    fields = ("if_match", "if_unmodified_since", "if_none_match", "if_modified_since")
    return evaluate_preconditions(**{f: headers.get(f) for f in fields}, validators=V)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Precondition.PROCEED),
        ({"if_none_match": ETAG}, Precondition.NOT_MODIFIED),
        ({"if_none_match": 'W/"abc"'}, Precondition.NOT_MODIFIED),  # weak comparison
        ({"if_none_match": '"x", "abc"'}, Precondition.NOT_MODIFIED),
        ({"if_none_match": "*"}, Precondition.NOT_MODIFIED),
        ({"if_none_match": '"x"'}, Precondition.PROCEED),
        ({"if_modified_since": AT}, Precondition.NOT_MODIFIED),
        ({"if_modified_since": AFTER}, Precondition.NOT_MODIFIED),
        ({"if_modified_since": BEFORE}, Precondition.PROCEED),
        ({"if_modified_since": "garbage"}, Precondition.PROCEED),
        # If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3)
        ({"if_none_match": '"x"', "if_modified_since": AFTER}, Precondition.PROCEED),
        ({"if_match": ETAG}, Precondition.PROCEED),
        ({"if_match": '"x"'}, Precondition.FAILED),
        ({"if_match": 'W/"abc"'}, Precondition.FAILED),  # strong comparison
        ({"if_match": "*"}, Precondition.PROCEED),
        ({"if_unmodified_since": BEFORE}, Precondition.FAILED),
        ({"if_unmodified_since": AT}, Precondition.PROCEED),
        # If-Match wins over If-Unmodified-Since (RFC 9110 §13.2.2)
        ({"if_match": ETAG, "if_unmodified_since": BEFORE}, Precondition.PROCEED),
        ({"if_match": '"x"', "if_none_match": ETAG}, Precondition.FAILED),
    ],
)
def test_preconditions(headers: dict[str, str], expected: Precondition) -> None:
    assert pre(**headers) is expected


@pytest.mark.parametrize(
    ("if_range", "holds"),
    [
        (None, True),
        (ETAG, True),
        ('"other"', False),
        ('W/"abc"', False),
        (AT, True),
        (BEFORE, False),
        (AFTER, False),
        ("not a date", False),
    ],
)
def test_if_range(if_range: str | None, holds: bool) -> None:
    assert if_range_holds(if_range, V) is holds
