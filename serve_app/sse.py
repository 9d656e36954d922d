"""Server-Sent Events: `GET /api/v1/jobs/{jobId}/stream`, resumable with Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from actors import resume
from actors.feed import Event, EventKind
from actors.resume import ResumePoint
from serve_app.deps import D, Ns
from serve_app.openapi import COMMON, responses
from serve_app.output import Version
from storage.errors import AosError

router = APIRouter(prefix="/api/v1/jobs", responses=responses(*COMMON, 404))

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


@router.get("/{job_id}/stream", responses=responses(409))
async def stream(
    job_id: str,
    ns: Ns,
    deps: D,
    after: Annotated[
        str | None,
        Query(description="Resume after this output event id (`<seq>-<incarnation>`) or seq."),
    ] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    version: Version = None,
) -> StreamingResponse:
    """Output of a version (`?version=N`, default: the latest; id = `<seq>-<incarnation>`),
    status, progress, then `end` once that version is complete; comments keep idle streams
    alive. A resume point outside that output is 409 (`actors.resume`)."""
    events = await deps.shards.events(  # a missing job or version is a 404 before the stream
        ns,
        job_id,
        after_seq=_resume_point(after, last_event_id),
        heartbeat_s=deps.config.heartbeat_s,
        version=version,
    )

    async def body() -> AsyncIterator[str]:
        yield f"retry: {deps.config.sse_retry_ms}\n\n"
        try:
            async for event in events:
                yield format_event(event)
        except AosError as exc:  # e.g. the job was deleted while we streamed
            yield _frame("error", {"code": exc.code, "message": exc.message})

    return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)


def format_event(event: Event) -> str:
    """One SSE frame: `id` (output events: `actors.resume.event_id`), `event` (the kind),
    `data`."""
    if event.kind is EventKind.HEARTBEAT:
        return ": keepalive\n\n"
    chunk = event.chunk
    event_id = resume.event_id(event.job, chunk.version, chunk.seq) if chunk else None
    return _frame(event.kind.value, event.data(), event_id=event_id)


def _frame(kind: str, data: dict[str, Any], *, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _resume_point(after: str | None, last_event_id: str | None) -> ResumePoint:
    """`?after=` over `Last-Event-ID` (EventSource sends the last id it saw); an empty
    `Last-Event-ID` is none (the HTML standard's reset)."""
    if after is not None:
        return resume.parse_resume_point(after, what="?after=")
    if last_event_id is None or not last_event_id.strip():
        return ResumePoint(0)
    return resume.parse_resume_point(last_event_id, what="Last-Event-ID")
