"""Output endpoints: the producer's append, the seed's JSON shape, and the raw byte stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from actors.feed import replay
from actors.timestamps import iso
from serve_app import context
from serve_app.deps import Ns
from serve_app.models import chunk_text
from storage.errors import NotFound, TooLarge
from storage.records import Job, OutputFormat

router = APIRouter(prefix="/api/v1/jobs")

MEDIA_TYPES = {
    OutputFormat.TEXT: "text/plain; charset=utf-8",
    OutputFormat.JSON: "application/json",
    OutputFormat.BINARY: "application/octet-stream",
}


@router.post("/{job_id}/output")
async def append(
    job_id: str,
    request: Request,
    ns: Ns,
    seq: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """Append the raw request body as the next chunk; `?seq=N` makes retries safe."""
    ctx = context.get()
    data = await _read_capped(request, ctx.config.max_chunk_bytes)
    ack = await ctx.call(ns, "append", job_id, data, seq)
    return {"seq": ack.seq, "offset": ack.offset, "size": ack.size}


@router.get("/{job_id}/output")
async def output(job_id: str, ns: Ns, version: Annotated[int, Query(ge=1)] = 1) -> dict[str, Any]:
    """The whole output as one JSON value (text, or base64 for binary jobs)."""
    ctx = context.get()
    job = await _job_version(ns, job_id, version)
    if job.output_size > ctx.config.max_inline_output_bytes:
        raise TooLarge(f"the output is {job.output_size} bytes; stream it from /output/raw instead")
    data = b"".join([chunk.data async for chunk in _chunks(job, after_seq=0)])
    return {
        "output": chunk_text(job, data),
        "format": job.output_format.value,
        "size": job.output_size,
        "completedAt": iso(job.completed_at),
        "status": job.status.value,
        "seq": job.output_seq,
        "version": version,
    }


@router.get("/{job_id}/output/raw")
async def raw(
    job_id: str,
    ns: Ns,
    after: Annotated[int, Query(ge=0)] = 0,
    version: Annotated[int, Query(ge=1)] = 1,
) -> StreamingResponse:
    """The output bytes written so far (after chunk `after`), streamed page by page."""
    job = await _job_version(ns, job_id, version)
    headers = {"X-Output-Seq": str(job.output_seq), "X-Job-Status": job.status.value}
    if after == 0:
        headers["Content-Length"] = str(job.output_size)

    async def body() -> AsyncIterator[bytes]:
        async for chunk in _chunks(job, after_seq=after):
            yield chunk.data

    return StreamingResponse(body(), media_type=MEDIA_TYPES[job.output_format], headers=headers)


async def _job_version(ns: str, job_id: str, version: int) -> Job:
    job: Job = await context.get().call(ns, "get", job_id)
    if version != 1:  # one version per job until versioned outputs land (DESIGN-NOTES.md)
        raise NotFound(f"job {job_id!r} has no output version {version}")
    return job


def _chunks(job: Job, *, after_seq: int) -> AsyncIterator[Any]:
    store = context.get().store

    async def read(after: int, limit: int) -> list[Any]:
        return await store.read_output(job.namespace, job.job_id, after_seq=after, limit=limit)

    return replay(read, after_seq=after_seq, until_seq=job.output_seq)


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"an output chunk may be at most {limit} bytes; split it")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise TooLarge(f"an output chunk may be at most {limit} bytes; split it")
    return bytes(body)
