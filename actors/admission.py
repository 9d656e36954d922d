"""Admission under load: how long a shard's queued writes will take to commit, and the
`Retry-After` values that spread the retries of what is shed.

A shard's write buffer is bounded in items and bytes; a full buffer of a slow store can
still hold minutes of work. `CommitPace` learns the store's pace from the shard's own
commits, so the committer can refuse a write that would wait longer than a few seconds to
commit (`GroupCommitter.add`): the caller hears 503 at once rather than waiting.
"""

from __future__ import annotations

import collections
import math
import random

#: Commits a pace remembers: a store that slows down is seen within this many commits.
PACE_WINDOW = 32
#: A shed request is told to come back after a whole number of seconds between its base and
#: this many times its base (RFC 9110 §10.2.3): clients shed together come back spread out.
RETRY_SPREAD = 3


class CommitPace:
    """A store's commit throughput, from the last `window` commits: the best rate among them
    (a commit's writes over its duration).

    The best, not the mean: a commit of one write after a quiet spell is slow per write (a
    commit's fixed cost), and a burst is committed in a few large batches at the rate large
    batches get; a store that slows down slows every commit, so the best drops too.
    """

    def __init__(self, *, window: int = PACE_WINDOW) -> None:
        self._rates: collections.deque[float] = collections.deque(maxlen=window)

    def committed(self, writes: int, seconds: float) -> None:
        """One commit of `writes` writes took `seconds`."""
        self._rates.append(writes / max(seconds, 1e-6))

    def wait_s(self, writes: int) -> float | None:
        """Seconds `writes` queued writes will take to commit at this pace; `None` before the
        first commit (nothing is known yet)."""
        if not self._rates:
            return None
        return writes / max(self._rates)


def retry_after_s(base_s: float, *, rng: random.Random | None = None) -> float:
    """A whole number of seconds in [base, RETRY_SPREAD x base] (base at least 1), uniformly
    drawn: what a shed request's `Retry-After` says."""
    low = max(1, math.ceil(base_s))
    return float((rng or _RNG).randint(low, RETRY_SPREAD * low))


_RNG = random.Random()
