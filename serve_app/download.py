"""The raw download's answer: the whole output (maybe encoded), one byte range of it, or the
chunks after a seq, as headers and a body streamed from the store page by page.

`GET /api/v1/jobs/{jobId}/output/raw` (`serve_app.output`) builds its response here:

- `Range: bytes=a-b | a- | -n` (RFC 9110 §14.1.2) on the whole output: 206 with
  `Content-Range` and exactly those bytes, in the identity coding; a range past the end 416
  with `Content-Range: bytes */<size>`. A malformed Range, another unit, several ranges, or
  an `If-Range` that does not match the `ETag` (§13.1.5) is ignored: 200, the whole body.
  The range reads from the chunk holding its first byte (an index look-up, no scan).
- `If-None-Match` naming this version's `ETag` as it is now (any coding's, or `*`): 304
  (RFC 9110 §13.1.2, before any Range).
- otherwise 200, in the coding `Accept-Encoding` prefers (`serve_app.encoding`; 406 when it
  refuses every coding, identity included).
- `?after=N` (N >= 1) answers the chunks after seq N: a cursor in chunks, not bytes, so
  Range and If-Range are ignored there and it says `Accept-Ranges: none`; it has no ETag.

The answer is of one output version (`?version=`, default the latest); its size is the
committed output's when the job was read: a running job's range covers what was committed
then. `HEAD` answers the same headers without reading the output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from actors.shard_client import ShardClient
from serve_app.encoding import Coding, NotAcceptable, encode_stream, identity_acceptable, negotiate
from serve_app.errors import error_response
from serve_app.etags import parse_if_none_match
from serve_app.ranges import (
    Span,
    entity_tag,
    if_range_allows,
    parse_range,
    resolve,
    unsatisfied_range,
)
from storage.records import Job, OutputFormat, OutputVersion

MEDIA_TYPES = {
    OutputFormat.TEXT: "text/plain; charset=utf-8",
    OutputFormat.JSON: "application/json",
    OutputFormat.BINARY: "application/octet-stream",
}


def raw_response(
    request: Request, shards: ShardClient, job: Job, *, version: OutputVersion, after: int
) -> Response:
    """The answer to a GET or HEAD of output `version` of `job` (the module's docstring says
    which)."""
    headers = {
        "X-Output-Seq": str(version.last_seq),
        "X-Output-Version": str(version.version),
        "X-Job-Status": job.status.value,
        "Vary": "Accept-Encoding",
        "Accept-Ranges": "none" if after else "bytes",
    }
    accept_encoding = request.headers.get("accept-encoding")
    if after:
        return _whole(request, shards, job, version, headers, accept_encoding, after=after)
    etag = headers["ETag"] = entity_tag(job, version)
    unchanged = _unchanged(request, etag)
    if unchanged is not None:
        headers["ETag"] = unchanged
        return Response(status_code=304, headers=headers)
    spec = parse_range(request.headers.get("range"))
    if (
        spec is not None
        and if_range_allows(request.headers.get("if-range"), etag)
        and identity_acceptable(accept_encoding)
    ):
        span = resolve(spec, version.size)
        if span is None:
            return _unsatisfiable(version.size, headers)
        return _partial(request, shards, job, version, span, headers)
    return _whole(request, shards, job, version, headers, accept_encoding)


def _whole(
    request: Request,
    shards: ShardClient,
    job: Job,
    version: OutputVersion,
    headers: dict[str, str],
    accept_encoding: str | None,
    *,
    after: int = 0,
) -> Response:
    """200: the output (after chunk `after`) in the negotiated coding, or 406."""
    size = None if after else version.size
    try:
        coding = negotiate(accept_encoding, size_hint=size)
    except NotAcceptable:
        return not_acceptable(headers)
    if coding is Coding.IDENTITY:
        if size is not None:
            headers["Content-Length"] = str(size)
    else:
        headers["Content-Encoding"] = coding.value
        if "ETag" in headers:
            headers["ETag"] = entity_tag(job, version, coding.value)

    async def body() -> AsyncIterator[bytes]:
        async for chunk in shards.output(version, after_seq=after):
            yield chunk.data

    return _streamed(request, 200, encode_stream(body(), coding), job, headers)


def _unchanged(request: Request, etag: str) -> str | None:
    """The tag an `If-None-Match` matched (RFC 9110 §13.1.2, weak comparison; evaluated
    before Range, §13.2.2), of any coding of this version as it is now; None otherwise."""
    condition = parse_if_none_match(request.headers.getlist("if-none-match"))
    if condition is None:
        return None
    if condition.any:
        return etag
    opaque = etag.strip('"')
    ours = {opaque, *(f"{opaque}-{coding.value}" for coding in (Coding.ZSTD, Coding.GZIP))}
    return next((str(tag) for tag in condition.tags if tag.opaque in ours), None)


def not_acceptable(headers: dict[str, str]) -> Response:
    """406 (RFC 9110 §15.5.7): `Accept-Encoding` refused every coding, identity too."""
    message = "Accept-Encoding refuses every coding offered here: zstd, gzip and identity"
    return error_response(406, "not_acceptable", message, headers=headers)


def _partial(
    request: Request,
    shards: ShardClient,
    job: Job,
    version: OutputVersion,
    span: Span,
    headers: dict[str, str],
) -> Response:
    """206: the bytes of `span`, read from the chunk holding its first byte."""
    headers["Content-Range"] = span.content_range()
    headers["Content-Length"] = str(span.length)

    async def body() -> AsyncIterator[bytes]:
        async for chunk in shards.output(version, span=(span.start, span.end + 1)):
            low = max(span.start - chunk.offset, 0)
            high = min(span.end + 1 - chunk.offset, len(chunk.data))
            if high > low:
                yield chunk.data[low:high]
            if chunk.end > span.end:
                return

    return _streamed(request, 206, body(), job, headers)


def _unsatisfiable(size: int, headers: dict[str, str]) -> Response:
    headers["Content-Range"] = unsatisfied_range(size)
    message = f"the range is past the end of the output ({size} bytes)"
    return error_response(416, "range_not_satisfiable", message, headers=headers)


def _streamed(
    request: Request,
    status: int,
    body: AsyncIterator[bytes],
    job: Job,
    headers: dict[str, str],
) -> Response:
    """`body` streamed with `headers`; for HEAD, the headers alone (the body is never read)."""
    if request.method == "HEAD":
        body = _nothing()
    media_type = MEDIA_TYPES[job.output_format]
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=headers)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""
