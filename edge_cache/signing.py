"""Edge token v1: HS256 compact JWS signing and verification (../shared/contracts/url-signing.md).

Pure logic: no clock, no I/O. The verifier takes `now` as an argument so tests can replay the
contract's vectors. The control plane signs with the same module, so there is one implementation
of the contract.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import ConfigError, Forbidden

__all__ = [
    "ALGORITHM",
    "MAX_TOKEN_CHARS",
    "MIN_SECRET_BYTES",
    "Claims",
    "DenyReason",
    "KeyRing",
    "TokenDenied",
    "Verifier",
    "acl_admits",
    "decode_token",
    "sign_token",
]

ALGORITHM = "HS256"
MAX_TOKEN_CHARS = 4096
# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
MIN_SECRET_BYTES = 32
DEFAULT_KID = "default"

_B64U_PART = re.compile(r"[A-Za-z0-9_-]*")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DenyReason(StrEnum):
    """The reason label of a denied token (the contract's Prometheus label values)."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KID = "unknown_kid"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ACL = "acl"
    IP = "ip"


class TokenDenied(Forbidden):
    """A token was refused; `reason` is one of `DenyReason`."""

    def __init__(self, reason: DenyReason) -> None:
        super().__init__(reason.value)
        self.deny_reason = reason


def _b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64u_decode(part: str) -> bytes:
    # RFC 7515 §2: base64url without padding; anything outside the alphabet is malformed.
    if not _B64U_PART.fullmatch(part) or len(part) % 4 == 1:
        raise TokenDenied(DenyReason.MALFORMED)
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenDenied(DenyReason.MALFORMED) from exc


def _mac(key: bytes, signing_input: bytes) -> str:
    return _b64u_encode(hmac.new(key, signing_input, hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The configured HMAC secrets: named keys for rotation, and/or one unnamed key."""

    named: Mapping[str, bytes]
    unnamed: bytes | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KeyRing:
        """Build from EDGE_SIGNING_KEYS ("kid:secret,...") and/or EDGE_SIGNING_KEY."""
        named: dict[str, bytes] = {}
        raw_set = env.get("EDGE_SIGNING_KEYS", "").strip()
        if raw_set:
            for item in raw_set.split(","):
                kid, sep, secret = item.strip().partition(":")
                if not sep or not kid or not secret:
                    raise ConfigError(
                        "EDGE_SIGNING_KEYS: each entry must be kid:secret, comma-separated"
                    )
                if kid in named:
                    raise ConfigError(f"EDGE_SIGNING_KEYS: kid {kid!r} appears twice")
                named[kid] = _checked_secret("EDGE_SIGNING_KEYS", secret)
        raw_one = env.get("EDGE_SIGNING_KEY", "")
        unnamed = _checked_secret("EDGE_SIGNING_KEY", raw_one) if raw_one else None
        if not named and unnamed is None:
            raise ConfigError("EDGE_SIGNING_KEY or EDGE_SIGNING_KEYS must be set")
        return cls(named=named, unnamed=unnamed)

    def key_for(self, kid: str | None) -> bytes:
        """The secret a token's `kid` selects, per the contract's rotation rules."""
        if kid is None or (kid == DEFAULT_KID and kid not in self.named):
            if self.unnamed is None:
                raise TokenDenied(DenyReason.UNKNOWN_KID)
            return self.unnamed
        key = self.named.get(kid)
        if key is None:
            raise TokenDenied(DenyReason.UNKNOWN_KID)
        return key

    def signing_kid(self) -> str | None:
        """The kid new tokens are signed with: the first named key, else none (the unnamed key)."""
        return next(iter(self.named), None)


def _checked_secret(variable: str, secret: str) -> bytes:
    key = secret.encode("utf-8")
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{variable}: a secret is {len(key)} bytes; HS256 needs at least {MIN_SECRET_BYTES}"
        )
    return key


@dataclass(frozen=True, slots=True)
class Claims:
    """The claims of a token whose MAC and types have been verified."""

    exp: int
    acl: tuple[str, ...]
    nbf: int | None = None
    ip: IPNetwork | None = None


def sign_token(key: bytes, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """Serialise header and claims compactly (keys in the order given) and sign them."""
    head = _b64u_encode(json.dumps(dict(header), separators=(",", ":")).encode("utf-8"))
    body = _b64u_encode(json.dumps(dict(claims), separators=(",", ":")).encode("utf-8"))
    signing_input = f"{head}.{body}"
    return f"{signing_input}.{_mac(key, signing_input.encode('ascii'))}"


def decode_token(token: str, keys: KeyRing) -> Claims:
    """Check structure, algorithm, key and MAC, then the claims' types. No clock involved."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenDenied(DenyReason.MALFORMED)
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenDenied(DenyReason.MALFORMED)
    head_b64, body_b64, sig_b64 = parts
    header = _json_object(_b64u_decode(head_b64))
    body = _b64u_decode(body_b64)  # well-formed before we spend a MAC on it
    if not _B64U_PART.fullmatch(sig_b64):
        raise TokenDenied(DenyReason.MALFORMED)
    if header.get("alg") != ALGORITHM:
        raise TokenDenied(DenyReason.MALFORMED)
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenDenied(DenyReason.MALFORMED)
    key = keys.key_for(kid)
    # The MAC covers the transmitted bytes; comparing encodings also rejects non-canonical base64.
    expected = _mac(key, f"{head_b64}.{body_b64}".encode("ascii"))
    if not hmac.compare_digest(expected, sig_b64):
        raise TokenDenied(DenyReason.BAD_SIGNATURE)
    return _claims_from(_json_object(body))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenDenied(DenyReason.MALFORMED) from exc
    if not isinstance(value, dict):
        raise TokenDenied(DenyReason.MALFORMED)
    return value


def _int_claim(value: object) -> int:
    # bool is an int subclass in Python; numeric strings are not coerced (the vectors check it).
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenDenied(DenyReason.MALFORMED)
    return value


def _claims_from(body: dict[str, Any]) -> Claims:
    if "exp" not in body or "acl" not in body:
        raise TokenDenied(DenyReason.MALFORMED)
    exp = _int_claim(body["exp"])
    nbf = _int_claim(body["nbf"]) if "nbf" in body else None
    raw_acl = body["acl"]
    if isinstance(raw_acl, str):
        acl: tuple[str, ...] = (raw_acl,)
    elif isinstance(raw_acl, list) and raw_acl and all(isinstance(entry, str) for entry in raw_acl):
        acl = tuple(raw_acl)
    else:
        raise TokenDenied(DenyReason.MALFORMED)
    ip: IPNetwork | None = None
    if "ip" in body:
        if not isinstance(body["ip"], str):
            raise TokenDenied(DenyReason.MALFORMED)
        try:
            ip = ipaddress.ip_network(body["ip"], strict=False)
        except ValueError as exc:
            raise TokenDenied(DenyReason.MALFORMED) from exc
    return Claims(exp=exp, acl=acl, nbf=nbf, ip=ip)


def acl_admits(acl: tuple[str, ...], object_path: str) -> bool:
    """True when an entry is the exact path, or a `/*` prefix the path lies below."""
    for entry in acl:
        if entry.endswith("/*"):
            if object_path.startswith(entry[:-1]):
                return True
        elif entry == object_path:
            return True
    return False


def _normalised(address: IPAddress) -> IPAddress:
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; compare them as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_claims(
    claims: Claims, object_path: str, client_ip: str, now: float, leeway_s: int
) -> None:
    """Apply time, ACL and IP rules; raises TokenDenied with the reason."""
    if now > claims.exp + leeway_s:
        raise TokenDenied(DenyReason.EXPIRED)
    if claims.nbf is not None and now + leeway_s < claims.nbf:
        raise TokenDenied(DenyReason.NOT_YET_VALID)
    if not acl_admits(claims.acl, object_path):
        raise TokenDenied(DenyReason.ACL)
    if claims.ip is not None:
        try:
            address = _normalised(ipaddress.ip_address(client_ip))
        except ValueError as exc:
            raise TokenDenied(DenyReason.IP) from exc
        if address not in claims.ip:
            raise TokenDenied(DenyReason.IP)


class Verifier:
    """Verifies tokens for requests, remembering tokens whose MAC already checked out.

    Players send the same token for every segment and range of a session, so the HMAC and JSON
    work is done once per token; the per-request checks (clock, ACL, IP) always run.
    """

    def __init__(self, keys: KeyRing, leeway_s: int, cache_size: int = 4096) -> None:
        self._keys = keys
        self._leeway_s = leeway_s
        self._cache_size = cache_size
        self._decoded: dict[str, Claims] = {}

    def verify(self, token: str, object_path: str, client_ip: str, now: float) -> Claims:
        claims = self._decoded.get(token)
        if claims is None:
            claims = decode_token(token, self._keys)
            if len(self._decoded) >= self._cache_size:
                # Drop the oldest insertion: bounded memory whatever tokens clients send.
                del self._decoded[next(iter(self._decoded))]
            self._decoded[token] = claims
        check_claims(claims, object_path, client_ip, now, self._leeway_s)
        return claims

    def sign(
        self, acl: str | list[str], exp: int, *, ip: str | None = None, nbf: int | None = None
    ) -> str:
        """Sign a token with the current key (the first of EDGE_SIGNING_KEYS, else the one key)."""
        kid = self._keys.signing_kid()
        header: dict[str, Any] = {"alg": ALGORITHM, "typ": "JWT"}
        if kid is not None:
            header["kid"] = kid
        claims: dict[str, Any] = {"exp": exp, "acl": acl}
        if nbf is not None:
            claims["nbf"] = nbf
        if ip is not None:
            claims["ip"] = ip
        return sign_token(self._keys.key_for(kid), header, claims)
