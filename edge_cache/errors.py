"""The edge's own error types; each HTTP-facing one carries the status it maps to."""

from __future__ import annotations

__all__ = [
    "BadGateway",
    "BadRequest",
    "ConfigError",
    "EdgeHTTPError",
    "Forbidden",
    "GatewayTimeout",
    "NotFound",
    "OriginChanged",
    "TooManyRequests",
    "Unauthorized",
]


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message is one line naming the variable."""


class EdgeHTTPError(Exception):
    """An error that ends a request with `status` and a short reason word as the body."""

    status = 500
    reason = "error"

    def __init__(self, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(self.reason)


class BadRequest(EdgeHTTPError):
    status = 400
    reason = "bad_request"


class Unauthorized(EdgeHTTPError):
    status = 401
    reason = "no_token"


class Forbidden(EdgeHTTPError):
    status = 403
    reason = "forbidden"


class NotFound(EdgeHTTPError):
    status = 404
    reason = "not_found"


class TooManyRequests(EdgeHTTPError):
    status = 429
    reason = "rate_limited"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__()
        self.retry_after_s = retry_after_s


class BadGateway(EdgeHTTPError):
    status = 502
    reason = "origin_error"


class GatewayTimeout(EdgeHTTPError):
    status = 504
    reason = "origin_timeout"


class OriginChanged(BadGateway):
    """The origin object no longer has the ETag a fill was started for (412 on If-Match)."""

    reason = "origin_changed"
