"""Durations and timestamps as clients write them: `3600`, `"90s"`, `"12h"`, `"30d"`, `"P7DT1H"`."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from storage.errors import Invalid

_SIMPLE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)?\s*$")
_ISO = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?$"
)
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_s(value: object) -> int:
    """Whole seconds (at least 1) from an int or a duration string."""
    if isinstance(value, bool):
        raise Invalid("a duration must be seconds or a string like '30d'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _SIMPLE.match(value)):
        seconds = int(m.group(1)) * _UNIT_S[m.group(2) or "s"]
    elif isinstance(value, str) and value != "P" and (m := _ISO.match(value.strip().upper())):
        seconds = sum(int(m.group(k) or 0) * _UNIT_S[k] for k in ("w", "d", "h", "m", "s"))
    else:
        raise Invalid(f"cannot read {value!r} as a duration (e.g. 3600, '90s', '12h', 'P30D')")
    if seconds < 1:
        raise Invalid("a duration must be at least 1 second")
    return int(seconds)


def to_epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
