"""A job's events in order, for any transport: replay from the store, then live from the shard.

The SSE endpoint and the direct Python client both read a job through this one
generator, so "resume after seq N" means the same everywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from actors.limits import MAX_INT64
from actors.render import event_json
from actors.shard_types import Update
from storage.errors import Conflict
from storage.records import Chunk, Job

#: The most chunks one store read returns while replaying (its bytes are bounded by the
#: reader: `actors.limits.OUTPUT_PAGE_BYTES`).
MAX_PAGE_CHUNKS = 512

Watch = Callable[[int, int, float], Awaitable[Update]]  # (revision, after_seq, timeout_s)
Read = Callable[[int, int], Awaitable[list[Chunk]]]  # (after_seq, limit)


class EventKind(StrEnum):
    OUTPUT = "output"
    STATUS = "status"
    PROGRESS = "progress"
    END = "end"
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    job: Job
    chunk: Chunk | None = None

    def data(self) -> dict[str, Any]:
        """The event's JSON, as an SSE `data:` line carries it (`actors.render`)."""
        return event_json(self.kind.value, self.job, self.chunk)


async def job_events(
    job: Job,
    *,
    watch: Watch,
    read: Read,
    after_seq: int = 0,
    heartbeat_s: float = 15.0,
    version: int = 1,
) -> AsyncIterator[Event]:
    """Output of `version` (`read` reads it) after `after_seq`, then status/progress
    changes, then `end` once that version is complete: the job finished with it, or a
    later version started (then the rest of it is read from the store).

    Yields a HEARTBEAT when nothing happened for `heartbeat_s`. `after_seq` must lie in
    `job`'s output (`actors.resume.resume_after`). Raises `Conflict` when the job is
    deleted and submitted again meanwhile: the new job's output is not this one's.
    """
    pos = after_seq
    sent_status, sent_progress = None, None
    while True:
        latest = job.output_version == version
        until = job.output_seq if latest else MAX_INT64  # an earlier version: all of it
        async for chunk in replay(read, after_seq=pos, until_seq=until):
            yield Event(EventKind.OUTPUT, job, chunk)
            pos = chunk.seq
        if job.status != sent_status:
            sent_status = job.status
            yield Event(EventKind.STATUS, job)
        if (job.progress, job.estimated_completion) != sent_progress:
            sent_progress = (job.progress, job.estimated_completion)
            yield Event(EventKind.PROGRESS, job)
        if not latest or (job.status.terminal and pos >= job.output_seq):
            yield Event(EventKind.END, job)
            return
        update = await watch(job.revision, pos, heartbeat_s)
        if update.job.created_at != job.created_at:  # its output starts again at seq 1
            raise Conflict(f"job {job.job_id!r} was deleted and submitted again while read")
        if update.job.revision == job.revision and update.job.output_seq <= pos:
            yield Event(EventKind.HEARTBEAT, job)
        job = update.job
        for chunk in update.chunks:
            if chunk.version == version and chunk.seq == pos + 1 and chunk.seq <= job.output_seq:
                yield Event(EventKind.OUTPUT, job, chunk)
                pos = chunk.seq


async def replay(read: Read, *, after_seq: int, until_seq: int) -> AsyncIterator[Chunk]:
    """Chunks after_seq < seq <= until_seq from the store, a page (at most MAX_PAGE_CHUNKS,
    bytes bounded by `read`) at a time."""
    pos = after_seq
    while pos < until_seq:
        chunks = await read(pos, min(MAX_PAGE_CHUNKS, until_seq - pos))
        if not chunks:
            return
        for chunk in chunks:
            if chunk.seq > until_seq:
                return
            yield chunk
            pos = chunk.seq
