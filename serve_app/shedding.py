"""The ingress's load shedding: a replica works on at most `AOS_MAX_IN_FLIGHT` requests at
once; past that a request is answered 503 `overloaded` with a spread `Retry-After` (RFC 9110
§15.6.4, §10.2.3) at once, before its key is checked or a byte of its body read.

Without it a flood queues inside the replica (uvicorn, the event loop, the calls to the
shards) and every request waits longer, until clients time out with no answer. A request
holds its place until its response starts: a download or an SSE stream stops counting once
its headers are out (it waits on its client then, not on the shards), and a long-poll
(`?wait=`), which waits on purpose, is not counted at all.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.admission import retry_after_s
from serve_app import errors
from serve_app.deps import of
from serve_app.guard import GUARDED_PREFIX
from storage.errors import Overloaded

#: A shed request's body is left unread; past this many bytes the connection is closed
#: rather than the body drained by the server to keep it.
DRAIN_BYTES = 64 * 1024
#: The least a shed request is told to wait; `retry_after_s` spreads it up to 3x.
RETRY_AFTER_S = 1.0


def counted(scope: Scope) -> bool:
    """Whether a request takes a place: every HTTP request of the API but a long-poll."""
    if scope["type"] != "http" or not scope["path"].startswith(GUARDED_PREFIX):
        return False
    return not (scope["method"] == "GET" and _asks_to_wait(scope.get("query_string", b"")))


def _asks_to_wait(query: bytes) -> bool:
    return any(part.split(b"=", 1)[0] == b"wait" for part in query.split(b"&"))


class Shedder:
    """ASGI middleware: count the requests in flight against the replica's `Deps.in_flight`,
    shed past its bound."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not counted(scope):
            await self.app(scope, receive, send)
            return
        in_flight = of(HTTPConnection(scope)).in_flight
        if not in_flight.enter():
            await shed(scope, receive, send, in_flight.limit)
            return
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                in_flight.leave()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()  # the rest waits on the client, not on us
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            release()


async def shed(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    """The 503 of a request refused unread."""
    message = f"this replica is working on {limit} requests; retry after the Retry-After seconds"
    response = errors.to_response(Overloaded(message, retry_after_s=retry_after_s(RETRY_AFTER_S)))
    if _large_body(Headers(scope=scope)):
        response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _large_body(headers: Headers) -> bool:
    """A body that is chunked, or longer than `DRAIN_BYTES`, or of a length that is no number."""
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "0").strip()
    return not length.isdigit() or int(length) > DRAIN_BYTES
