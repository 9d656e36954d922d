"""Timestamps as the service writes them, in the API and in webhook bodies alike."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from storage.errors import Invalid

#: The instants ISO 8601 can write with a four-digit year, as epoch seconds (UTC): from
#: 0001-01-01T00:00:00Z up to, not including, 10000-01-01T00:00:00Z.
EARLIEST_S = -62135596800
END_S = 253402300800


def check_timestamp(name: str, ts: float) -> float:
    """`ts` (epoch seconds) as a float, if `iso` can write it: from year 1 to year 9999 UTC.
    Compared before any conversion, so NaN, infinities and huge ints are refused too."""
    if not EARLIEST_S <= ts < END_S:
        raise Invalid(f"{name} must be a time from 0001-01-01 to 9999-12-31 (UTC)")
    return float(ts)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (`2026-01-01T00:00:00.000Z`).

    Total over any float: a time ISO 8601 cannot write (NaN, before year 1, after year
    9999) renders as None, so no stored value can break a read.
    """
    if ts is None or not math.isfinite(ts) or not EARLIEST_S <= ts < END_S:
        return None
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, ValueError, OSError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
