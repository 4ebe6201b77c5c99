"""Replay ../shared/contracts/signing-vectors.json against the signer and the verifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_cache.errors import BadRequest, EdgeHTTPError, Unauthorized
from edge_cache.paths import parse_target
from edge_cache.signing import KeyRing, Verifier, sign_token

CONTRACTS = Path(__file__).resolve().parents[3] / "shared" / "contracts"
VECTORS: dict[str, Any] = json.loads((CONTRACTS / "signing-vectors.json").read_text())
KEYS = KeyRing.from_env(VECTORS["keys"])

# Tokens a correct signer must NOT reproduce from (key, header, claims), and why.
NOT_SIGNABLE = {
    "wrong_secret": "signed with a secret that is not configured",
    "alg_none": "carries no HS256 MAC",
    "tampered_claims": "claims were altered after signing",
    "unknown_kid": "its kid names no configured key",
    "no_kid_with_keyset": "no kid while only a key set is configured",
}


def raw_target(case: dict[str, Any]) -> str:
    """The request target exactly as a client would send it for this case."""
    path = case["path"]
    if "path_token" in case:
        path = f"/t/{case['path_token']}{path}"
    if "query_token" in case:
        path = f"{path}?token={case['query_token']}"
    return path


def verdict(case: dict[str, Any]) -> int | str:
    """Run the edge's admission logic (target parsing, then token checks) at the case's `now`."""
    verifier = Verifier(KEYS, VECTORS["leeway_s"])
    try:
        target = parse_target(raw_target(case))
        if target.token is None:
            raise Unauthorized()
        verifier.verify(target.token, target.object_path, case["client_ip"], case["now"])
    except EdgeHTTPError as exc:
        return exc.status
    return "admit"


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_verifier_gives_the_expected_verdict(case: dict[str, Any]) -> None:
    assert verdict(case) == case["expect"]


@pytest.mark.parametrize("name", sorted(VECTORS["tokens"]))
def test_signer_reproduces_every_genuine_token(name: str) -> None:
    vector = VECTORS["tokens"][name]
    kid = vector["header"].get("kid")
    if name in ("unknown_kid", "no_kid_with_keyset"):
        with pytest.raises(EdgeHTTPError):
            KEYS.key_for(kid)
        return
    produced = sign_token(KEYS.key_for(kid), vector["header"], vector["claims"])
    if name in NOT_SIGNABLE:
        assert produced != vector["token"], NOT_SIGNABLE[name]
    else:
        assert produced == vector["token"]


def test_vectors_cover_every_verdict() -> None:
    """Guard against an empty or truncated vector file making the replay vacuous."""
    expects = {case["expect"] for case in VECTORS["cases"]}
    assert {"admit", 400, 401, 403} <= expects
    assert len(VECTORS["cases"]) >= 30


def test_two_tokens_is_400_even_when_both_are_valid() -> None:
    token = VECTORS["tokens"]["prefix"]["token"]
    with pytest.raises(BadRequest):
        parse_target(f"/t/{token}/assets/a1/x.ts?token={token}")
