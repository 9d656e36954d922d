"""Output endpoints: the producer's append, the seed's JSON shape, and the raw byte stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from actors.limits import MAX_INT64, check_chunk_size, parse_decimal
from actors.render import output_text
from actors.resume import ResumePoint, resume_after
from actors.timestamps import iso
from serve_app.deps import D, Ns
from serve_app.openapi import COMMON, responses
from storage.errors import NotFound, TooLarge
from storage.records import Job, OutputFormat

router = APIRouter(prefix="/api/v1/jobs", responses=responses(*COMMON, 404))

MEDIA_TYPES = {
    OutputFormat.TEXT: "text/plain; charset=utf-8",
    OutputFormat.JSON: "application/json",
    OutputFormat.BINARY: "application/octet-stream",
}


#: The append's body is raw bytes, read by the handler (not a model), so the document says so.
_RAW_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("/{job_id}/output", responses=responses(409), openapi_extra=_RAW_BODY)
async def append(
    job_id: str,
    request: Request,
    ns: Ns,
    deps: D,
    seq: Annotated[int | None, Query(ge=1, le=MAX_INT64)] = None,
) -> dict[str, Any]:
    """Append the raw request body as the next chunk; `?seq=N` makes retries safe."""
    data = await _read_capped(request, deps.shards.max_chunk_bytes)
    ack = await deps.shards.append(ns, job_id, data, seq=seq)
    return {"seq": ack.seq, "offset": ack.offset, "size": ack.size}


@router.get("/{job_id}/output")
async def output(
    job_id: str, ns: Ns, deps: D, version: Annotated[int, Query(ge=1, le=MAX_INT64)] = 1
) -> dict[str, Any]:
    """The whole output as one JSON value (text, or base64 for binary jobs)."""
    job = await _job_version(deps, ns, job_id, version)
    if job.output_size > deps.config.max_inline_output_bytes:
        raise TooLarge(f"the output is {job.output_size} bytes; stream it from /output/raw instead")
    data = b"".join([chunk.data async for chunk in deps.shards.output(job)])
    return {
        "output": output_text(job.output_format, data),
        "format": job.output_format.value,
        "size": job.output_size,
        "completedAt": iso(job.completed_at),
        "status": job.status.value,
        "seq": job.output_seq,
        "version": version,
    }


@router.get("/{job_id}/output/raw", responses=responses(409))
async def raw(
    job_id: str,
    ns: Ns,
    deps: D,
    after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    version: Annotated[int, Query(ge=1, le=MAX_INT64)] = 1,
) -> StreamingResponse:
    """The output bytes written so far (after chunk `after`), streamed page by page; 409
    for an `after` past the output (`actors.resume`: it is not from this job)."""
    job = await _job_version(deps, ns, job_id, version)
    resume_after(job, ResumePoint(after))
    headers = {"X-Output-Seq": str(job.output_seq), "X-Job-Status": job.status.value}
    if after == 0:
        headers["Content-Length"] = str(job.output_size)

    async def body() -> AsyncIterator[bytes]:
        async for chunk in deps.shards.output(job, after_seq=after):
            yield chunk.data

    return StreamingResponse(body(), media_type=MEDIA_TYPES[job.output_format], headers=headers)


async def _job_version(deps: D, ns: str, job_id: str, version: int) -> Job:
    job = await deps.shards.get(ns, job_id)
    if version != 1:  # one version per job until versioned outputs land (DESIGN-NOTES.md)
        raise NotFound(f"job {job_id!r} has no output version {version}")
    return job


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused (`TooLarge`) as soon as it is known to be over `limit` bytes."""
    declared = parse_decimal(request.headers.get("content-length", ""))
    if declared is not None:  # the server checked its form
        check_chunk_size(declared, limit)
    body = bytearray()
    async for part in request.stream():
        body += part
        check_chunk_size(len(body), limit)
    return bytes(body)
