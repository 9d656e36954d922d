"""Server-Sent Events: `GET /api/v1/jobs/{jobId}/stream`, resumable with Last-Event-ID.

A stream is held open for as long as its client likes, so what one holds is what 10,000
of them hold in a replica (DESIGN-NOTES "Ten thousand streams"). FastAPI's way through a
route keeps a stack of frames, exit stacks and exception wrappers alive for the whole
stream, and `StreamingResponse` two more tasks and an anyio task group (uvicorn says ASGI
2.3, where only `receive` tells of a disconnect). So a well-formed request is served by
`StreamDoor`, a middleware inside the guard, before FastAPI routes it: the same checks in
the same order, the same `EventStream` response (one task besides the request's own). A
request it does not recognise as plainly well-formed (an odd `?version=`) goes on to the
FastAPI route, which gives the very same answers and documents the endpoint in OpenAPI.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from starlette.datastructures import Headers, QueryParams
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from actors import resume
from actors.feed import Event, EventKind
from actors.limits import MAX_INT64
from actors.resume import ResumePoint
from serve_app import errors
from serve_app.deps import D, Deps, Ns, of, resolve_namespace
from serve_app.openapi import COMMON, responses
from serve_app.output import Version
from serve_app.request_metrics import flat_routes
from storage.errors import AosError

router = APIRouter(prefix="/api/v1/jobs", responses=responses(*COMMON, 404))

PATH = "/api/v1/jobs/{job_id}/stream"
#: An ASGI extension (`scope["extensions"]`) of the replicas' stream server
#: (serve_app/stream_server.py): its own `send`, which takes a response's body messages
#: once its head went out through the app's `send`.
BODY_SEND = "aos.body_send"
MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
#: `{job_id}` as Starlette matches it (`[^/]+` of the decoded path).
_PATH = re.compile(r"/api/v1/jobs/([^/]+)/stream")
#: A `?version=` taken without pydantic: 1 to MAX_INT64, no sign, zero or space.
_PLAIN_VERSION = re.compile(r"[1-9][0-9]{0,18}")


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
    return await open_stream(deps, ns, job_id, after, last_event_id, version)


async def open_stream(
    deps: Deps,
    namespace: str,
    job_id: str,
    after: str | None,
    last_event_id: str | None,
    version: int | None,
) -> EventStream:
    """The stream's response, once its job, version and resume point are found good:
    `NotFound`, `Conflict` (`ShardClient.events`) or `Invalid` (a resume point) before."""
    events = await deps.shards.events(
        namespace,
        job_id,
        after_seq=_resume_point(after, last_event_id),
        heartbeat_s=deps.config.heartbeat_s,
        version=version,
    )
    return EventStream(events, deps.config.sse_retry_ms)


class EventStream(StreamingResponse):
    """The frames of `events` as `StreamingResponse` of `text/event-stream` sent them (the
    same head and body: `retry:`, the events, an `error` frame if the job fails the
    stream), holding less while open: no generator of frames, shared headers, and under
    ASGI < 2.4 one task listening for the disconnect while the request's own task writes
    (`until_disconnect`) where Starlette runs an anyio task group of two tasks of its own."""

    media_type = MEDIA_TYPE

    def __init__(self, events: AsyncIterator[Event], retry_ms: int) -> None:
        self.events, self.retry_ms = events, retry_ms
        self.status_code = 200
        self.background = None  # FastAPI may set its background tasks here
        self.raw_headers = list(_RAW_HEADERS)
        self.frames_send: Send | None = None

    async def stream_response(self, send: Send) -> None:
        """The head and the last message through `send`, the frames between through the
        server's own `send` when it offers one (`BODY_SEND`): the middlewares only watch
        the head, and each wrapper was a coroutine more per frame."""
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        frames_send = self.frames_send or send
        more = True
        retry = f"retry: {self.retry_ms}\n\n".encode()
        await frames_send({"type": "http.response.body", "body": retry, "more_body": more})
        try:
            async for event in self.events:
                frame = FRAMES.of(event)
                await frames_send({"type": "http.response.body", "body": frame, "more_body": more})
        except AosError as exc:  # e.g. the job was deleted while we streamed
            error = _frame("error", {"code": exc.code, "message": exc.message}).encode()
            await frames_send({"type": "http.response.body", "body": error, "more_body": more})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.frames_send = scope.get("extensions", {}).get(BODY_SEND)
        asgi = scope.get("asgi", {}).get("spec_version", "2.0")
        if tuple(map(int, asgi.split("."))) >= (2, 4):  # a write to a closed connection raises
            await super().__call__(scope, receive, send)
            return
        await until_disconnect(self.stream_response(send), receive)
        if self.background is not None:
            await self.background()


class Frames:
    """The newest events' frames, by the identity of their job and chunk: the streams of a
    job in one replica are handed the very same `Job` and `Chunk` objects by the watch hub
    (actors/watch_hub.py), so each frame is rendered (`format_event`) once, not once per
    stream. Holds frames of at most `max_bytes` in all (and their events), oldest out first."""

    def __init__(self, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._frames: dict[tuple[EventKind, int, int], tuple[Event, bytes]] = {}
        self._bytes = 0

    def of(self, event: Event) -> bytes:
        """`format_event(event)`, encoded."""
        key = (event.kind, id(event.job), id(event.chunk))
        held = self._frames.get(key)
        if held is not None:  # its job and chunk are held alive: their ids are theirs alone
            return held[1]
        frame = format_event(event).encode()
        while self._frames and self._bytes + len(frame) > self.max_bytes:
            self._bytes -= len(self._frames.pop(next(iter(self._frames)))[1])
        if len(frame) <= self.max_bytes:
            self._frames[key] = (event, frame)
            self._bytes += len(frame)
        return frame


#: This process's frames (a replica's streams share them).
FRAMES = Frames()


_RAW_HEADERS = StreamingResponse(iter(()), media_type=MEDIA_TYPE, headers=HEADERS).raw_headers


async def until_disconnect(work: Awaitable[None], receive: Receive) -> None:
    """Await `work` in this task until it is done or `receive` says `http.disconnect`,
    which cancels it (as Starlette's task group did; the caller sees a normal return). A
    cancellation from elsewhere is raised as ever (the `asyncio.timeout` way: `uncancel`)."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("until_disconnect runs in a task")
    gone = False

    async def listen() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    listener = asyncio.ensure_future(listen())
    try:
        await work
    except asyncio.CancelledError:
        if not gone or task.uncancel() > 0:
            raise
    finally:
        listener.cancel()


class _Asked(NamedTuple):
    job_id: str
    namespace: str | None
    after: str | None
    last_event_id: str | None
    version: int | None


class StreamDoor:
    """ASGI middleware, inside the guard: serves a plainly well-formed `GET .../stream`
    itself (`open_stream`, errors as `errors.to_response`), hands anything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route: BaseRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asked = _asked(scope)
        if asked is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route or self._find_route(scope)  # the request metrics' label
        try:
            response = await _open(HTTPConnection(scope), asked)
        except AosError as exc:
            await errors.to_response(exc)(scope, receive, send)
            return
        await response(scope, receive, send)

    def _find_route(self, scope: Scope) -> BaseRoute:
        self._route = next(r for r in flat_routes(scope["app"]) if getattr(r, "path", "") == PATH)
        return self._route


async def _open(connection: HTTPConnection, asked: _Asked) -> EventStream:
    """The route's checks in FastAPI's order: the namespace (a dependency), then the rest."""
    namespace = resolve_namespace(connection.state.principal, asked.namespace)
    return await open_stream(
        of(connection), namespace, asked.job_id, asked.after, asked.last_event_id, asked.version
    )


def _asked(scope: Scope) -> _Asked | None:
    """What a stream request asks, or `None` when it is none or not plainly well-formed."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return None
    found = _PATH.fullmatch(scope["path"])
    if found is None:
        return None
    query = QueryParams(scope["query_string"])
    version = query.get("version")
    if version is not None and not (
        _PLAIN_VERSION.fullmatch(version) and int(version) <= MAX_INT64
    ):
        return None
    last_event_id = Headers(scope=scope).get("last-event-id")
    number = int(version) if version is not None else None
    return _Asked(found[1], query.get("namespace"), query.get("after"), last_event_id, number)


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
