"""A lean HTTP/1.1 server for the API's SSE streams, beside Serve's own in each `Api` replica.

Ten thousand open streams cost what ten thousand of Serve's direct-ingress requests hold:
uvicorn's protocol, parser and request cycle, Serve's request context and its proxying of
`send` and `receive`, each awaited on every frame (DESIGN-NOTES 53).
HAProxy sends `GET /api/v1/jobs/{jobId}/stream` here instead (cluster/ingress.py
`stream_backends`), to the replica's Serve port plus `STREAM_PORT_OFFSET`, and this server
hands each request to the very same ASGI app (the guard, the metrics, the shedding, the
route), so every answer is the app's own; what it leaves out is the machinery around it:

- one request per connection, `Connection: close` after its response (HAProxy opens one
  per stream anyway); a request with a body, or any method but GET, is refused;
- ASGI spec 2.4: the connection's loss cancels the request's task, so no task listens for
  the disconnect;
- a frame is written to the socket at once, chunked (RFC 9112 §7.1); `send` waits only
  while the socket's buffer is over its high-water mark (a slow reader).

Serve's own server still serves every other request, and all of them when HAProxy is not
the ingress (`AOS_INGRESS=serve`), the route answering streams as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message

from cluster.ingress import STREAM_PORT_OFFSET
from serve_app import errors
from serve_app.sse import BODY_SEND
from storage.errors import BadRequest, RequestTimeout

#: Under Serve's logger, so a replica's lines go to its Serve log (replica_aos_Api_*.log).
#: Serve's throughput-optimised mode buffers that log until an ERROR (or 1,000 lines), so
#: what an operator must see is logged as an error.
log = logging.getLogger("ray.serve.aos.stream_server")

#: A request head past this many bytes is refused (HAProxy's own buffer is 16 KiB).
MAX_HEAD_BYTES = 16 * 1024
#: Seconds a connection has to send its whole request head (HAProxy's `timeout
#: http-request`, cluster/ingress.py): then 408 and closed, so idle or trickling
#: connections cannot hold the replica's descriptors.
HEAD_TIMEOUT_S = 30.0
_ASGI = {"version": "3.0", "spec_version": "2.4"}
_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}
_DISCONNECT: Message = {"type": "http.disconnect"}
_ALLOW = {"Allow": "GET"}
_DROPPED_HEADERS = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})


class StreamServer:
    """Serves `app` on `host:port` (`start`), one request per connection (`_Connection`)."""

    def __init__(self, app: ASGIApp, *, head_timeout_s: float = HEAD_TIMEOUT_S) -> None:
        self.app = app
        self.head_timeout_s = head_timeout_s
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on `host:port`; `OSError` when it cannot (e.g. the port is taken)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=4096, reuse_address=True
        )

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()


class _Connection(asyncio.Protocol):
    """One client connection: parses one request head, runs the app, writes its response."""

    __slots__ = (
        "_chunked",
        "_drained",
        "_gone",
        "_head",
        "_headers",
        "_http10",
        "_parser",
        "_server",
        "_size",
        "_task",
        "_timer",
        "_transport",
        "_url",
    )

    def __init__(self, server: StreamServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._task: asyncio.Task[None] | None = None
        self._head: bytes | None = None  # the response head, written with the first body
        self._chunked = False
        self._drained: asyncio.Future[None] | None = None  # set while writing is paused
        self._gone: asyncio.Future[None] | None = None
        self._http10 = False
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._server.connections.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._server.head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._parser is not None:
            self._refuse(
                RequestTimeout(f"no whole request head in {self._server.head_timeout_s:g} s")
            )

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return  # past the request head: the rest (a pipelined request) is not read
        self._size += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is served as it is: an Upgrade may be ignored (RFC 9110 §7.8)
        except httptools.HttpParserError as exc:
            self._refuse(BadRequest(f"malformed HTTP request: {exc}"))
        else:
            if self._parser is not None and self._size > MAX_HEAD_BYTES:
                self._refuse(BadRequest(f"the request head is over {MAX_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._parser = None
        self._stop_timer()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("the client left"))
            self._drained.exception()  # retrieved: nobody may be waiting for it
        if self._task is not None:
            self._task.cancel()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # httptools' callbacks

    def on_url(self, url: bytes) -> None:
        if self._parser is not None:  # else a pipelined request behind the one served
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._parser is not None:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser, self._parser = self._parser, None
        if parser is None or self._transport is None:
            return  # a request pipelined behind the one served: not read
        self._stop_timer()
        if self._size > MAX_HEAD_BYTES:  # the head came whole, over the limit
            self._refuse(BadRequest(f"the request head is over {MAX_HEAD_BYTES} bytes"))
            return
        method = parser.get_method().decode("ascii")
        if method != "GET":
            message = f"{method} is not served here: only GET"
            self._answer(errors.error_response(405, "method_not_allowed", message, headers=_ALLOW))
            return
        if any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in self._headers
        ):
            self._refuse(BadRequest("a GET here takes no body"))
            return
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(BadRequest("the request target is not a well-formed URI"))
            return
        raw_path = url.path or b"/"
        self._http10 = parser.get_http_version() == "1.0"
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": f"{parser.get_http_version()}",
            "method": method,
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": self._headers,
            "client": self._transport.get_extra_info("peername"),
            "server": self._transport.get_extra_info("sockname"),
            "extensions": {BODY_SEND: self._send},
        }
        self._url, self._headers = b"", []
        self._task = asyncio.get_running_loop().create_task(self._run(scope))

    # the ASGI request

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self._server.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            return  # the client left (connection_lost)
        except Exception as exc:
            transport = self._transport
            if transport is None or transport.is_closing():
                return  # the client left mid-send (Starlette's `ClientDisconnect`)
            if self._head is None:  # nothing sent yet: the app's own answer to an error
                self._answer(errors.to_response(exc))
                return
            log.exception("%s failed after its response head", scope["path"], exc_info=exc)
        self._close()

    async def _receive(self) -> Message:
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
            if self._transport is not None and not self._transport.is_closing():
                return _REQUEST
        await self._gone
        return _DISCONNECT

    async def _send(self, message: Message) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client left")
        if message["type"] == "http.response.start":
            self._head = self._response_head(message["status"], message.get("headers", ()))
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        out = self._head or b""
        self._head = b""
        if self._chunked:
            if body:
                out += b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                out += b"0\r\n\r\n"
        else:
            out += body
        if out:
            transport.write(out)
        if not more:
            self._close()
        elif self._drained is not None:
            await self._drained

    def _response_head(self, status: int, headers: Any) -> bytes:
        lines = [b"HTTP/1.1 %d %b\r\ndate: %b\r\n" % (status, _reason(status), _date())]
        length = False
        for name, value in headers:
            lowered = bytes(name).lower()
            if lowered in _DROPPED_HEADERS:
                continue
            length = length or lowered == b"content-length"
            lines.append(b"%b: %b\r\n" % (name, value))
        # HTTP/1.0 knows no chunks (RFC 9112 §6.1): there the body ends with the connection
        self._chunked = not length and status not in (204, 304) and not self._http10
        if self._chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"connection: close\r\n\r\n")
        return b"".join(lines)

    def _refuse(self, exc: BadRequest | RequestTimeout) -> None:
        """Answer 400 (or 408) to a request the app never sees (malformed, too long, too
        slow), then close; past the request served (bytes pipelined behind it), nothing."""
        self._parser = None
        if self._task is None:
            self._answer(errors.to_response(exc))

    def _answer(self, response: JSONResponse) -> None:
        """Write a complete response and close."""
        self._parser = None
        head = self._response_head(response.status_code, response.raw_headers)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(head + bytes(response.body))
        self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


def _date() -> bytes:
    """Now as an HTTP date (RFC 9110 §5.6.7), which every response carries (§6.6.1)."""
    return formatdate(usegmt=True).encode("ascii")


def _reason(status: int) -> bytes:
    with contextlib.suppress(ValueError):
        return HTTPStatus(status).phrase.encode("ascii")
    return b""


def listening_ports(low: int, high: int) -> list[tuple[str, int]]:
    """The TCP addresses (host, port) this process listens on with `low <= port <= high`,
    read from Linux's /proc (the sockets of /proc/self/net/tcp{,6} whose inode is one of
    this process's descriptors); [] where there is no /proc."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return [
        (host, port)
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6")
        for inode, (host, port) in listening_sockets(table).items()
        if inode in inodes and low <= port <= high
    ]


