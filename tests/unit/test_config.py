from __future__ import annotations

from pathlib import Path

import pytest

from edge_cache.config import EdgeSettings, parse_listen, parse_size, read_env_file
from edge_cache.errors import ConfigError

BASE = {
    "WASABI_ENDPOINT": "http://127.0.0.1:9000",
    "WASABI_ACCESS_KEY_ID": "id",
    "WASABI_SECRET_ACCESS_KEY": "secret",
    "WASABI_BUCKET_PREVIEWS": "previews",
    "EDGE_SIGNING_KEY": "k" * 32,
}


def test_defaults() -> None:
    settings = EdgeSettings.from_env(BASE)
    assert settings.listen == ("127.0.0.1", 8080)
    assert settings.admin_listen == ("127.0.0.1", 9090)
    assert settings.slice_bytes == 4 << 20
    assert settings.clock_skew_s == 30
    assert settings.origin.timeout_s == 10


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("800G", 800 << 30),
        ("512M", 512 << 20),
        ("4MiB", 4 << 20),
        ("1048576", 1 << 20),
        ("2k", 2048),
    ],
)
def test_sizes(raw: str, value: int) -> None:
    assert parse_size("X", raw) == value


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"WASABI_ENDPOINT": ""}, "WASABI_ENDPOINT"),
        ({"WASABI_ENDPOINT": "ftp://x"}, "WASABI_ENDPOINT"),
        ({"WASABI_ENDPOINT": "http://x/bucket"}, "WASABI_ENDPOINT"),
        ({"WASABI_BUCKET_PREVIEWS": ""}, "WASABI_BUCKET_PREVIEWS"),
        ({"EDGE_CACHE_MAX_BYTES": "lots"}, "EDGE_CACHE_MAX_BYTES"),
        ({"EDGE_CACHE_MAX_BYTES": "1K"}, "EDGE_CACHE_MAX_BYTES"),
        ({"EDGE_SLICE_BYTES": "1K"}, "EDGE_SLICE_BYTES"),
        ({"EDGE_LISTEN": "nope"}, "EDGE_LISTEN"),
        ({"EDGE_ADMIN_LISTEN": "h:99999"}, "EDGE_ADMIN_LISTEN"),
        ({"EDGE_CLOCK_SKEW_S": "soon"}, "EDGE_CLOCK_SKEW_S"),
        ({"FETCH_TIMEOUT_MS": "-1"}, "FETCH_TIMEOUT_MS"),
        ({"EDGE_TRUSTED_PROXIES": "10.0.0.0/33"}, "EDGE_TRUSTED_PROXIES"),
        ({"EDGE_ADMIN_TOKEN": "short"}, "EDGE_ADMIN_TOKEN"),
        ({"EDGE_SIGNING_KEY": "short"}, "EDGE_SIGNING_KEY"),
        ({"RATE_LIMIT_WINDOW": "0"}, "RATE_LIMIT_WINDOW"),
    ],
)
def test_bad_values_name_the_variable_in_one_line(overrides: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        EdgeSettings.from_env({**BASE, **overrides})
    message = str(info.value)
    assert message.startswith(variable)
    assert "\n" not in message


def test_listen_forms() -> None:
    assert parse_listen("X", "0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("X", "[::1]:8080") == ("::1", 8080)


def test_env_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.env"
    path.write_text("# comment\n\nexport A=1\nB='two words'\nC=\"x=y\"\n")
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "x=y"}
    path.write_text("oops\n")
    with pytest.raises(ConfigError):
        read_env_file(path)
