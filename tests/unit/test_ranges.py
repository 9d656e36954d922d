"""Range parsing and resolution (RFC 9110 §14), If-Range (§13.1.5) and the output's ETag."""

from __future__ import annotations

import pytest

from serve_app.ranges import (
    HUGE,
    RangeSpec,
    Span,
    entity_tag,
    if_range_allows,
    parse_range,
    resolve,
    unsatisfied_range,
)
from storage.records import Job


@pytest.mark.parametrize(
    ("header", "spec"),
    [
        ("bytes=0-499", RangeSpec(0, 499)),  # RFC 9110 §14.1.2's examples
        ("bytes=500-999", RangeSpec(500, 999)),
        ("bytes=-500", RangeSpec(None, suffix=500)),
        ("bytes=9500-", RangeSpec(9500)),
        ("bytes=0-0", RangeSpec(0, 0)),
        ("bytes=-1", RangeSpec(None, suffix=1)),
        ("bytes=-0", RangeSpec(None, suffix=0)),  # valid, and unsatisfiable
        ("Bytes=1-2", RangeSpec(1, 2)),  # the unit is case-insensitive
        ("BYTES=1-", RangeSpec(1)),
        ("  bytes=1-2  ", RangeSpec(1, 2)),
        ("bytes= 1-2 ", RangeSpec(1, 2)),
        ("bytes=1-2,", RangeSpec(1, 2)),  # empty list elements count for nothing (§5.6.1)
        ("bytes=, ,1-2", RangeSpec(1, 2)),
        ("bytes=007-010", RangeSpec(7, 10)),
        ("bytes=5-5", RangeSpec(5, 5)),
        (f"bytes=0-{'9' * 40}", RangeSpec(0, HUGE)),  # huge: past any output, never int()'d
        (f"bytes={'9' * 5000}-", RangeSpec(HUGE)),
        (f"bytes=-{'9' * 5000}", RangeSpec(None, suffix=HUGE)),
        ("bytes=999999999999999999-", RangeSpec(999_999_999_999_999_999)),
        (f"bytes={'0' * 12000}-", RangeSpec(0)),  # leading zeros count for nothing (a tester)
        (f"bytes={'0' * 34}1-{'0' * 40}2", RangeSpec(1, 2)),
        (f"bytes=-{'0' * 30}3", RangeSpec(None, suffix=3)),
    ],
)
def test_a_single_range_is_parsed(header: str, spec: RangeSpec) -> None:
    assert parse_range(header) == spec


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes=5-3",  # last before first: invalid
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=--5",
        "bytes=-",
        "bytes=1 - 2",  # no whitespace inside a range
        "bytes=+1-2",
        "bytes=-1-2",
        "bytes=1.5-2",
        "bytes=１-２",  # noqa: RUF001 (full-width digits are not DIGIT)
        "bytes=٣-٤",  # Arabic-Indic digits neither
        "items=1-2",  # another unit: MUST be ignored
        "bytes 1-2",
        "=1-2",
        "bytes=0-1,5-6",  # several ranges: ignored, the whole body
        "bytes=0-1, 0-1",
        "bytes=-1,-2",
        ",".join(["bytes=0-0"] + [f"{n}-{n}" for n in range(1, 1000)]),  # 1,000 ranges
        "bytes=0-1,x",
        "bytes=\x000-1",
    ],
)
def test_a_range_header_to_ignore_is_none(header: str | None) -> None:
    assert parse_range(header) is None


@pytest.mark.parametrize(
    ("spec", "size", "span"),
    [
        (RangeSpec(0, 499), 10_000, Span(0, 499, 10_000)),
        (RangeSpec(9500), 10_000, Span(9500, 9999, 10_000)),
        (RangeSpec(None, suffix=500), 10_000, Span(9500, 9999, 10_000)),
        (RangeSpec(0, 99_999), 10_000, Span(0, 9999, 10_000)),  # last past the end: clipped
        (RangeSpec(0, HUGE), 10, Span(0, 9, 10)),
        (RangeSpec(None, suffix=HUGE), 10, Span(0, 9, 10)),  # longer suffix: the whole body
        (RangeSpec(9, 9), 10, Span(9, 9, 10)),
        (RangeSpec(9), 10, Span(9, 9, 10)),
        (RangeSpec(None, suffix=1), 1, Span(0, 0, 1)),
    ],
)
def test_a_satisfiable_range_resolves_to_its_bytes(spec: RangeSpec, size: int, span: Span) -> None:
    assert resolve(spec, size) == span


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        (RangeSpec(10), 10),  # first at the end
        (RangeSpec(11, 20), 10),
        (RangeSpec(HUGE), 10),
        (RangeSpec(None, suffix=0), 10),  # bytes=-0
        (RangeSpec(0, 0), 0),  # an empty output has no byte to give
        (RangeSpec(None, suffix=5), 0),
        (RangeSpec(0), 0),
    ],
)
def test_an_unsatisfiable_range_resolves_to_none(spec: RangeSpec, size: int) -> None:
    assert resolve(spec, size) is None


def test_content_range_values() -> None:
    assert Span(0, 499, 1234).content_range() == "bytes 0-499/1234"
    assert Span(0, 499, 1234).length == 500
    assert unsatisfied_range(1234) == "bytes */1234"


def job(**changes: object) -> Job:
    fields: dict[str, object] = {"slot": 0, "created_at": 1_700_000_000.25, "updated_at": 0.0}
    return Job(namespace="acme", job_id="j1", **{**fields, **changes})  # type: ignore[arg-type]


def tag_of(job: Job, coding: str | None = None) -> str:
    return entity_tag(job, job.current_version, coding)


def test_the_etag_is_strong_and_changes_with_each_append_version_and_incarnation() -> None:
    tag = tag_of(job(output_seq=3, output_size=30))
    assert tag.startswith('"') and tag.endswith('"') and not tag.startswith("W/")
    assert tag_of(job(output_seq=4, output_size=31)) != tag
    assert tag_of(job(output_seq=3, output_size=30, output_version=2)) != tag
    recreated = job(output_seq=3, output_size=30, created_at=1_700_000_000.250001)
    assert tag_of(recreated) != tag
    # the status, progress or revision of the job do not change the bytes, so not the tag
    assert tag_of(job(output_seq=3, output_size=30, revision=9, progress=50.0)) == tag


def test_an_encoded_representation_has_its_own_etag() -> None:
    identity = tag_of(job(output_seq=3))
    gzip, zstd = tag_of(job(output_seq=3), "gzip"), tag_of(job(output_seq=3), "zstd")
    assert len({identity, gzip, zstd}) == 3
    assert all(t.startswith('"') and t.endswith('"') for t in (gzip, zstd))


@pytest.mark.parametrize(
    ("if_range", "allowed"),
    [
        (None, True),  # no If-Range: the Range counts
        ('"v1.3.abc"', True),
        (' "v1.3.abc" ', True),
        ('W/"v1.3.abc"', False),  # a weak tag never matches strongly
        ('"v1.4.abc"', False),
        ('"v1.3.abc-gzip"', False),
        ("v1.3.abc", False),
        ("Sat, 29 Oct 1994 19:43:31 GMT", False),  # a date: no Last-Modified is sent
        ("", False),
    ],
)
def test_if_range_allows_only_the_current_strong_tag(if_range: str | None, allowed: bool) -> None:
    assert if_range_allows(if_range, '"v1.3.abc"') is allowed
