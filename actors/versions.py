"""A job's output versions: which one takes appends, and the record of a re-run.

Version 1 starts with the job; `Shard.start_version` starts each next one (a re-run). Only
the latest version takes output, and only while the job runs: an earlier version is
complete, and so is the latest once the job finished.
"""

from __future__ import annotations

from dataclasses import replace

from actors.limits import MAX_OUTPUT_VERSIONS
from storage.errors import Conflict, NotFound
from storage.records import Job, JobStatus, OutputVersion


def open_and_empty(job: Job) -> bool:
    """The latest output version has no output yet and takes appends."""
    return not job.status.terminal and job.output_seq == 0


def check_latest(job: Job, version: int | None) -> None:
    """`version` (None: the latest) is the job's latest output version: `NotFound` for a
    version it does not have, `Conflict` for an earlier one (complete)."""
    if version is None or version == job.output_version:
        return
    if version > job.output_version:
        raise NotFound(f"job {job.job_id!r} has no output version {version}")
    raise Conflict(
        f"output version {version} of job {job.job_id!r} is complete; the latest is"
        f" {job.output_version}"
    )


def check_appendable(job: Job, version: int | None) -> None:
    """Output may go to `version` (None: the latest): it is the latest, and the job runs."""
    check_latest(job, version)
    if job.status.terminal:
        raise Conflict(
            f"cannot append output to job {job.job_id!r}: it is {job.status.value}, and its"
            f" output version {job.output_version} is complete"
        )


def next_version(job: Job, *, sha256: str, now: float) -> tuple[OutputVersion, Job]:
    """The latest version of `job`, completed (`sha256` of its bytes; completed when the job
    finished, or `now`), and the job running its next version, started `now`, empty. The
    job runs again from scratch: progress 0, no completion, error or expiry. `Conflict`
    past `MAX_OUTPUT_VERSIONS`."""
    if job.output_version >= MAX_OUTPUT_VERSIONS:
        raise Conflict(
            f"job {job.job_id!r} has {job.output_version} output versions, the most a job may"
            " have; submit a new job"
        )
    done = replace(job.current_version, completed_at=job.completed_at or now, sha256=sha256)
    rerun = job.evolve(
        status=JobStatus.RUNNING,
        progress=0.0,
        estimated_completion=None,
        completed_at=None,
        error=None,
        expires_at=None,
        updated_at=now,
        output_version=job.output_version + 1,
        output_version_at=now,
        output_seq=0,
        output_size=0,
        output_sha256=None,
    )
    return done, rerun
