"""Prometheus metrics of the edge (`edge_` prefix), registered on an injected registry.

With several workers, the supervisor sets PROMETHEUS_MULTIPROC_DIR and every worker writes its
values there; a scrape of any worker's /metrics reads them all (`scrape_registry`). Gauges say how
they combine across workers (`livesum`: the sum over live workers); counters always add up.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from .origin import OriginStats

__all__ = ["EdgeMetrics", "scrape_registry"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class EdgeMetrics(OriginStats):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "edge_requests",
            "Requests answered, by method, status and cache outcome",
            ["method", "status", "cache"],
            registry=registry,
        )
        self.response_bytes = Counter(
            "edge_response_bytes",
            "Body bytes sent to clients, by cache outcome",
            ["cache"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "edge_request_duration_seconds",
            "Time from request to the last body byte",
            ["cache"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.slice_lookups = Counter(
            "edge_slice_lookups",
            "Slices needed by responses: hit (on disk), miss (fill started), coalesced "
            "(joined a fill in flight); the hit ratio is hit / sum",
            ["result"],
            registry=registry,
        )
        self.origin_requests = Counter(
            "edge_origin_requests",
            "Requests sent to the origin, by operation and outcome",
            ["op", "outcome"],
            registry=registry,
        )
        self.origin_bytes = Counter(
            "edge_origin_bytes", "Body bytes received from the origin", registry=registry
        )
        self.origin_seconds = Histogram(
            "edge_origin_latency_seconds",
            "Origin time to response headers",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.origin_errors = Counter(
            "edge_origin_errors",
            "Origin failures, by kind (a retried failure counts each time)",
            ["kind"],
            registry=registry,
        )
        self.fills_in_flight = Gauge(
            "edge_fills_in_flight",
            "Slice fills running now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.coalesced_waiters = Counter(
            "edge_coalesced_waiters",
            "Readers that joined a slice fill started by another request",
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "edge_cache_bytes",
            "Bytes of slices on disk, plus reservations for fills",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cache_slices = Gauge(
            "edge_cache_slices", "Slices on disk", registry=registry, multiprocess_mode="livesum"
        )
        self.cache_max_bytes = Gauge(
            "edge_cache_max_bytes",
            "The configured bound on cache bytes (each worker's share, summed)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.evictions = Counter(
            "edge_cache_evictions", "Slices evicted to make room (LRU)", registry=registry
        )
        self.uncached_fills = Counter(
            "edge_cache_uncached_fills",
            "Slice fills streamed without being stored (no room left under the bound)",
            registry=registry,
        )
        self.denials = Counter(
            "edge_denials",
            "Requests refused by token checks, by reason",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "edge_rate_limited", "Requests refused with 429", registry=registry
        )
        self.rate_limit_backend_errors = Counter(
            "edge_rate_limit_backend_errors",
            "Shared (Redis) rate-limit checks that failed and fell back to the local limiter",
            registry=registry,
        )
        self.purged_objects = Counter(
            "edge_purged_objects", "Object versions removed by purge", registry=registry
        )
        self.prefetch_queued = Counter(
            "edge_prefetch_queued", "Objects queued for prefetch", registry=registry
        )
        self.peer_requests = Counter(
            "edge_peer_requests",
            "Requests to the worker that owns a key (several workers), by operation and outcome",
            ["op", "outcome"],
            registry=registry,
        )
        self.peer_fallbacks = Counter(
            "edge_peer_fallbacks",
            "Misses served straight from the origin, uncached, because the owner worker was "
            "unreachable (restarting)",
            registry=registry,
        )

    # OriginStats hooks
    def request(self, op: str, outcome: str, seconds: float) -> None:
        self.origin_requests.labels(op, outcome).inc()
        if outcome == "ok":
            self.origin_seconds.labels(op).observe(seconds)
        else:
            self.origin_errors.labels(outcome).inc()

    def bytes_received(self, count: int) -> None:
        self.origin_bytes.inc(count)


def scrape_registry(own: CollectorRegistry) -> CollectorRegistry:
    """The registry a /metrics scrape reads: every worker's values when several run."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return own
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]
    return combined
