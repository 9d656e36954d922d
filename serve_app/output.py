"""Output endpoints: the producer's append, the seed's JSON shape, and the raw byte stream.

Each takes `?version=N` (an output version of the job, `POST .../versions`; default: the
latest): a version the job does not have is 404, one that is not a positive integer 422.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from actors.json_document import document_error
from actors.limits import MAX_INT64, check_append_size, parse_decimal
from actors.pieces import Pieces
from actors.render import inline_answer_bytes, output_text
from actors.resume import ResumePoint, resume_after
from actors.timestamps import iso
from serve_app.budget import ByteBudget
from serve_app.deps import D, Deps, Ns
from serve_app.download import not_acceptable, raw_response
from serve_app.encoding import Coding, NotAcceptable, encode_bytes, negotiate
from serve_app.openapi import COMMON, responses
from storage.errors import RequestTimeout, TooLarge
from storage.records import Job, OutputFormat, OutputVersion

#: An append whose body sends nothing for this long is refused (408): it would hold its
#: connection, and what it sent of its budget, for as long as the client liked.
BODY_IDLE_S = 30.0
#: `/output`'s answer may be this many times the inline limit: base64 makes binary 4/3 of
#: its size; text full of control characters escaped (`\u0001`) would be 6 times.
INLINE_ANSWER_FACTOR = 2

#: `?version=N`: an output version of the job; the latest when not given.
Version = Annotated[int | None, Query(ge=1, le=MAX_INT64)]

router = APIRouter(prefix="/api/v1/jobs", responses=responses(*COMMON, 404))

#: The append's body is raw bytes, read by the handler (not a model), so the document says so.
_RAW_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("/{job_id}/output", responses=responses(408, 409), openapi_extra=_RAW_BODY)
async def append(
    job_id: str,
    request: Request,
    ns: Ns,
    deps: D,
    seq: Annotated[int | None, Query(ge=1, le=MAX_INT64)] = None,
    version: Version = None,
) -> dict[str, Any]:
    """Append the raw request body (up to `MAX_APPEND_BYTES`, 64 MiB), stored as chunks of at
    most the deployment's chunk size with consecutive seqs, all or none; `?seq=N` (the first
    chunk's) makes retries safe. The answer's `seq` is the last chunk's, `chunks` their count.
    `?version=N` must be the latest version, still open (409 when it is complete)."""
    with deps.appends.hold(ns) as take:
        pieces = await _read_pieces(request, deps.shards.pieces(), ns, deps.appends, take)
        ack = await deps.shards.append(ns, job_id, pieces, seq=seq, version=version)
    return {
        "seq": ack.seq,
        "offset": ack.offset,
        "size": ack.size,
        "chunks": ack.chunks,
        "version": ack.version,
    }


@router.get("/{job_id}/output", response_model=None, responses=responses(406))
async def output(
    job_id: str,
    request: Request,
    ns: Ns,
    deps: D,
    version: Version = None,
) -> Response:
    """The whole output of a version as one JSON value: text, base64 for binary jobs, the
    document itself for json jobs (while it is not one document, `output` is null and `text`
    holds it), in the coding `Accept-Encoding` prefers (`serve_app.encoding`; 406 if it
    refuses all, identity too). Over the inline limit: 413, before reading any output."""
    job = await deps.shards.get(ns, job_id)
    view = await deps.shards.version(job, version)
    limit = deps.config.max_inline_output_bytes
    if view.size > limit:
        raise TooLarge(
            f"the output is {view.size} bytes, over the {limit} bytes /output returns"
            f" inline; stream it from /api/v1/jobs/{job.job_id}/output/raw (Range works there)"
        )
    held = ExitStack()
    take = held.enter_context(deps.answers.hold(ns))
    try:
        take(view.size)
        response = await _inline(request, deps, job, view, take)
    except BaseException:
        held.close()
        raise
    return _Released(response, held.close)


async def _inline(
    request: Request, deps: Deps, job: Job, view: OutputVersion, take: Callable[[int], None]
) -> Response:
    """The `/output` answer, its bytes held by `take` before it is built."""
    data = b"".join([chunk.data async for chunk in deps.shards.output(view)])
    answer_size = inline_answer_bytes(job.output_format, data)
    most = INLINE_ANSWER_FACTOR * deps.config.max_inline_output_bytes
    if answer_size > most:
        raise TooLarge(
            f"the output as JSON would be {answer_size} bytes (escapes included), over the"
            f" {most} bytes /output answers; stream it from"
            f" /api/v1/jobs/{job.job_id}/output/raw"
        )
    take(answer_size)
    fields = {
        "format": job.output_format.value,
        "size": view.size,
        "completedAt": iso(view.completed_at),
        "status": job.status.value,
        "seq": view.last_seq,
        "version": view.version,
        "sha256": view.sha256,
    }
    accept_encoding = request.headers.get("accept-encoding")
    if job.output_format is not OutputFormat.JSON:
        document = {"output": output_text(job.output_format, data), **fields}
        return await encoded_body(_json_bytes(document), accept_encoding)
    return await encoded_body(await _json_document(data, fields), accept_encoding)


@router.get("/{job_id}/output/raw", responses=responses(406, 409, 416))
async def raw(
    job_id: str,
    request: Request,
    ns: Ns,
    deps: D,
    after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    version: Version = None,
) -> Response:
    """The output bytes of a version written so far, streamed page by page: `Range` (206,
    416), `If-Range`, `ETag`, `Accept-Encoding`; `?after=` for the chunks after a seq
    (`serve_app.download`), 409 past the output (`actors.resume`: not from it)."""
    job = await deps.shards.get(ns, job_id)
    view = await deps.shards.version(job, version)
    resume_after(job, view, ResumePoint(after))
    return raw_response(request, deps.shards, job, version=view, after=after)


# HEAD: the same headers, no body (HTTP's own meaning of HEAD, so not listed on its own).
router.add_api_route("/{job_id}/output/raw", raw, methods=["HEAD"], include_in_schema=False)


async def _json_document(data: bytes, fields: dict[str, Any]) -> bytes:
    """The answer for a json job: `data`, checked to be one JSON document, goes in as it is
    (never parsed into objects: memory is the bytes); when it is not one document (yet),
    `output` is null and `text` holds it."""
    if await document_error(_one(data)) is not None:
        return _json_bytes({"output": None, "text": data.decode("utf-8", "replace"), **fields})
    return b'{"output":' + data + b"," + _json_bytes(fields)[1:]


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _json_bytes(document: dict[str, Any]) -> bytes:
    """As Starlette's JSONResponse renders it."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


