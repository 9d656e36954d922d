"""Output endpoints: the producer's append, the seed's JSON shape, and the raw byte stream."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from actors.limits import MAX_INT64, check_append_size, parse_decimal
from actors.pieces import Pieces
from actors.render import output_text
from actors.resume import ResumePoint, resume_after
from actors.timestamps import iso
from serve_app.deps import D, Ns
from serve_app.download import not_acceptable, raw_response
from serve_app.encoding import Coding, NotAcceptable, encode_bytes, negotiate
from serve_app.openapi import COMMON, responses
from storage.errors import NotFound, TooLarge
from storage.records import Job

router = APIRouter(prefix="/api/v1/jobs", responses=responses(*COMMON, 404))

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
    """Append the raw request body (up to `MAX_APPEND_BYTES`, 64 MiB), stored as chunks of at
    most the deployment's chunk size with consecutive seqs, all or none; `?seq=N` (the first
    chunk's) makes retries safe. The answer's `seq` is the last chunk's, `chunks` their count."""
    pieces = await _read_pieces(request, deps.shards.pieces())
    ack = await deps.shards.append(ns, job_id, pieces, seq=seq)
    return {"seq": ack.seq, "offset": ack.offset, "size": ack.size, "chunks": ack.chunks}


@router.get("/{job_id}/output", response_model=None, responses=responses(406))
async def output(
    job_id: str,
    request: Request,
    ns: Ns,
    deps: D,
    version: Annotated[int, Query(ge=1, le=MAX_INT64)] = 1,
) -> Response:
    """The whole output as one JSON value (text, or base64 for binary jobs), in the coding
    `Accept-Encoding` prefers (`serve_app.encoding`; 406 if it refuses all, identity too)."""
    job = await _job_version(deps, ns, job_id, version)
    limit = deps.config.max_inline_output_bytes
    if job.output_size > limit:
        raise TooLarge(
            f"the output is {job.output_size} bytes, over the {limit} bytes /output returns"
            f" inline; stream it from /api/v1/jobs/{job.job_id}/output/raw (Range works there)"
        )
    data = b"".join([chunk.data async for chunk in deps.shards.output(job)])
    document = {
        "output": output_text(job.output_format, data),
        "format": job.output_format.value,
        "size": job.output_size,
        "completedAt": iso(job.completed_at),
        "status": job.status.value,
        "seq": job.output_seq,
        "version": version,
    }
    return await encoded_json(document, request.headers.get("accept-encoding"))


@router.get("/{job_id}/output/raw", responses=responses(406, 409, 416))
async def raw(
    job_id: str,
    request: Request,
    ns: Ns,
    deps: D,
    after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    version: Annotated[int, Query(ge=1, le=MAX_INT64)] = 1,
) -> Response:
    """The output bytes written so far, streamed page by page: `Range` (206, 416),
    `If-Range`, `ETag`, `Accept-Encoding`; `?after=` for the chunks after a seq
    (`serve_app.download`), 409 past the output (`actors.resume`: not from this job)."""
    job = await _job_version(deps, ns, job_id, version)
    resume_after(job, ResumePoint(after))
    return raw_response(request, deps.shards, job, version=version, after=after)


# HEAD: the same headers, no body (HTTP's own meaning of HEAD, so not listed on its own).
router.add_api_route("/{job_id}/output/raw", raw, methods=["HEAD"], include_in_schema=False)


async def _job_version(deps: D, ns: str, job_id: str, version: int) -> Job:
    job = await deps.shards.get(ns, job_id)
    if version != 1:  # one version per job until versioned outputs land (DESIGN-NOTES.md)
        raise NotFound(f"job {job_id!r} has no output version {version}")
    return job


async def encoded_json(document: dict[str, Any], accept_encoding: str | None) -> Response:
    """`document` as JSON in the coding `accept_encoding` prefers (`Vary: Accept-Encoding`)."""
    body = bytes(JSONResponse(document).body)
    headers = {"Vary": "Accept-Encoding"}
    try:
        coding = negotiate(accept_encoding, size_hint=len(body))
    except NotAcceptable:
        return not_acceptable(headers)
    if coding is not Coding.IDENTITY:
        headers["Content-Encoding"] = coding.value
    content = await encode_bytes(body, coding)
    return Response(content, media_type="application/json", headers=headers)


async def _read_pieces(request: Request, pieces: Pieces) -> Pieces:
    """The body, cut into chunks as it arrives; refused (`TooLarge`) as soon as it is known
    to be over `MAX_APPEND_BYTES`."""
    declared = parse_decimal(request.headers.get("content-length", ""))
    if declared is not None:  # the server checked its form
        check_append_size(declared)
    async for part in request.stream():
        pieces.feed(part)
    return pieces
