"""Request metrics: every HTTP request and WebSocket session an `Api` replica answers, counted
by method, route template and status, timed to its response head, open streams gauged
(`actors.metrics` defines them).

An ASGI middleware, outermost, so what the guard refuses (401, 413) is counted too. The
route is the template FastAPI matched (`/api/v1/jobs/{job_id}`), never the raw path, so a
label never holds a job id. What a stream or a long-poll holds open is not request latency:
a response's duration ends at its head (http.response.start), which for a stream is the
time to open it; a long-poll (`?wait=`) is counted but not timed, its wait being the
client's choice. A stream (an SSE response, `text/event-stream`, or an accepted WebSocket)
is open from its head to its end, whichever module serves it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors import metrics
from serve_app.errors import CLIENT_CLOSED

#: The status of a WebSocket session accepted (RFC 6455 §4.2.2: 101 Switching Protocols).
WEBSOCKET_ACCEPTED = 101
#: A WebSocket closed before it was accepted: Starlette answers the handshake with 403.
WEBSOCKET_REFUSED = 403
EVENT_STREAM = b"text/event-stream"
#: A long-poll names its wait in the query (`GET /api/v1/jobs/{job_id}/status?wait=30`).
LONG_POLL_QUERY = b"wait="


class RequestMetrics:
    """ASGI middleware: count, time and gauge what the app behind it answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._requests = metrics.Tally(
            metrics.HTTP_REQUESTS, ("method", "route", "status"), flush_s=metrics.TALLY_FLUSH_S
        )
        self._open: collections.Counter[str] = collections.Counter()
        self._routes: list[BaseRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen = _Seen()

        async def watched(message: Message) -> None:
            if seen.status is None:
                self._head(scope, message, seen, time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException as exc:
            if seen.status is None:  # no answer went out: the client left, or a bug (500)
                seen.status = CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500
            raise
        finally:
            if seen.stream is not None:
                self._streams(seen.stream, -1)
            route = seen.route or self._route(scope)
            self._requests.add(_method(scope), route, str(seen.status or CLIENT_CLOSED))

    def _head(self, scope: Scope, message: Message, seen: _Seen, elapsed_s: float) -> None:
        """The first message of the answer: its status, its latency, and whether it streams."""
        kind = message["type"]
        if kind in ("http.response.start", "websocket.http.response.start"):
            seen.status = message["status"]
        elif kind == "websocket.accept":
            seen.status = WEBSOCKET_ACCEPTED
        elif kind == "websocket.close":
            seen.status = WEBSOCKET_REFUSED
        else:
            return
        seen.route = route = self._route(scope)
        if kind == "http.response.start" and LONG_POLL_QUERY not in scope["query_string"]:
            tags = {"method": scope["method"], "route": route}
            metrics.HTTP_REQUEST_DURATION.observe(elapsed_s, tags)
        if kind == "websocket.accept" or _is_event_stream(message):
            seen.stream = route
            self._streams(route, 1)

    def _route(self, scope: Scope) -> str:
        if self._routes is None and "route" not in scope:  # the app's routes are all added
            self._routes = flat_routes(scope["app"]) if "app" in scope else []
        return route_template(scope, self._routes or [])

    def _streams(self, route: str, change: int) -> None:
        self._open[route] += change
        metrics.HTTP_OPEN_STREAMS.set(self._open[route], {"route": route})


class _Seen:
    """What the middleware learnt of one request's answer."""

    __slots__ = ("route", "status", "stream")

    def __init__(self) -> None:
        self.status: int | None = None
        self.route: str | None = None
        self.stream: str | None = None


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The path template of the route that serves `scope` (`/api/v1/jobs/{job_id}`), or
    `metrics.UNMATCHED_ROUTE`. FastAPI leaves the route it matched in the scope; one the
    app never reached (the guard refused the request first) is found in `routes` (the
    app's `flat_routes`), a route that matches the path but not the method (405) included."""
    route: Any = scope.get("route")
    if route is None:
        matches = [(candidate.matches(scope)[0], candidate) for candidate in routes]
        route = next((c for m, c in matches if m is Match.FULL), None) or next(
            (c for m, c in matches if m is Match.PARTIAL), None
        )
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else metrics.UNMATCHED_ROUTE


def flat_routes(app: Any) -> list[BaseRoute]:
    """Every route of `app` with its whole path (FastAPI keeps an included router's routes
    inside it, each with the path of its own router)."""
    return [context.route or context.original_route for context in iter_route_contexts(app.routes)]


def _method(scope: Scope) -> str:
    # A WebSocket session starts as a GET (RFC 6455 §4.1).
    method: str = scope.get("method", "GET")
    return method


def _is_event_stream(message: Message) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(EVENT_STREAM)
        for name, value in message.get("headers", ())
    )
