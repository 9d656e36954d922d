"""The one error tree of the service; the HTTP mapping lives in serve_app.errors.

AosError
 +-- Invalid            422  a value is out of range or malformed
 |    +-- TooLarge      413  a body, chunk or id is over its limit
 |    +-- Unstorable    422  the store refused this request's data (the cause is logged, not sent)
 +-- BadRequest         400  the request cannot be understood (e.g. ambiguous namespace)
 +-- Unauthorized       401
 +-- Forbidden          403
 +-- NotFound           404
 +-- Conflict           409
 +-- Overloaded         503  with retry_after_s (full write-behind buffer)
 +-- StoreUnavailable   503  the store failed or is unreachable
 |    +-- Fenced        503  another owner took this shard's lease
 +-- ShardUnavailable   503  the shard actor is restarting (Ray's actor errors, translated)
 +-- DnsUnavailable     503  a webhook host's DNS lookup timed out or failed for now
"""

from __future__ import annotations

from typing import Any


class AosError(Exception):
    """Root of our errors. `code` is stable and machine readable."""

    code = "error"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses Ray process boundaries: keep the keyword-only state when pickled.
        return (_rebuild, (type(self), self.message, self.retry_after_s))


def _rebuild(cls: type[AosError], message: str, retry_after_s: float | None) -> AosError:
    return cls(message, retry_after_s=retry_after_s)


class Invalid(AosError):
    code = "invalid"


class TooLarge(Invalid):
    code = "too_large"


class Unstorable(Invalid):
    """The store refused one write's data; only that write's caller gets this, never the text
    of the store's error (it may quote the data)."""

    code = "unstorable"

    def __init__(
        self,
        message: str = "the store could not hold this write's data",
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class BadRequest(AosError):
    code = "bad_request"


class Unauthorized(AosError):
    code = "unauthorized"


class Forbidden(AosError):
    code = "forbidden"


class NotFound(AosError):
    code = "not_found"


class Conflict(AosError):
    code = "conflict"


class RequestTimeout(AosError):
    """The client stopped sending its request part way (RFC 9110 §15.5.9)."""

    code = "request_timeout"


class Overloaded(AosError):
    code = "overloaded"


class StoreUnavailable(AosError):
    code = "store_unavailable"


class Fenced(StoreUnavailable):
    code = "shard_fenced"


class ShardUnavailable(AosError):
    """The shard actor is restarting or its node is gone; the caller may retry shortly."""

    code = "shard_unavailable"


class DnsUnavailable(AosError):
    """A webhook host could not be looked up for now (DNS timed out or failed), which says
    nothing of the URL: the caller may retry shortly."""

    code = "dns_unavailable"
