"""Server-Sent Events: `GET /api/v1/jobs/{jobId}/stream`, resumable with Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from actors.feed import Event, EventKind, job_events
from actors.shard import Update
from actors.timestamps import iso
from serve_app import context
from serve_app.deps import Ns
from serve_app.models import chunk_text
from storage.errors import AosError, Invalid
from storage.records import Chunk, Job

router = APIRouter(prefix="/api/v1/jobs")

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


@router.get("/{job_id}/stream")
async def stream(
    job_id: str,
    ns: Ns,
    after: Annotated[int | None, Query(ge=0)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Output (id = seq), status, progress, then `end`; comments keep idle streams alive."""
    ctx = context.get()
    after_seq = _resume_point(after, last_event_id)
    job: Job = await ctx.call(ns, "get", job_id)  # 404 before the stream starts
    shard = ctx.shard(ns)

    async def watch(revision: int, pos: int, timeout_s: float) -> Update:
        ref = shard.watch.remote(ns, job_id, revision=revision, after_seq=pos, timeout_s=timeout_s)
        update: Update = await ref
        return update

    async def read(pos: int, limit: int) -> list[Chunk]:
        return await ctx.store.read_output(ns, job_id, after_seq=pos, limit=limit)

    async def body() -> AsyncIterator[str]:
        yield f"retry: {ctx.config.sse_retry_ms}\n\n"
        events = job_events(
            job, watch=watch, read=read, after_seq=after_seq, heartbeat_s=ctx.config.heartbeat_s
        )
        try:
            async for event in events:
                yield format_event(event)
        except AosError as exc:  # e.g. the job was deleted while we streamed
            yield _frame("error", {"code": exc.code, "message": exc.message})

    return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)


def format_event(event: Event) -> str:
    if event.kind is EventKind.HEARTBEAT:
        return ": keepalive\n\n"
    job = event.job
    if event.kind is EventKind.OUTPUT:
        chunk = event.chunk
        assert chunk is not None
        data = {
            "seq": chunk.seq,
            "offset": chunk.offset,
            "data": chunk_text(job, chunk.data),
            "encoding": "base64" if job.output_format.value == "binary" else "utf-8",
        }
        return _frame("output", data, event_id=chunk.seq)
    if event.kind is EventKind.PROGRESS:
        data = {"progress": job.progress, "estimatedCompletion": iso(job.estimated_completion)}
        return _frame("progress", data)
    payload = {"status": job.status.value, "outputSeq": job.output_seq, "error": job.error}
    return _frame(event.kind.value, payload)


def _frame(kind: str, data: dict[str, Any], *, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _resume_point(after: int | None, last_event_id: str | None) -> int:
    if after is not None:
        return after
    if last_event_id is None or not last_event_id.strip():
        return 0
    if not last_event_id.strip().isdigit():
        raise Invalid("Last-Event-ID must be the seq of an output event")
    return int(last_event_id.strip())
