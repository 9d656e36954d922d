"""Webhook retry schedule: the policy, the jittered gap between attempts, and when to stop."""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from datetime import UTC

from storage.errors import Invalid

MAX_DELAY_LIMIT_MS = 24 * 60 * 60 * 1000
MAX_ATTEMPTS_LIMIT = 50
TIMEOUT_RANGE_MS = (100, 60_000)
HTTP_GONE = 410
# Past this many doublings every cap is max_delay anyway; stops 2**n growing unbounded.
_MAX_EXPONENT = 40
_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a webhook is retried. Out-of-range values raise `Invalid` on construction."""

    initial_delay_ms: int = 1000
    max_delay_ms: int = 60_000
    max_attempts: int = 8
    timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        for name in ("initial_delay_ms", "max_delay_ms", "max_attempts", "timeout_ms"):
            value = getattr(self, name)
            # bool is an int subclass; `True` attempts is a bug, not a policy.
            if not isinstance(value, int) or isinstance(value, bool):
                raise Invalid(f"retry policy {name} must be an integer, not {value!r}")
        _require(self.initial_delay_ms >= 1, "initial_delay_ms must be at least 1")
        _require(
            self.initial_delay_ms <= self.max_delay_ms <= MAX_DELAY_LIMIT_MS,
            f"max_delay_ms must be between initial_delay_ms and {MAX_DELAY_LIMIT_MS}",
        )
        _require(
            1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT,
            f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}",
        )
        low, high = TIMEOUT_RANGE_MS
        _require(low <= self.timeout_ms <= high, f"timeout_ms must be between {low} and {high}")

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise Invalid(f"retry policy {message}")


def next_delay_s(policy: RetryPolicy, attempt: int, *, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (from 1) before the next one.

    Full jitter over an exponential cap, but floored at `initial_delay`:
    `initial + uniform(0, cap - initial)` with `cap = min(max, initial * 2**(attempt-1))`.
    Plain full jitter (`uniform(0, cap)`) may fire again almost at once after many
    failures; the floor keeps every gap at least `initial` and the mean gap growing,
    while the jitter still spreads a burst of failures over time.
    """
    if attempt < 1:
        raise Invalid(f"attempt numbers start at 1, not {attempt}")
    exponent = min(attempt - 1, _MAX_EXPONENT)
    cap_ms = min(policy.max_delay_ms, policy.initial_delay_ms * 2**exponent)
    jitter_ms = (rng or _RNG).uniform(0, cap_ms - policy.initial_delay_ms)
    return (policy.initial_delay_ms + jitter_ms) / 1000


def retry_after_s(value: str | None, *, now: float) -> float | None:
    """The wait a `Retry-After` header asks for (RFC 9110 §10.2.3), in seconds from `now`.

    `value` is delay-seconds ("120") or an HTTP-date ("Wed, 21 Oct 2026 07:28:00 GMT", or
    the obsolete RFC 850 and asctime forms); `now` is Unix time. None when the header is
    absent, malformed, negative or a date already past: the normal backoff applies then.
    A huge value is returned as it is (at most `MAX_DELAY_LIMIT_MS`); `delay_s` caps it.
    """
    if value is None:
        return None
    value = value.strip()
    limit_s = MAX_DELAY_LIMIT_MS / 1000
    if value.isascii() and value.isdigit():
        return min(float(value), limit_s) if len(value) <= 12 else limit_s
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" and asctime carry no zone; HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    wait_s = when.timestamp() - now
    return min(wait_s, limit_s) if wait_s > 0 else None


def delay_s(policy: RetryPolicy, attempt: int, *, retry_after_s: float | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` before the next: the jittered
    backoff (`next_delay_s`), or the receiver's `Retry-After` when that is longer, capped at
    the policy's `max_delay_ms`."""
    backoff_s = next_delay_s(policy, attempt)
    if retry_after_s is None:
        return backoff_s
    return max(backoff_s, min(retry_after_s, policy.max_delay_ms / 1000))


def should_retry(status_code: int | None, attempt_no: int, policy: RetryPolicy) -> bool:
    """Whether to try again after attempt `attempt_no` (from 1) ended with `status_code`.

    2xx means delivered; 410 Gone means the receiver asks us to stop for good; anything
    else (other statuses, or None for a timeout, connect error or blocked URL) is
    retried until `max_attempts` attempts have been made.
    """
    if status_code is not None and (200 <= status_code < 300 or status_code == HTTP_GONE):
        return False
    return attempt_no < policy.max_attempts
