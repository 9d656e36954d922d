"""Durations and timestamps as clients write them: `3600`, `"90s"`, `"12h"`, `"30d"`, `"P7DT1H"`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainValidator, WithJsonSchema

from actors.limits import MAX_TTL_S, clip
from actors.timestamps import check_timestamp
from storage.errors import Invalid

# At most 12 digits a number: anything longer is out of range anyway, and int() of
# thousands of digits is slow (Python refuses past 4300).
_SIMPLE = re.compile(r"\s*([0-9]{1,12})\s*(ms|s|m|h|d|w)?\s*")
_N = "[0-9]{1,12}"
_ISO = re.compile(
    rf"P(?:(?P<w>{_N})W)?(?:(?P<d>{_N})D)?(?:T(?:(?P<h>{_N})H)?(?:(?P<m>{_N})M)?(?:(?P<s>{_N})S)?)?"
)
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_s(value: object) -> int:
    """Whole seconds (at least 1) from an int or a duration string."""
    if isinstance(value, bool):
        raise Invalid("a duration must be seconds or a string like '30d'")
    if isinstance(value, int | float):
        seconds = value
    elif isinstance(value, str) and (m := _SIMPLE.fullmatch(value)):
        seconds = int(m.group(1)) * _UNIT_S[m.group(2) or "s"]
    elif isinstance(value, str) and value != "P" and (m := _ISO.fullmatch(value.strip().upper())):
        seconds = sum(int(m.group(k) or 0) * _UNIT_S[k] for k in ("w", "d", "h", "m", "s"))
    else:
        raise Invalid(
            f"cannot read {clip(repr(value), 40)} as a duration (e.g. 3600, '90s', '12h', 'P30D')"
        )
    if not 1 <= seconds <= MAX_TTL_S:  # also False for NaN
        raise Invalid(f"a duration must be from 1 s to {MAX_TTL_S} s (10 years)")
    return int(seconds)


def _iso_8601(value: object) -> datetime:
    """An ISO 8601 date-time string, and nothing else: pydantic would also read a number as
    epoch seconds, or as milliseconds past 2e10, which no client means."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string, e.g. 2026-01-01T00:00:00Z")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            "must be an ISO 8601 date-time, e.g. 2026-01-01T00:00:00Z, from year 1 to 9999"
        ) from None


#: A date-time field or query parameter: an ISO 8601 string (RFC 3339 forms and more).
DateTime = Annotated[
    datetime,
    PlainValidator(_iso_8601),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def to_epoch(name: str, value: datetime) -> float:
    """Epoch seconds of a client's date-time (UTC when it names no offset); `Invalid` for
    one ISO 8601 cannot write in UTC (e.g. 9999-12-31T23:59:59-23:59)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        ts = value.timestamp()
    except (OverflowError, ValueError) as exc:
        raise Invalid(f"{name} must be a time from 0001-01-01 to 9999-12-31 (UTC)") from exc
    return check_timestamp(name, ts)
