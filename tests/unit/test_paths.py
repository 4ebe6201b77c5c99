from __future__ import annotations

import pytest

from edge_cache.errors import BadRequest
from edge_cache.paths import check_object_key, parse_target


@pytest.mark.parametrize(
    ("raw", "path", "token", "in_path"),
    [
        ("/assets/a1/p.mp4?token=abc", "/assets/a1/p.mp4", "abc", False),
        ("/assets/a1/p.mp4?x=1&token=abc&y=2", "/assets/a1/p.mp4", "abc", False),
        ("/t/abc/assets/a1/hls/i.m3u8", "/assets/a1/hls/i.m3u8", "abc", True),
        ("/assets/a1/p.mp4", "/assets/a1/p.mp4", None, False),
        ("/assets/a%20b/%C3%A9.mp4", "/assets/a b/é.mp4", None, False),
        ("/assets/%25zz", "/assets/%zz", None, False),
    ],
)
def test_targets(raw: str, path: str, token: str | None, in_path: bool) -> None:
    target = parse_target(raw)
    assert (target.object_path, target.token, target.token_in_path) == (path, token, in_path)
    assert target.key == path[1:]


@pytest.mark.parametrize(
    "raw",
    [
        "/assets/a1/../x",
        "/assets/./x",
        "/assets/%2e%2E/x",
        "/assets/a%2fb",
        "/assets/a%2Fb",
        "/assets/%252e%252e/x",
        "/assets/%2541",
        "/assets//x",
        "/assets/x/",
        "/assets/a\\b",
        "/assets/a%5cb",
        "/assets/a%00b",
        "/assets/a\x01b",
        "/assets/a%0ab",
        "/assets/a%7fb",
        "/assets/%zz",
        "/assets/%4",
        "/assets/%ff",
        "assets/no-leading-slash",
        "/" + "a" * 1024,
        "/t/",
        "/t/tok",
        "/t//assets/x",
        "/x?token=a&token=b",
        "/t/a/x?token=b",
    ],
)
def test_bad_targets_are_400(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_target(raw)


def test_path_of_exactly_1024_bytes_is_accepted() -> None:
    raw = "/" + "a" * 1023
    assert parse_target(raw).object_path == raw


@pytest.mark.parametrize("key", ["assets/a1/p.mp4", "a"])
def test_good_keys(key: str) -> None:
    assert check_object_key(key) == key


@pytest.mark.parametrize("key", ["", "/lead", "a//b", "a/../b", "trail/", "a\\b", "a%2Fb", "a\nb"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(BadRequest):
        check_object_key(key)
