"""Which address a request comes from, honouring X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["IPNetwork", "parse_networks", "resolve_client_ip"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(raw: str) -> tuple[IPNetwork, ...]:
    """Parse "10.0.0.1, 10.1.0.0/16" into networks; raises ValueError on a bad entry."""
    return tuple(
        ipaddress.ip_network(item.strip(), strict=False) for item in raw.split(",") if item.strip()
    )


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted)


def resolve_client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The TCP peer, or, when the peer is a trusted proxy, the right-most untrusted XFF entry."""
    if not trusted or forwarded_for is None or not _is_trusted(peer, trusted):
        return peer
    # Walk right to left: entries appended by our own proxies are skipped; the first one that
    # is not ours was written by the hop that connected to them, which is what we can believe.
    for entry in reversed(forwarded_for.split(",")):
        candidate = entry.strip()
        if candidate and not _is_trusted(candidate, trusted):
            return candidate
    return peer
