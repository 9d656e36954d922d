"""A shard's commit pace and the spread `Retry-After` of what is shed (actors/admission.py)."""

from __future__ import annotations

import collections
import random

from actors.admission import RETRY_SPREAD, CommitPace, retry_after_s


def test_nothing_is_known_before_the_first_commit():
    assert CommitPace().wait_s(1_000_000) is None


def test_the_wait_is_the_queue_at_the_best_recent_rate():
    pace = CommitPace()
    pace.committed(1, 0.01)  # a lone write: 100 writes/s, a commit's fixed cost
    pace.committed(1000, 0.5)  # a batch under load: 2,000 writes/s
    assert pace.wait_s(4000) == 2.0


def test_a_store_that_slows_down_is_seen_within_the_window():
    pace = CommitPace(window=4)
    pace.committed(1000, 0.1)  # 10,000 writes/s
    for _ in range(4):
        pace.committed(100, 1.0)  # then 100 writes/s
    assert pace.wait_s(500) == 5.0


def test_retry_after_is_whole_seconds_spread_over_its_range():
    rng = random.Random(7)
    drawn = collections.Counter(retry_after_s(1.0, rng=rng) for _ in range(300))
    assert set(drawn) == {float(s) for s in range(1, RETRY_SPREAD + 1)}
    assert min(drawn.values()) > 50  # near-uniform: clients shed together come back apart
    assert {retry_after_s(2.5, rng=rng) for _ in range(200)} <= {float(s) for s in range(3, 10)}
    assert retry_after_s(0.1, rng=rng) >= 1  # never "now"
