from __future__ import annotations

import base64
import json

import pytest

from edge_cache.errors import ConfigError
from edge_cache.signing import (
    MAX_TOKEN_CHARS,
    DenyReason,
    KeyRing,
    TokenDenied,
    Verifier,
    acl_admits,
    decode_token,
    sign_token,
)

SECRET = "s" * 32
KEYS = KeyRing.from_env({"EDGE_SIGNING_KEY": SECRET})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def denied(token: str, keys: KeyRing = KEYS) -> DenyReason:
    with pytest.raises(TokenDenied) as info:
        decode_token(token, keys)
    return info.value.deny_reason


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "EDGE_SIGNING_KEY or EDGE_SIGNING_KEYS must be set"),
        ({"EDGE_SIGNING_KEY": "short"}, "EDGE_SIGNING_KEY: a secret is 5 bytes"),
        ({"EDGE_SIGNING_KEYS": "k1:" + "x" * 31}, "EDGE_SIGNING_KEYS: a secret is 31 bytes"),
        ({"EDGE_SIGNING_KEYS": "nocolon"}, "EDGE_SIGNING_KEYS: each entry must be kid:secret"),
        ({"EDGE_SIGNING_KEYS": f"a:{SECRET},a:{SECRET}"}, "appears twice"),
    ],
)
def test_bad_key_configuration_is_one_line_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing.from_env(env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_single_key_serves_tokens_without_kid_and_kid_default() -> None:
    plain = sign_token(SECRET.encode(), {"alg": "HS256"}, {"exp": 10, "acl": "/a"})
    named = sign_token(
        SECRET.encode(), {"alg": "HS256", "kid": "default"}, {"exp": 10, "acl": "/a"}
    )
    assert decode_token(plain, KEYS).acl == ("/a",)
    assert decode_token(named, KEYS).acl == ("/a",)
    other = sign_token(SECRET.encode(), {"alg": "HS256", "kid": "k1"}, {"exp": 10, "acl": "/a"})
    assert denied(other) is DenyReason.UNKNOWN_KID


def test_verifier_signs_with_the_first_key_of_the_set() -> None:
    keys = KeyRing.from_env({"EDGE_SIGNING_KEYS": f"new:{'n' * 32},old:{'o' * 32}"})
    verifier = Verifier(keys, 0)
    token = verifier.sign("/assets/*", exp=100)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["kid"] == "new"
    assert verifier.verify(token, "/assets/x", "127.0.0.1", now=50).exp == 100


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        b64(b"[]") + "." + b64(b"{}") + ".x",
        b64(b'{"alg":"HS256"}') + ".not json!." + "x",
        b64(b"\xff\xfe") + "." + b64(b"{}") + ".x",
        b64(b'{"alg":"hs256"}') + "." + b64(b'{"exp":1,"acl":"/a"}') + ".x",
        b64(b'{"alg":"HS256","kid":7}') + "." + b64(b'{"exp":1,"acl":"/a"}') + ".x",
        "a" * (MAX_TOKEN_CHARS + 1),
    ],
)
def test_malformed_tokens(token: str) -> None:
    assert denied(token) is DenyReason.MALFORMED


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 1.5, "acl": "/a"},
        {"exp": True, "acl": "/a"},
        {"exp": 10, "acl": []},
        {"exp": 10, "acl": ["/a", 3]},
        {"exp": 10, "acl": {"x": 1}},
        {"exp": 10, "acl": "/a", "nbf": "5"},
        {"exp": 10, "acl": "/a", "ip": "not-an-ip"},
        {"exp": 10, "acl": "/a", "ip": 167772161},
        {"acl": "/a"},
    ],
)
def test_claims_of_the_wrong_type_are_malformed(claims: dict[str, object]) -> None:
    token = sign_token(SECRET.encode(), {"alg": "HS256"}, claims)
    assert denied(token) is DenyReason.MALFORMED


def test_non_canonical_signature_encoding_is_refused() -> None:
    token = sign_token(SECRET.encode(), {"alg": "HS256"}, {"exp": 10, "acl": "/a"})
    head, body, sig = token.split(".")
    assert denied(f"{head}.{body}.{sig}=") is DenyReason.MALFORMED
    # Flip the unused low bits of the last base64 character: same bytes, different text.
    last = sig[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]
    assert denied(f"{head}.{body}.{sig[:-1]}{twin}") is DenyReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("acl", "path", "admitted"),
    [
        (("/assets/a1/*",), "/assets/a1/x", True),
        (("/assets/a1/*",), "/assets/a1/b/c", True),
        (("/assets/a1/*",), "/assets/a10/x", False),
        (("/assets/a1/*",), "/assets/a1", False),
        (("/assets/*/x",), "/assets/a1/x", False),
        (("/assets/*/x",), "/assets/*/x", True),
        (("/a", "/b/*"), "/b/c", True),
        (("/a",), "/a/", False),
    ],
)
def test_acl_matching(acl: tuple[str, ...], path: str, admitted: bool) -> None:
    assert acl_admits(acl, path) is admitted


def test_ipv4_mapped_peer_matches_an_ipv4_binding() -> None:
    verifier = Verifier(KEYS, 0)
    token = verifier.sign("/a", exp=100, ip="10.0.0.0/8")
    verifier.verify(token, "/a", "::ffff:10.1.2.3", now=0)
    with pytest.raises(TokenDenied):
        verifier.verify(token, "/a", "11.0.0.1", now=0)


def test_cached_tokens_are_still_checked_against_the_clock_and_path() -> None:
    verifier = Verifier(KEYS, leeway_s=0, cache_size=2)
    token = verifier.sign("/a/*", exp=100)
    verifier.verify(token, "/a/x", "127.0.0.1", now=50)
    with pytest.raises(TokenDenied) as expired:
        verifier.verify(token, "/a/x", "127.0.0.1", now=101)
    assert expired.value.deny_reason is DenyReason.EXPIRED
    with pytest.raises(TokenDenied) as acl:
        verifier.verify(token, "/b/x", "127.0.0.1", now=50)
    assert acl.value.deny_reason is DenyReason.ACL
    for exp in range(200, 210):  # overflow the cache: it stays bounded and correct
        verifier.verify(verifier.sign("/a/*", exp=exp), "/a/x", "127.0.0.1", now=50)
    assert len(verifier._decoded) <= 2
