"""Byte ranges of the raw download (RFC 9110 §14) and the validators they depend on (§8.8.3,
§13.1.5): parsing `Range`, resolving it against the output's size, `If-Range`, the `ETag`.

Pure functions over header values; `serve_app.download` applies them to a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from actors.resume import job_token
from storage.records import Job, OutputVersion

RANGE_UNIT = "bytes"
#: A position longer than this many digits is past any output (and never fed to `int`,
#: which refuses over 4,300 digits): it stands for HUGE.
MAX_POSITION_DIGITS = 18
HUGE = 10**MAX_POSITION_DIGITS

_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One byte-range-spec: `first-last` (last None: to the end) or, with `first` None, the
    last `suffix` bytes (RFC 9110 §14.1.1)."""

    first: int | None
    last: int | None = None
    suffix: int = 0


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes `start` to `end` inclusive of an output of `size` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self) -> str:
        """The 206's `Content-Range` (RFC 9110 §14.4)."""
        return f"{RANGE_UNIT} {self.start}-{self.end}/{self.size}"


def parse_range(value: str | None) -> RangeSpec | None:
    """The one range a `Range` header asks for, or None when the header is to be ignored.

    RFC 9110 §14.2 lets a server ignore Range; we do (and answer 200 with the whole body)
    for an absent header, another unit than `bytes` (`items=1-2`: MUST ignore), a malformed
    one (`bytes=5-3`, `bytes=a-`, `bytes=`) and one of several ranges (`bytes=0-1,5-6`: no
    multipart/byteranges). Empty list elements and whitespace around them are allowed
    (§5.6.1); the unit is case-insensitive (§14.1).
    """
    if value is None:
        return None
    unit, sep, ranges = value.strip(_OWS).partition("=")
    if not sep or unit.lower() != RANGE_UNIT:
        return None
    parts = [part.strip(_OWS) for part in ranges.split(",")]
    specs = [part for part in parts if part]
    if len(specs) != 1:
        return None
    return _spec(specs[0])


def _spec(text: str) -> RangeSpec | None:
    if (suffix := _SUFFIX_RANGE.fullmatch(text)) is not None:
        return RangeSpec(None, suffix=_position(suffix[1]))
    if (ranged := _INT_RANGE.fullmatch(text)) is None:
        return None
    first = _position(ranged[1])
    last = _position(ranged[2]) if ranged[2] else None
    if last is not None and last < first:  # invalid (§14.1.1), so the header is ignored
        return None
    return RangeSpec(first, last)


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"  # leading zeros say nothing: 000...01 is 1
    return HUGE if len(digits) > MAX_POSITION_DIGITS else int(digits)


def resolve(spec: RangeSpec, size: int) -> Span | None:
    """The bytes `spec` selects of an output of `size` bytes, or None when it is
    unsatisfiable (416, RFC 9110 §14.1.1): a first position at or past the end, a suffix of
    0 bytes, any range of an empty output. A last position past the end stops at the end; a
    suffix longer than the output is the whole output."""
    if size <= 0:
        return None
    if spec.first is None:
        if spec.suffix <= 0:
            return None
        return Span(max(0, size - spec.suffix), size - 1, size)
    if spec.first >= size:
        return None
    last = size - 1 if spec.last is None else min(spec.last, size - 1)
    return Span(spec.first, last, size)


def unsatisfied_range(size: int) -> str:
    """A 416's `Content-Range` (RFC 9110 §14.4): the current length."""
    return f"{RANGE_UNIT} */{size}"


def entity_tag(job: Job, version: OutputVersion, coding: str | None = None) -> str:
    """The strong `ETag` of output `version` of `job` as committed (RFC 9110 §8.8.3).

    The bytes of a version only grow, one append at a time, so its last seq names them,
    and the job's token (`actors.resume.job_token`, its creation time) tells this job from
    a deleted one of the same id. A content coding is another representation, so its name
    is appended (the encoders are deterministic).
    """
    tag = f"v{version.version}.{version.last_seq}.{job_token(job)}"
    return f'"{tag}-{coding}"' if coding else f'"{tag}"'


def if_range_allows(value: str | None, etag: str) -> bool:
    """Whether a Range may be served under `If-Range: value` (RFC 9110 §13.1.5): with no
    If-Range, or an entity-tag strongly equal to `etag`. A weak tag never matches; an
    HTTP-date never does either, since no `Last-Modified` is sent."""
    if value is None:
        return True
    return value.strip(_OWS) == etag
