"""Server-Sent Events: `GET /api/v1/jobs/{jobId}/stream`, resumable with Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from actors.feed import Event, EventKind
from actors.limits import MAX_INT64, parse_decimal
from serve_app.deps import D, Ns
from serve_app.openapi import COMMON, responses
from storage.errors import AosError, Invalid

router = APIRouter(prefix="/api/v1/jobs", responses=responses(*COMMON, 404))

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


@router.get("/{job_id}/stream")
async def stream(
    job_id: str,
    ns: Ns,
    deps: D,
    after: Annotated[int | None, Query(ge=0, le=MAX_INT64)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    version: Annotated[int | None, Query(ge=1, le=MAX_INT64)] = None,
) -> StreamingResponse:
    """Output of a version (`?version=N`, default: the latest; id = seq), status, progress,
    then `end` once that version is complete; comments keep idle streams alive."""
    after_seq = _resume_point(after, last_event_id)
    events = await deps.shards.events(  # a missing job or version is a 404 before the stream
        ns, job_id, after_seq=after_seq, heartbeat_s=deps.config.heartbeat_s, version=version
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
    """One SSE frame: `id` (output events: the chunk's seq), `event` (the kind), `data`."""
    if event.kind is EventKind.HEARTBEAT:
        return ": keepalive\n\n"
    event_id = event.chunk.seq if event.chunk is not None else None
    return _frame(event.kind.value, event.data(), event_id=event_id)


def _frame(kind: str, data: dict[str, Any], *, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _resume_point(after: int | None, last_event_id: str | None) -> int:
    if after is not None:
        return after
    if last_event_id is None or not last_event_id.strip():
        return 0
    seq = parse_decimal(last_event_id.strip())
    if seq is None or seq > MAX_INT64:
        raise Invalid("Last-Event-ID must be the seq of an output event")
    return seq
