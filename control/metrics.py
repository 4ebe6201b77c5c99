"""Prometheus metrics of the control plane (`control_` prefix), on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ControlMetrics"]


class ControlMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "control_requests",
            "API requests, by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "control_request_duration_seconds", "API request duration", ["route"], registry=registry
        )
        self.rate_limited = Counter(
            "control_rate_limited",
            "Requests refused with 429, by limit",
            ["limit"],
            registry=registry,
        )
        self.rate_limit_fallback = Counter(
            "control_rate_limit_fallback",
            "Shared (Redis) rate-limit checks that failed and used the local limiter",
            registry=registry,
        )
        self.outbox_published = Counter(
            "control_outbox_published", "Job messages published to Redis", registry=registry
        )
        self.outbox_errors = Counter(
            "control_outbox_errors", "Failed outbox publish attempts", registry=registry
        )
        self.outbox_backlog = Gauge(
            "control_outbox_backlog", "Job messages waiting to be published", registry=registry
        )
        self.promotions = Counter(
            "control_promotions",
            "Assets promoted to Masters (first promote only)",
            registry=registry,
        )
