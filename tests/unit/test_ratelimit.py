from __future__ import annotations

from edge_cache.clientip import parse_networks, resolve_client_ip
from edge_cache.ratelimit import WindowLimiter


def test_window_limits_each_client_separately_and_resets() -> None:
    limiter = WindowLimiter(max_requests=2, window_s=10)
    assert limiter.hit("a", 100.0) is None
    assert limiter.hit("a", 101.0) is None
    assert limiter.hit("a", 102.5) == 8  # retry when the window turns at 110
    assert limiter.hit("b", 103.0) is None
    assert limiter.hit("a", 110.0) is None


def test_client_table_is_bounded() -> None:
    limiter = WindowLimiter(max_requests=5, window_s=10, max_clients=3)
    assert [limiter.hit(c, 1.0) for c in "abc"] == [None, None, None]
    assert limiter.hit("d", 1.0) is not None
    assert limiter.hit("a", 1.0) is None


TRUSTED = parse_networks("10.0.0.0/8, 192.0.2.1")


def test_peer_is_used_unless_it_is_a_trusted_proxy() -> None:
    assert resolve_client_ip("203.0.113.5", "1.2.3.4", TRUSTED) == "203.0.113.5"
    assert resolve_client_ip("10.1.1.1", "1.2.3.4", TRUSTED) == "1.2.3.4"
    assert resolve_client_ip("10.1.1.1", None, TRUSTED) == "10.1.1.1"
    assert resolve_client_ip("10.1.1.1", "1.2.3.4", ()) == "10.1.1.1"


def test_rightmost_untrusted_forwarded_address_wins() -> None:
    # the client forged the left-most entry; our proxies appended the rest
    xff = "6.6.6.6, 198.51.100.7, 192.0.2.1, 10.0.0.9"
    assert resolve_client_ip("10.0.0.2", xff, TRUSTED) == "198.51.100.7"
    assert resolve_client_ip("::ffff:10.0.0.2", "198.51.100.8", TRUSTED) == "198.51.100.8"
