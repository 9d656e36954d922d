"""The ingress's load shedding: a replica works on at most `AOS_MAX_IN_FLIGHT` requests at
once, and starts none that waited more than `AOS_MAX_QUEUED_S` to reach it; past either a
request is answered 503 `overloaded` with a spread `Retry-After` (RFC 9110 §15.6.4,
§10.2.3) at once, before its key is checked or a byte of its body read.

Without it a flood queues inside the replica and every request waits longer, until
clients time out with no answer. Most of that queue is out of the app's sight: on a busy
replica requests wait in uvicorn and in Serve's hand-over to the app's event loop, so a
count of the requests the app works on stays low while HAProxy sees a thousand waiting.
So HAProxy stamps each request with the time it received it (`RECEIVED_HEADER`,
cluster/ingress.py), and a request that arrives here later than `max_queued_s` after
that is shed: it would be answered late anyway, and shedding it costs a fraction of
serving it, so the queue drains. The count bounds the rest: requests waiting on the
shards. A request holds its place until its response starts: a download or an SSE
stream stops counting once its headers are out (it waits on its client then, not on the
shards), and a long-poll (`?wait=`), which waits on purpose, is not counted at all.
"""

from __future__ import annotations

import time

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
#: When HAProxy received the request, in ms since the epoch (it replaces a client's own).
RECEIVED_HEADER = "x-aos-received-ms"
#: A stamp further back than this is not a queue but a clock gone wrong: ignored.
PLAUSIBLE_QUEUE_S = 3600.0


def queued_s(headers: Headers, now_s: float) -> float | None:
    """How long ago HAProxy received the request (`RECEIVED_HEADER`), in seconds; `None`
    without a usable stamp (Serve's own proxy sets none; nodes' clocks may differ a little:
    a stamp in the future is no wait)."""
    stamp = headers.get(RECEIVED_HEADER, "")
    if not stamp.isdigit():
        return None
    waited = now_s - int(stamp) / 1000
    return max(0.0, waited) if waited < PLAUSIBLE_QUEUE_S else None


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
        headers = Headers(scope=scope)
        refused = in_flight.enter(queued_s=queued_s(headers, time.time()))
        if refused is not None:
            await shed(scope, receive, send, headers, refused)
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


async def shed(scope: Scope, receive: Receive, send: Send, headers: Headers, why: str) -> None:
    """The 503 of a request refused unread, saying `why`."""
    message = f"{why}; retry after the Retry-After seconds"
    response = errors.to_response(Overloaded(message, retry_after_s=retry_after_s(RETRY_AFTER_S)))
    if _large_body(headers):
        response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _large_body(headers: Headers) -> bool:
    """A body that is chunked, or longer than `DRAIN_BYTES`, or of a length that is no number."""
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "0").strip()
    return not length.isdigit() or int(length) > DRAIN_BYTES
