from __future__ import annotations

import pytest

from control.config import ControlSettings, parse_api_keys
from edge_cache.errors import ConfigError

BASE = {
    "POSTGRES_URL": "postgresql://u@127.0.0.1/db",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "WASABI_ENDPOINT": "https://s3.wasabisys.com",
    "WASABI_ACCESS_KEY_ID": "a",
    "WASABI_SECRET_ACCESS_KEY": "b",
    "WASABI_BUCKET_STAGING": "staging",
    "WASABI_BUCKET_MASTERS": "masters",
    "WASABI_BUCKET_PREVIEWS": "previews",
    "CONTROL_API_KEYS": "ops:" + "k" * 24,
}


def test_valkey_url_alias_and_tls() -> None:
    env = {k: v for k, v in BASE.items() if k != "REDIS_URL"}
    settings = ControlSettings.from_env({**env, "VALKEY_URL": "rediss://valkey.example:25061/0"})
    assert settings.redis_url == "rediss://valkey.example:25061/0"


def test_edge_keys_are_needed_only_with_an_edge() -> None:
    assert ControlSettings.from_env(BASE).edge_keys is None
    with pytest.raises(ConfigError, match="EDGE_SIGNING_KEY"):
        ControlSettings.from_env({**BASE, "EDGE_PUBLIC_BASE": "https://edge.example.com"})
    settings = ControlSettings.from_env(
        {**BASE, "EDGE_PUBLIC_BASE": "https://edge.example.com/", "EDGE_SIGNING_KEY": "s" * 32}
    )
    assert settings.edge_public_base == "https://edge.example.com"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"POSTGRES_URL": ""}, "POSTGRES_URL"),
        ({"POSTGRES_URL": "mysql://x"}, "POSTGRES_URL"),
        ({"REDIS_URL": ""}, "REDIS_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"WASABI_BUCKET_MASTERS": ""}, "WASABI_BUCKET_MASTERS"),
        ({"CONTROL_API_KEYS": ""}, "CONTROL_API_KEYS"),
        ({"CONTROL_API_KEYS": "short"}, "CONTROL_API_KEYS"),
        ({"RL_PRESIGN_MAX": "many"}, "RL_PRESIGN_MAX"),
        ({"RL_PROMOTE_WINDOW": "0"}, "RL_PROMOTE_WINDOW"),
        ({"EDGE_PUBLIC_BASE": "ftp://edge"}, "EDGE_PUBLIC_BASE"),
        ({"PLAYBACK_TTL_MAX_S": "5"}, "PLAYBACK_TTL_MAX_S"),
    ],
)
def test_errors_name_the_variable(overrides: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        ControlSettings.from_env({**BASE, **overrides})
    assert str(info.value).startswith(variable)
    assert "\n" not in str(info.value)


def test_api_keys_are_kept_hashed() -> None:
    keys = parse_api_keys("ops:" + "a" * 24 + ", " + "b" * 30)
    assert [k.name for k in keys] == ["ops", "key2"]
    assert all(len(k.digest) == 32 for k in keys)
    assert "a" * 24 not in repr(keys)
    with pytest.raises(ConfigError):
        parse_api_keys(f"x:{'a' * 24},x:{'b' * 24}")