async def encoded_body(body: bytes, accept_encoding: str | None) -> Response:
    """A JSON `body` in the coding `accept_encoding` prefers (`Vary: Accept-Encoding`)."""
    headers = {"Vary": "Accept-Encoding"}
    try:
        coding = negotiate(accept_encoding, size_hint=len(body))
    except NotAcceptable:
        return not_acceptable(headers)
    if coding is not Coding.IDENTITY:
        headers["Content-Encoding"] = coding.value
    content = await encode_bytes(body, coding)
    return Response(content, media_type="application/json", headers=headers)


async def _read_pieces(
    request: Request, pieces: Pieces, ns: str, budget: ByteBudget, take: Callable[[int], None]
) -> Pieces:
    """The body, cut into chunks as it arrives. Refused (`TooLarge`) as soon as it is known
    to be over `MAX_APPEND_BYTES`; (`Overloaded`) when its declared length does not fit the
    replica's append budget now, or a part that arrives does not (`take` holds each part as
    it comes, so a body that never comes holds nothing); (`RequestTimeout`, 408) when no
    part arrives for `BODY_IDLE_S`."""
    declared = parse_decimal(request.headers.get("content-length", ""))
    if declared is not None:  # the server checked its form
        check_append_size(declared)
        budget.check(ns, declared)
    parts = aiter(request.stream())
    while True:
        try:
            async with asyncio.timeout(BODY_IDLE_S):
                part = await anext(parts)
        except StopAsyncIteration:
            return pieces
        except TimeoutError:
            raise RequestTimeout(
                f"no part of the body came for {BODY_IDLE_S:g} s; send it again"
            ) from None
        pieces.feed(part)  # first: a body over MAX_APPEND_BYTES is 413, whatever the budget
        take(len(part))


class _Released(Response):
    """`response`, calling `release` once it is sent (or its client is gone)."""

    def __init__(self, response: Response, release: Callable[[], object]) -> None:
        self.__dict__.update(response.__dict__)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
