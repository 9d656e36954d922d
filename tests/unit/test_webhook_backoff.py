"""Retry schedule: policy validation, jittered exponential gaps, and when to give up."""

from __future__ import annotations

import random
import statistics

import pytest

from actors.webhooks.backoff import RetryPolicy, delay_s, next_delay_s, retry_after_s, should_retry
from storage.errors import Invalid


def test_default_policy() -> None:
    policy = RetryPolicy()
    assert (policy.initial_delay_ms, policy.max_delay_ms) == (1000, 60_000)
    assert (policy.max_attempts, policy.timeout_ms, policy.timeout_s) == (8, 10_000, 10.0)


@pytest.mark.parametrize(
    "changes",
    [
        {"initial_delay_ms": 0},
        {"initial_delay_ms": 5000, "max_delay_ms": 4999},
        {"max_delay_ms": 24 * 3600 * 1000 + 1},
        {"max_attempts": 0},
        {"max_attempts": 51},
        {"timeout_ms": 99},
        {"timeout_ms": 60_001},
        {"timeout_ms": 1.5},
        {"max_attempts": True},
    ],
)
def test_out_of_range_policy_is_invalid(changes: dict[str, object]) -> None:
    with pytest.raises(Invalid, match="retry policy"):
        RetryPolicy(**changes)  # type: ignore[arg-type]


def test_extreme_but_legal_policy_is_accepted() -> None:
    RetryPolicy(initial_delay_ms=1, max_delay_ms=1, max_attempts=1, timeout_ms=100)
    RetryPolicy(max_delay_ms=24 * 3600 * 1000, max_attempts=50, timeout_ms=60_000)


def test_first_retry_waits_exactly_the_initial_delay() -> None:
    assert next_delay_s(RetryPolicy(initial_delay_ms=1500), 1) == 1.5


@pytest.mark.parametrize("attempt", [2, 3, 5, 7, 12, 1000])
def test_delay_stays_between_initial_and_the_exponential_cap(attempt: int) -> None:
    policy = RetryPolicy(initial_delay_ms=1000, max_delay_ms=60_000)
    cap_s = min(60.0, 2 ** (attempt - 1))
    rng = random.Random(attempt)
    delays = [next_delay_s(policy, attempt, rng=rng) for _ in range(2000)]
    assert 1.0 <= min(delays)
    assert max(delays) <= cap_s
    # Jittered, not a fixed step: the samples spread over most of the window.
    assert max(delays) - min(delays) > 0.8 * (cap_s - 1.0)


def test_mean_delay_grows_until_the_cap() -> None:
    policy = RetryPolicy(initial_delay_ms=1000, max_delay_ms=16_000)
    rng = random.Random(7)
    means = [
        statistics.fmean(next_delay_s(policy, attempt, rng=rng) for _ in range(4000))
        for attempt in range(1, 8)
    ]
    assert means[:5] == sorted(means[:5])
    assert means[4] == pytest.approx(8.5, rel=0.05)  # initial + (cap - initial) / 2
    assert means[6] == pytest.approx(8.5, rel=0.05)


def test_same_seed_gives_the_same_schedule() -> None:
    policy = RetryPolicy()
    first = [next_delay_s(policy, n, rng=random.Random(42)) for n in range(1, 9)]
    again = [next_delay_s(policy, n, rng=random.Random(42)) for n in range(1, 9)]
    assert first == again


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(Invalid):
        next_delay_s(RetryPolicy(), 0)


@pytest.mark.parametrize(
    ("status", "attempt_no", "expected"),
    [
        (200, 1, False),
        (204, 1, False),
        (299, 3, False),
        (410, 1, False),
        (500, 1, True),
        (302, 1, True),
        (404, 1, True),
        (429, 7, True),
        (None, 1, True),
        (None, 7, True),
        (500, 8, False),
        (None, 8, False),
        (503, 9, False),
    ],
)
def test_should_retry(status: int | None, attempt_no: int, expected: bool) -> None:
    assert should_retry(status, attempt_no, RetryPolicy(max_attempts=8)) is expected


NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("3", 3.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("86401", 86_400.0),  # at most the longest delay any policy allows
        ("1" * 5000, 86_400.0),  # no int() of a huge string
        ("-5", None),
        ("3.5", None),  # delay-seconds is whole seconds
        ("+3", None),
        ("٣", None),  # a digit, but not an ASCII one
        ("", None),
        ("soon", None),
        ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0),  # IMF-fixdate
        ("Friday, 15-Jan-27 08:01:00 GMT", 60.0),  # obsolete RFC 850
        ("Fri Jan 15 08:02:00 2027", 120.0),  # obsolete asctime
        ("Fri, 15 Jan 2027 07:59:00 GMT", None),  # already past
        ("Fri, 15 Jan 2027 08:00:00 GMT", None),  # now
        ("Fri, 45 Jan 2027 08:00:00 GMT", None),  # no such day
    ],
)
def test_retry_after_header(value: str | None, expected: float | None) -> None:
    assert retry_after_s(value, now=NOW) == expected


def test_delay_is_the_longer_of_backoff_and_retry_after_capped_at_max_delay() -> None:
    policy = RetryPolicy(initial_delay_ms=1000, max_delay_ms=1000)
    assert delay_s(policy, 1) == 1.0
    assert delay_s(policy, 1, retry_after_s=0.2) == 1.0
    assert delay_s(RetryPolicy(initial_delay_ms=200), 1, retry_after_s=3.0) == 3.0
    assert delay_s(RetryPolicy(max_delay_ms=5000), 1, retry_after_s=3600.0) == 5.0
