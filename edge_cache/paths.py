"""Request-target parsing: where the token is, and the object path it asks for.

Pure logic. Implements "Where the token goes" and "The object path" of the URL-signing contract:
every rejection here is a 400, decided before any token or ACL check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

from .errors import BadRequest

__all__ = ["MAX_OBJECT_PATH_BYTES", "Target", "check_object_key", "parse_target"]

MAX_OBJECT_PATH_BYTES = 1024
PATH_TOKEN_PREFIX = "/t/"  # noqa: S105 - a URL prefix, not a secret

_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SLASH = re.compile(r"%2[Ff]")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True, slots=True)
class Target:
    """What a request asks for: the decoded object path and at most one token."""

    object_path: str
    token: str | None
    token_in_path: bool

    @property
    def key(self) -> str:
        """The bucket key: the object path without its leading slash."""
        return self.object_path[1:]


def parse_target(raw_target: str) -> Target:
    """Split a raw request target (path and query, still percent-encoded) into a Target."""
    raw_path, _, raw_query = raw_target.partition("?")
    query_token = _query_token(raw_query)
    path_token: str | None = None
    if raw_path.startswith(PATH_TOKEN_PREFIX):
        path_token, slash, rest = raw_path[len(PATH_TOKEN_PREFIX) :].partition("/")
        if not path_token or not slash:
            raise BadRequest("bad_path")
        raw_path = "/" + rest
    if path_token is not None and query_token is not None:
        raise BadRequest("two_tokens")
    return Target(
        object_path=decode_object_path(raw_path),
        token=path_token if path_token is not None else query_token,
        token_in_path=path_token is not None,
    )


def _query_token(raw_query: str) -> str | None:
    found: str | None = None
    for pair in raw_query.split("&"):
        name, _, value = pair.partition("=")
        if name != "token":
            continue
        if found is not None:
            raise BadRequest("two_tokens")
        found = unquote(value)
    return found


def decode_object_path(raw_path: str) -> str:
    """Percent-decode once and apply the contract's hygiene rules."""
    if not raw_path.startswith("/"):
        raise BadRequest("bad_path")
    if _FORBIDDEN_CHARS.search(raw_path) or _BAD_ESCAPE.search(raw_path):
        raise BadRequest("bad_path")
    if _ENCODED_SLASH.search(raw_path):
        raise BadRequest("bad_path")
    try:
        decoded = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("bad_path") from exc
    # A '%' escape surviving one decode means the client double-encoded (e.g. %252e).
    if _ESCAPE.search(decoded) or _FORBIDDEN_CHARS.search(decoded):
        raise BadRequest("bad_path")
    if len(decoded.encode("utf-8")) > MAX_OBJECT_PATH_BYTES:
        raise BadRequest("bad_path")
    _check_segments(decoded)
    return decoded


def _check_segments(path: str) -> None:
    for segment in path[1:].split("/"):
        if segment in ("", ".", ".."):
            raise BadRequest("bad_path")


def check_object_key(key: str) -> str:
    """Validate a bucket key given directly (admin API): the same rules as a decoded path."""
    path = "/" + key
    if (
        _FORBIDDEN_CHARS.search(path)
        or _ESCAPE.search(path)
        or len(path.encode("utf-8")) > MAX_OBJECT_PATH_BYTES
    ):
        raise BadRequest("bad_key")
    try:
        _check_segments(path)
    except BadRequest as exc:
        raise BadRequest("bad_key") from exc
    return key
