"""HTTP range and conditional-request rules (RFC 9110 §13 and §14), as pure functions.

Everything here takes header values and the representation's metadata and returns a decision;
the server turns decisions into bytes on the wire.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from enum import Enum

__all__ = [
    "ByteRange",
    "Full",
    "MultipartLayout",
    "Partial",
    "Precondition",
    "RangeDecision",
    "Unsatisfiable",
    "Validators",
    "evaluate_preconditions",
    "http_date",
    "if_range_holds",
    "multipart_layout",
    "parse_http_date",
    "parse_range",
]

_RANGE_SPEC = re.compile(r"(\d*)-(\d*)")
_ENTITY_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range, already clamped to the representation."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


@dataclass(frozen=True, slots=True)
class Full:
    """Serve the whole representation with 200 (no Range, or a Range that must be ignored)."""


@dataclass(frozen=True, slots=True)
class Partial:
    """Serve 206 with these ranges: one means a single part, several mean multipart/byteranges."""

    ranges: tuple[ByteRange, ...]


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """Answer 416 with `Content-Range: bytes */size`."""


RangeDecision = Full | Partial | Unsatisfiable


def parse_range(header: str | None, size: int, max_ranges: int) -> RangeDecision:
    """Decide how to answer a Range header for a representation of `size` bytes (RFC 9110 §14.2).

    A syntactically invalid header is ignored (200). Ranges are clamped to the representation;
    unsatisfiable parts of a multi-range request are dropped, and the whole is 416 only when no
    part is satisfiable. To avoid amplification, overlapping ranges are coalesced (§14.3 allows
    it), and a set of more than `max_ranges` parts, or one that adds up to more than the whole
    body, is answered with the whole body instead.
    """
    if header is None or size == 0:
        return Full()
    unit, sep, spec_list = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return Full()
    specs = [spec.strip() for spec in spec_list.split(",")]
    # RFC 9110 §5.6.1: empty list elements are allowed and ignored, but one is needed.
    specs = [spec for spec in specs if spec]
    if not specs:
        return Full()
    satisfiable: list[ByteRange] = []
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return Full()
        first, last = match.groups()
        if first:
            start = int(first)
            if last and int(last) < start:
                return Full()  # a-b with b < a makes the whole header invalid (§14.1.1)
            if start >= size:
                continue
            end = min(int(last), size - 1) if last else size - 1
        elif last:
            suffix = int(last)
            if suffix == 0:
                continue
            start, end = max(size - suffix, 0), size - 1
        else:
            return Full()  # "-" alone
        satisfiable.append(ByteRange(start, end))
    if not satisfiable:
        return Unsatisfiable()
    if len(satisfiable) > max_ranges:
        return Full()
    if len(satisfiable) > 1 and sum(r.length for r in satisfiable) > size:
        return Full()
    return Partial(tuple(_coalesce_if_overlapping(satisfiable)))


def _coalesce_if_overlapping(ranges: list[ByteRange]) -> list[ByteRange]:
    """Keep request order unless parts overlap; then merge them in ascending order."""
    if len(ranges) == 1:
        return ranges
    ordered = sorted(ranges, key=lambda r: r.start)
    if all(a.end < b.start for a, b in itertools.pairwise(ordered)):
        return ranges
    merged = [ordered[0]]
    for current in ordered[1:]:
        last = merged[-1]
        if current.start <= last.end + 1:
            merged[-1] = ByteRange(last.start, max(last.end, current.end))
        else:
            merged.append(current)
    return merged


@dataclass(frozen=True, slots=True)
class MultipartLayout:
    """The framing of a multipart/byteranges body: a head before each part, and a tail."""

    boundary: str
    parts: tuple[tuple[bytes, ByteRange], ...]
    tail: bytes

    @property
    def content_length(self) -> int:
        return sum(len(head) + part.length for head, part in self.parts) + len(self.tail)

    @property
    def content_type(self) -> str:
        return f"multipart/byteranges; boundary={self.boundary}"


def multipart_layout(
    ranges: tuple[ByteRange, ...], size: int, content_type: str, boundary: str
) -> MultipartLayout:
    """Frame parts per RFC 9110 §14.6; each head starts with the CRLF ending the previous part."""
    parts = []
    for index, byte_range in enumerate(ranges):
        head = (
            ("\r\n" if index else "")
            + f"--{boundary}\r\n"
            + f"Content-Type: {content_type}\r\n"
            + f"Content-Range: {byte_range.content_range(size)}\r\n\r\n"
        )
        parts.append((head.encode("latin-1"), byte_range))
    tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
    return MultipartLayout(boundary=boundary, parts=tuple(parts), tail=tail)


@dataclass(frozen=True, slots=True)
class Validators:
    """The representation's validators: a strong ETag (quoted) and Last-Modified (Unix s)."""

    etag: str | None
    last_modified: int | None


class Precondition(Enum):
    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"  # 304
    FAILED = "failed"  # 412


def parse_http_date(value: str) -> int | None:
    """Unix seconds of an HTTP-date, or None when it is not a valid date (then it is ignored)."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return int(parsed.timestamp())


def http_date(unix_s: int) -> str:
    return format_datetime(datetime.fromtimestamp(unix_s, UTC), usegmt=True)


def _entity_tags(header: str) -> list[tuple[bool, str]] | None:
    """Parse an entity-tag list into (weak, opaque-tag) pairs; None when it is malformed."""
    tags: list[tuple[bool, str]] = []
    pos = 0
    header = header.strip()
    while pos < len(header):
        match = _ENTITY_TAG.match(header, pos)
        if match is None:
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        pos = match.end()
    return tags


def _strong_match(header: str, etag: str | None) -> bool:
    if header.strip() == "*":
        return etag is not None
    tags = _entity_tags(header) or []
    return etag is not None and any(not weak and tag == etag for weak, tag in tags)


def _weak_match(header: str, etag: str | None) -> bool:
    if header.strip() == "*":
        return etag is not None
    tags = _entity_tags(header) or []
    opaque = etag.removeprefix("W/") if etag else None
    return opaque is not None and any(tag == opaque for _, tag in tags)


def evaluate_preconditions(
    *,
    if_match: str | None,
    if_unmodified_since: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
    validators: Validators,
) -> Precondition:
    """RFC 9110 §13.2.2 evaluation order, for GET and HEAD."""
    if if_match is not None:
        if not _strong_match(if_match, validators.etag):
            return Precondition.FAILED
    elif if_unmodified_since is not None and validators.last_modified is not None:
        since = parse_http_date(if_unmodified_since)
        if since is not None and validators.last_modified > since:
            return Precondition.FAILED
    if if_none_match is not None:
        if _weak_match(if_none_match, validators.etag):
            return Precondition.NOT_MODIFIED
    elif if_modified_since is not None and validators.last_modified is not None:
        since = parse_http_date(if_modified_since)
        if since is not None and validators.last_modified <= since:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def if_range_holds(if_range: str | None, validators: Validators) -> bool:
    """RFC 9110 §13.1.5: True when the Range header may be honoured."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        # Strong comparison: a weak tag never matches.
        return (
            validators.etag is not None and value == validators.etag and not value.startswith("W/")
        )
    since = parse_http_date(value)
    return since is not None and validators.last_modified == since
