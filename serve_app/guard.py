"""The API's door: every `/api/` request is authenticated before a byte of its body is read,
and a JSON body is refused past `MAX_JSON_BODY_BYTES`, or its route's own cap (413), without
reading the rest.

FastAPI reads a route's body before it resolves the route's dependencies, so the key check
cannot be a dependency: it is this ASGI middleware, which leaves the `Principal` in the
request state for the `principal` dependency (serve_app.deps). A body with a Content-Length
over the limit is refused unread; a chunked one is read up to the limit, then replayed to
the app. The output append streams its raw body and caps it itself (serve_app.output).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from ray.exceptions import TaskCancelledError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.limits import MAX_JSON_BODY_BYTES, check_size, parse_decimal
from serve_app import errors
from serve_app.deps import of
from storage.errors import AosError, BadRequest

log = logging.getLogger(__name__)

GUARDED_PREFIX = "/api/"
#: Methods whose body is JSON for a handler to parse.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: `POST /api/v1/jobs/{jobId}/output`: a raw body, read and capped by its handler.
_APPEND = re.compile(r"/api/v1/jobs/[^/]+/output/?")


class Guard:
    """ASGI middleware: authenticate, then bound the JSON body, then call the app.

    `max_body_bytes` caps every JSON body; `body_limits` gives a path its own cap (the
    batch submit's is larger)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = MAX_JSON_BODY_BYTES,
        body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_limits = dict(body_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED_PREFIX):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            request.state.principal = await of(request).keys.authenticate(
                request.headers.get("authorization")
            )
            if _has_json_body(scope):
                receive = await self._bounded(request, receive)
        except AosError as exc:
            response = errors.to_response(exc)
            if _has_body(request):  # refused unread: close rather than read the rest
                response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        except (_Disconnected, TaskCancelledError):
            return  # the client left while sending its body: nobody to answer
        if _has_body(request):
            send = _closing_on_413(send)  # the append's handler stops reading at its limit
        try:
            await self.app(scope, receive, send)
        except TaskCancelledError:  # Serve's way of saying the client disconnected
            log.debug("client disconnected from %s %s", scope["method"], scope["path"])

    async def _bounded(self, request: Request, receive: Receive) -> Receive:
        """`receive` replaying the body read here; `TooLarge` as soon as it is over the limit."""
        limit = self.body_limits.get(request.scope["path"], self.max_body_bytes)
        declared = request.headers.get("content-length")
        if declared is not None:
            check_size("a JSON body", _content_length(declared), limit, "bytes")
        body = await _read_capped(receive, limit)
        return _replay(body, receive)


class _Disconnected(Exception):
    """The client disconnected before its body was complete."""


def _has_json_body(scope: Scope) -> bool:
    if scope["method"] not in BODY_METHODS:
        return False
    return not (scope["method"] == "POST" and _APPEND.fullmatch(scope["path"]))


def _closing_on_413(send: Send) -> Send:
    """`send` that closes the connection after a 413: the rest of the body stays unread."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 413:
            message = {**message, "headers": [*message["headers"], (b"connection", b"close")]}
        await send(message)

    return closing


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length", "").strip()
    return length not in ("", "0") or "transfer-encoding" in request.headers


def _content_length(value: str) -> int:
    length = parse_decimal(value.strip())  # whitespace around a value is allowed (RFC 9110 §5.5)
    if length is None:
        raise BadRequest("Content-Length must be a decimal number of bytes")
    return length


async def _read_capped(receive: Receive, limit: int) -> bytes:
    """The whole body, read only up to `limit` bytes (`TooLarge` the moment it is over)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body += message.get("body", b"")
        check_size("a JSON body", len(body), limit, "bytes")
        if not message.get("more_body", False):
            return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app `body` first, then the connection's own messages
    (a disconnect, once the app waits for one)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
