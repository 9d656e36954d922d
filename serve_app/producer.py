"""The producer's WebSocket: `GET /api/v1/jobs/{jobId}/output/ws`, one chunk per message,
one ack per chunk once it is durable, many chunks in flight.

The key, the namespace, `?seq=` and the job are checked before the upgrade: a refusal is
an HTTP response (401, 403, 404, 422, ...) with the usual JSON error body, sent through the
ASGI WebSocket Denial Response extension (uvicorn has it). `serve_app.guard` passes
WebSocket scopes through, so this module authenticates its handshake itself.

After the upgrade two tasks share the socket: one reads messages into an
`actors.pipeline.AppendPipeline` (it stops reading while the pipeline's queue is full),
the other sends `{"seq", "offset", "size"}` for each chunk as its round is acknowledged,
in order. The first bad chunk gets, after the acks of the chunks before it,
`{"error": {"code", "message"}}` and a close whose code says why (`errors.CLOSE_CODES`).
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from actors.commands import check_seq, check_version
from actors.limits import parse_decimal
from actors.pipeline import AppendPipeline
from actors.versions import check_appendable
from serve_app import errors
from serve_app.deps import D, Deps, resolve_namespace
from storage.errors import AosError, Invalid
from storage.records import Job, OutputFormat

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/jobs")

#: A browser cannot set `Authorization` on a WebSocket: it may offer the key as the
#: subprotocol `aos.bearer.<key>` beside `aos.v1`, and the server selects `aos.v1`.
PROTOCOL = "aos.v1"
BEARER_PROTOCOL_PREFIX = "aos.bearer."
_DENIAL_EXTENSION = "websocket.http.response"


@router.websocket("/{job_id}/output/ws")
async def produce(websocket: WebSocket, job_id: str, deps: D) -> None:
    """Stream a job's output: each message is its next chunk (text for a text or json job,
    binary for a binary job); `?seq=N` numbers the first one N (a resumed producer)."""
    try:
        namespace, first_seq, job = await _admit(websocket, deps, job_id)
    except Exception as exc:  # ours (401, 403, 404, ...) or a bug (500): refuse the upgrade
        await _refuse(websocket, exc)
        return
    protocol = PROTOCOL if PROTOCOL in websocket.scope.get("subprotocols", ()) else None
    await websocket.accept(subprotocol=protocol)
    binary = job.output_format is OutputFormat.BINARY
    # Every chunk of the connection goes to one version: the one asked for, else the latest.
    version = job.output_version
    async with AppendPipeline(
        deps.shards, namespace, job_id, first_seq=first_seq, version=version
    ) as pipeline:
        await _stream(websocket, pipeline, binary=binary)


@router.get("/{job_id}/output/ws", include_in_schema=False)
async def upgrade_required(job_id: str) -> JSONResponse:
    """A plain GET of the producer's URL: 426, saying to open it as a WebSocket
    (RFC 9110 §15.5.22)."""
    return errors.error_response(
        426,
        "upgrade_required",
        "open this URL as a WebSocket (RFC 6455): each message is the next output chunk",
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )


async def _admit(websocket: WebSocket, deps: Deps, job_id: str) -> tuple[str, int | None, Job]:
    """The namespace, the first chunk's seq and the job (`output_version`: the version its
    chunks go to), once the handshake passes every check the HTTP append makes before its
    body: `?version=N` must be the latest version, still open (409, 404)."""
    caller = await deps.keys.authenticate(_authorization(websocket))
    namespace = resolve_namespace(caller, websocket.query_params.get("namespace"))
    first_seq = _seq(websocket.query_params.get("seq"))
    version = _version(websocket.query_params.get("version"))
    job = await deps.shards.get(namespace, job_id)
    check_appendable(job, version)
    return namespace, first_seq, job


def _authorization(websocket: WebSocket) -> str | None:
    """`Authorization`, else the key a browser offered as a subprotocol."""
    header = websocket.headers.get("authorization")
    if header is not None:
        return header
    protocols: list[str] = websocket.scope.get("subprotocols", [])
    for protocol in protocols:
        if protocol.startswith(BEARER_PROTOCOL_PREFIX):
            return "Bearer " + protocol[len(BEARER_PROTOCOL_PREFIX) :]
    return None


def _seq(value: str | None) -> int | None:
    if value is None:
        return None
    seq = parse_decimal(value)
    if seq is None:
        raise Invalid("seq must be an integer from 1 to 2^63-1")
    return check_seq(seq)


def _version(value: str | None) -> int | None:
    if value is None:
        return None
    version = parse_decimal(value)
    if version is None:
        raise Invalid("version must be an integer from 1 to 2^63-1")
    return check_version(version)


async def _refuse(websocket: WebSocket, exc: BaseException) -> None:
    """Answer the handshake with the error's HTTP response; a server without the denial
    extension can only close, which it answers with 403."""
    if _DENIAL_EXTENSION in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(errors.to_response(exc))
    else:
        errors.error_body(exc)  # logs a bug
        await websocket.close(code=errors.close_code(exc))


async def _stream(websocket: WebSocket, pipeline: AppendPipeline, *, binary: bool) -> None:
    """Read chunks and send acks until the client leaves or a chunk fails."""
    reader = asyncio.create_task(_read(websocket, pipeline, binary=binary))
    writer = asyncio.create_task(_acknowledge(websocket, pipeline))
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and reader.exception() is None and not reader.result():
            await asyncio.wait({writer})  # a chunk failed: its acks, the error, the close
    finally:
        for task in (reader, writer):
            task.cancel()
        outcomes = await asyncio.gather(reader, writer, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):  # a bug: the server closes the socket (1011)
            log.error("producer WebSocket failed", exc_info=outcome)


async def _read(websocket: WebSocket, pipeline: AppendPipeline, *, binary: bool) -> bool:
    """Hand each message to the pipeline; True when the client left, False when the
    pipeline stopped taking chunks (a chunk failed)."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return True
        data = message.get("bytes")
        text = message.get("text")
        try:
            if (data is not None) != binary:
                pipeline.refuse(_wrong_type(binary))
                return False
            await pipeline.put(data if data is not None else (text or "").encode())
        except AosError:
            return False


def _wrong_type(binary: bool) -> Invalid:
    if binary:
        return Invalid("this is a binary job: send each chunk as a binary message")
    return Invalid("this is a text or json job: send each chunk as a text message")


async def _acknowledge(websocket: WebSocket, pipeline: AppendPipeline) -> None:
    """Send each chunk's ack in order; after a failed chunk, its error, then close."""
    try:
        async for result in pipeline.results():
            for ack in result.acks:
                await websocket.send_text(
                    json.dumps({"seq": ack.seq, "offset": ack.offset, "size": ack.size})
                )
            if result.error is not None:
                await _close_with(websocket, result.error)
                return
    except (WebSocketDisconnect, OSError):
        return  # the client left: nothing more to tell it
    except Exception as exc:  # a bug: say so (logged) and close
        await _close_with(websocket, exc)


async def _close_with(websocket: WebSocket, exc: BaseException) -> None:
    body = errors.error_body(exc)
    await websocket.send_text(json.dumps(body))
    await websocket.close(code=errors.close_code(exc), reason=body["error"]["code"])
