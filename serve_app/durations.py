"""Durations and timestamps as clients write them: `3600`, `"90s"`, `"12h"`, `"30d"`, `"P7DT1H"`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from actors.limits import MAX_TTL_S, clip
from actors.timestamps import check_timestamp
from storage.errors import Invalid

# At most 12 digits a number: anything longer is out of range anyway, and int() of
# thousands of digits is slow (Python refuses past 4300).
_SIMPLE = re.compile(r"\s*([0-9]{1,12})\s*(ms|s|m|h|d|w)?\s*")
_N = "[0-9]{1,12}"
# ISO 8601 wants at least one component after P and after T: "P" and "PT" are not durations.
_ISO = re.compile(
    rf"P(?=[0-9]|T[0-9])(?:(?P<w>{_N})W)?(?:(?P<d>{_N})D)?"
    rf"(?:T(?=[0-9])(?:(?P<h>{_N})H)?(?:(?P<m>{_N})M)?(?:(?P<s>{_N})S)?)?"
)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_EXAMPLES = "e.g. 3600, '90s', '12h', '30d', 'P30D'"


def parse_duration_s(value: object) -> int:
    """Whole seconds, from 1 s to 10 years, from an int (seconds) or a duration string:
    a number with a unit (ms, s, m, h, d, w; none is s) or ISO 8601 (`P7DT12H`, no years
    or months). `Invalid` for anything else: a float, a bool, other units, a count of
    milliseconds that is not whole seconds (`"1500ms"`), a value out of range."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_TTL_S:  # compared before any arithmetic: 10**400 is an int
            raise _out_of_range()
        return value
    if isinstance(value, str) and (m := _SIMPLE.fullmatch(value)):
        ms = int(m.group(1)) * _UNIT_MS[m.group(2) or "s"]
    elif isinstance(value, str) and (m := _ISO.fullmatch(value.strip().upper())):
        ms = sum(int(m.group(k) or 0) * _UNIT_MS[k] for k in ("w", "d", "h", "m", "s"))
    else:
        raise Invalid(f"cannot read {clip(repr(value), 40)} as a duration ({_EXAMPLES})")
    seconds, rest = divmod(ms, 1000)
    if not 1 <= seconds <= MAX_TTL_S:
        raise _out_of_range()
    if rest:
        raise Invalid(f"a duration must be whole seconds, not {clip(repr(value), 40)}")
    return seconds


def _out_of_range() -> Invalid:
    return Invalid(f"a duration must be from 1 s to {MAX_TTL_S} s (10 years)")


def _duration(value: object) -> int:
    try:
        return parse_duration_s(value)
    except Invalid as exc:  # pydantic reports it at its field, with our message
        raise PydanticCustomError("duration", exc.message) from exc


#: A duration field (a TTL): whole seconds as an integer, or a string (`parse_duration_s`).
Duration = Annotated[
    int,
    PlainValidator(_duration),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_TTL_S},
                {"type": "string", "examples": ["90s", "12h", "30d", "P7DT12H"]},
            ]
        }
    ),
]


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
