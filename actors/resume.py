"""Where a reader resumes a job's output: SSE event ids, `?after=`, and the rule that a resume
point must lie in the output of this very job, as committed.

A job id can be deleted and submitted again, and a job can start a new output version (a
re-run): either way its output starts again at seq 1. The output a seq belongs to is
therefore one *incarnation*: the job's creation time (a token) and the version number, and
an event id carries it with the seq: `<seq>-<incarnation>`, e.g. `7-1a2b3c4d5ev2`. A bare
seq (`?after=7`, or the seq of a webhook body or an append's ack) is taken as the output
being read.

`resume_after(job, version, point)` refuses (`Conflict`) every point a client cannot have
reached in that version's committed output: a seq past its end, or an id of another
incarnation. Resuming there would silently skip output the client never saw (a stream
resumed "after 5" on a job at seq 2 would deliver 6 and lose 3 to 5), so the client is
told instead, before any event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from actors.limits import MAX_INT64
from storage.errors import Conflict, Invalid
from storage.records import Job, OutputVersion

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_POINT = re.compile(r"([0-9]{1,19})(?:-([0-9a-z]{1,16}v[0-9]{1,19}))?")


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Resume after output `seq`; `incarnation` None for a bare seq (this job's)."""

    seq: int
    incarnation: str | None = None


def incarnation(job: Job, version: int) -> str:
    """Output `version` of `job`: `<job token>v<version>`."""
    return f"{job_token(job)}v{version}"


def job_token(job: Job) -> str:
    """The job's creation time in microseconds, base 36: two jobs of one id are never
    created in the same microsecond (a delete commits between them)."""
    micros = round(job.created_at * 1_000_000)
    token = ""
    while True:
        micros, digit = divmod(micros, 36)
        token = _DIGITS[digit] + token
        if not micros:
            return token


def event_id(job: Job, version: int, seq: int) -> str:
    """The SSE `id` of output `seq` of `version` of `job`."""
    return f"{seq}-{incarnation(job, version)}"


def parse_resume_point(text: str, *, what: str) -> ResumePoint:
    """`<seq>` or `<seq>-<incarnation>` (surrounding spaces ignored); `Invalid` otherwise,
    naming `what` (e.g. "Last-Event-ID")."""
    found = _POINT.fullmatch(text.strip(" \t"))
    seq = int(found[1]) if found is not None else MAX_INT64 + 1
    if found is None or seq > MAX_INT64:
        raise Invalid(f"{what} must be an output event's id (<seq>-<incarnation>) or a seq")
    return ResumePoint(seq, found[2])


def resume_after(job: Job, version: OutputVersion, point: ResumePoint) -> int:
    """The seq to resume after: `point.seq`, when `point` lies in the committed output of
    `version` of `job`; `Conflict` when it does not (an id of another incarnation: another
    version, or an earlier job of this id; or a seq past the output)."""
    expected = incarnation(job, version.version)
    if point.incarnation is not None and point.incarnation != expected:
        raise Conflict(
            f"event id {point.seq}-{point.incarnation} is not from output version"
            f" {version.version} of job {job.job_id!r} ({expected}): it is from another"
            " version, or from an earlier job of this id; resume from the start, without it"
        )
    if point.seq > version.last_seq:
        raise Conflict(
            f"resume point {point.seq} is past output version {version.version} of job"
            f" {job.job_id!r}, which ends at seq {version.last_seq}: it is not from this"
            f" output; resume from a seq up to {version.last_seq}"
        )
    return point.seq