def listening_sockets(table: str) -> dict[str, tuple[str, int]]:
    """inode -> (host, port) of every socket listening in a /proc TCP table
    (`/proc/<pid>/net/tcp` or `tcp6`, proc(5)); {} when it cannot be read."""
    parse = _ipv6 if table.endswith("6") else _ipv4
    found = {}
    with contextlib.suppress(OSError), open(table) as lines:
        next(lines, None)
        for line in lines:
            fields = line.split()
            if len(fields) >= 10 and fields[3] == "0A":  # 0A: TCP_LISTEN
                address, port_hex = fields[1].rsplit(":", 1)
                found[fields[9]] = (parse(address), int(port_hex, 16))
    return found


def _ipv4(hex_address: str) -> str:
    return ".".join(str(int(hex_address[i : i + 2], 16)) for i in (6, 4, 2, 0))


def _ipv6(hex_address: str) -> str:
    words = bytes.fromhex(hex_address)
    # /proc prints the address as four host-order 32-bit words
    ordered = b"".join(words[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(ordered))


async def serve_beside(
    app: ASGIApp,
    serve_ports: Callable[[], list[tuple[str, int]]],
    *,
    offset: int = STREAM_PORT_OFFSET,
    poll_s: float = 0.1,
    give_up_s: float = 300.0,
) -> StreamServer | None:
    """Wait for the replica's Serve server (the one address `serve_ports()` names), then
    serve `app` on its host at its port + `offset`; `None` (logged) when there is none in
    `give_up_s` or the port is taken: HAProxy then sends the streams to Serve's proxy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_s
    while not (found := serve_ports()):
        if loop.time() > deadline:
            log.error("no Serve HTTP port found in %.0f s: streams go through Serve", give_up_s)
            return None
        await asyncio.sleep(poll_s)
    host, port = found[0]
    server = StreamServer(app)
    try:
        await server.start(host, port + offset)
    except OSError as exc:
        where = f"{host}:{port + offset} (Serve's port {port})"
        log.error("cannot serve streams on %s: %s; they go through Serve", where, exc)
        return None
    log.info("serving SSE streams on %s:%d (Serve's port %d)", host, port + offset, port)
    return server
