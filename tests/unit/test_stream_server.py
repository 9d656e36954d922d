"""The replicas' stream server (serve_app.stream_server): over a real socket it answers as
the app does over ASGI (the same status, type and body, errors included), streams frames
as they come, refuses what is not a plain GET with a JSON error, and lets a stream go when
its client leaves.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
import uvloop

from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from serve_app.stream_server import StreamServer, listening_ports, serve_beside
from storage.memory import MemoryStore
from tests.unit.fakes import Watched
from tests.unit.test_api import JOBS, http, make_app, new_tenant, submit
from tests.unit.test_sse_door import CASES, finished_job


@pytest.fixture
async def served(
    store: MemoryStore, watched: Watched
) -> AsyncIterator[tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient]]:
    """The stream server on a free port, a client of it, and an ASGI client of the same app."""
    app = make_app(store, ShardClient.in_process([watched], store=store))
    server = StreamServer(app)
    await server.start("127.0.0.1", 0)
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as wire,
        http(app) as direct,
    ):
        yield server, wire, direct
    await server.close()


@pytest.fixture
async def acme(served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient]) -> dict[str, str]:
    return await finished_job(served[2])


@pytest.mark.parametrize(("job", "query", "headers", "status"), CASES)
async def test_a_stream_request_gets_the_apps_own_answer_over_the_wire(
    served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient],
    acme: dict[str, str],
    job: str,
    query: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    _, wire, direct = served
    path = f"{JOBS}/{job}/stream"
    over_wire = await wire.get(path, params=query, headers={**acme, **headers})
    over_asgi = await direct.get(path, params=query, headers={**acme, **headers})
    assert over_wire.status_code == over_asgi.status_code == status
    assert over_wire.content == over_asgi.content
    assert over_wire.headers["content-type"] == over_asgi.headers["content-type"]
    assert over_wire.headers["connection"] == "close"
    assert parsedate_to_datetime(over_wire.headers["date"]).tzinfo is not None
    if status == 200:
        assert over_wire.headers["transfer-encoding"] == "chunked"
        assert b"event: end" in over_wire.content


async def test_without_a_key_the_answer_is_the_guards_401(
    served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    answer = await served[1].get(f"{JOBS}/j1/stream")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"


async def test_a_live_stream_gets_each_append_as_it_is_acknowledged(
    served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    server, wire, direct = served
    acme = await new_tenant(direct, "acme")
    await submit(direct, acme, jobId="live")
    frames: list[str] = []
    async with wire.stream("GET", f"{JOBS}/live/stream", headers=acme) as stream:
        lines = stream.aiter_lines()
        for n in range(1, 4):
            await direct.post(f"{JOBS}/live/output?seq={n}", content=f"part {n}", headers=acme)
            async with asyncio.timeout(10):
                while not any(f"part {n}" in frame for frame in frames):
                    frames.append(await anext(lines))
        assert len(server.connections) == 1
    outputs = [frame for frame in frames if frame.startswith("data:") and "part" in frame]
    assert [f"part {n}" in line for n, line in enumerate(outputs, 1)] == [True] * 3


async def test_a_client_that_leaves_ends_its_stream_and_its_watch(
    served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient], watched: Watched
) -> None:
    server, _, direct = served
    acme = await new_tenant(direct, "acme")
    await submit(direct, acme, jobId="left")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(_get(f"{JOBS}/left/stream", acme["Authorization"]))
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    await _until(lambda: watched._watches == 1)
    writer.close()
    await _until(lambda: not server.connections)
    await _until(lambda: watched._watches == 0)


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"POST /api/v1/jobs/j1/stream HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (
            b"GET /api/v1/jobs/j1/stream HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
            400,
            "bad_request",
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            400,
            "bad_request",
        ),
        (b"GET /\x00 HTTP/1.1\r\n\r\n", 400, "bad_request"),
        (b"GET http://[::1/healthz HTTP/1.1\r\n\r\n", 400, "bad_request"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        (
            b"GET /x HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
            400,
            "bad_request",
        ),
        (  # the Upgrade ignored (RFC 9110 §7.8): the app's own answer to GET /x
            b"GET /x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            404,
            "not_found",
        ),
    ],
)
async def test_what_is_not_a_plain_get_gets_a_json_error_and_the_connection_closed(
    served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient],
    request_bytes: bytes,
    status: int,
    code: str,
) -> None:
    server = served[0]
    answer = await _exchange(server.port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"content-type: application/json" in head.lower()
    assert b"connection: close" in head.lower()
    assert httpx.Response(200, content=body).json()["error"]["code"] == code
    if status == 405:
        assert b"allow: GET" in head
    await _until(lambda: not server.connections)


async def test_the_health_check_path_is_the_apps(
    served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    answer = await served[1].get("/healthz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


async def test_a_slow_reader_holds_only_its_own_stream(
    served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    """A client that reads nothing: its frames wait in the socket, its `send` waits once
    the buffer is full, and a reading client of the same job still gets every append."""
    server, wire, direct = served
    acme = await new_tenant(direct, "acme")
    await submit(direct, acme, jobId="big")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(_get(f"{JOBS}/big/stream", acme["Authorization"]))
    chunk = b"x" * 200_000
    async with wire.stream("GET", f"{JOBS}/big/stream", headers=acme) as reading:
        lines = reading.aiter_lines()
        for n in range(1, 41):
            await direct.post(f"{JOBS}/big/output?seq={n}", content=chunk, headers=acme)
        seen = 0
        async with asyncio.timeout(20):
            while seen < 40:
                if (await anext(lines)).startswith("event: output"):
                    seen += 1
    await _until(lambda: any(c._drained is not None for c in server.connections))  # paused
    stalled.close()
    await _until(lambda: not server.connections)


async def test_serve_beside_listens_at_the_serve_port_plus_the_offset(
    store: MemoryStore, watched: Watched
) -> None:
    app = make_app(store, ShardClient.in_process([watched], store=store))
    found: list[tuple[str, int]] = []

    def serve_ports() -> list[tuple[str, int]]:
        return found

    starting = asyncio.ensure_future(serve_beside(app, serve_ports, offset=1, poll_s=0.01))
    await asyncio.sleep(0.05)
    assert not starting.done()  # waits for Serve's server
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    found.append(("127.0.0.1", port - 1))
    server = await starting
    assert server is not None and server.port == port
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    taken = await serve_beside(app, serve_ports, offset=1)  # the port is in use now
    assert taken is None
    await server.close()


def test_on_uvloop_the_replicas_loop_it_streams_and_refuses_alike() -> None:
    """uvloop's transports are not `asyncio.Transport`s: the server must not care."""

    async def main() -> None:
        store = MemoryStore()
        shard = Shard(store, ShardConfig(slot=0, num_shards=1))
        await shard.start()
        app = make_app(store, ShardClient.in_process([shard], store=store))
        server = StreamServer(app)
        await server.start("127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as wire:
            assert (await wire.get("/healthz")).json() == {"status": "ok"}
            assert (await wire.get(f"{JOBS}/j1/stream")).status_code == 401
        refused = await _exchange(server.port, b"DELETE /x HTTP/1.1\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 405 ")
        await server.close()
        await shard.stop()

    uvloop.run(main())


def test_listening_ports_names_this_processs_listening_sockets() -> None:
    with socket.socket() as listening, socket.socket() as bound:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound.bind(("127.0.0.1", 0))  # bound, not listening
        port, other = listening.getsockname()[1], bound.getsockname()[1]
        assert listening_ports(port, port) == [("127.0.0.1", port)]
        assert listening_ports(other, other) == []
    assert listening_ports(port, port) == []


def _get(path: str, authorization: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {authorization}\r\n\r\n".encode()


async def _exchange(port: int | None, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    async with asyncio.timeout(10):
        answer = await reader.read()  # the server closes after its answer
    writer.close()
    return answer


async def _until(condition: Any, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_frames_go_to_the_socket_past_the_middlewares_which_see_the_head_and_end(
    store: MemoryStore, watched: Watched
) -> None:
    """`sse.BODY_SEND`: a middleware's `send` wrapper sees the stream's head and its last
    message, not each frame; the client gets every frame."""
    app = make_app(store, ShardClient.in_process([watched], store=store))
    seen: list[tuple[str, bool]] = []

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def watching(message: dict[str, Any]) -> None:
            seen.append((message["type"], message.get("more_body", False)))
            await send(message)

        await app(scope, receive, watching)

    server = StreamServer(middleware)
    await server.start("127.0.0.1", 0)
    async with (
        http(app) as api,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as wire,
    ):
        acme = await finished_job(api)
        seen.clear()
        answer = await wire.get(f"{JOBS}/j1/stream", headers=acme)
    await server.close()
    assert answer.status_code == 200
    assert answer.text.count("event: output") == 2 and "event: end" in answer.text
    assert seen == [("http.response.start", False), ("http.response.body", False)]


@pytest.mark.parametrize(
    "behind", [b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", b"\x00garbage\r\n\r\n"]
)
async def test_bytes_pipelined_behind_the_request_are_not_read(
    served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient],
    acme: dict[str, str],
    behind: bytes,
) -> None:
    """One request per connection: what follows it in the same packet gets no answer and
    does not disturb the one served."""
    server = served[0]
    answer = await _exchange(server.port, _get(f"{JOBS}/j1/stream", acme["Authorization"]) + behind)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1") == 1
    assert answer.endswith(b"\r\n0\r\n\r\n")  # the stream's last chunk, then the close
    assert b"event: end" in answer


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost"])
async def test_a_connection_without_a_whole_head_in_time_gets_408_and_is_closed(
    store: MemoryStore, watched: Watched, sent: bytes
) -> None:
    """Idle or trickling: closed after `head_timeout_s`, so such connections cannot pile up."""
    app = make_app(store, ShardClient.in_process([watched], store=store))
    server = StreamServer(app, head_timeout_s=0.2)
    await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(sent)
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert httpx.Response(200, content=body).json()["error"]["code"] == "request_timeout"
    await _until(lambda: not server.connections)
    await server.close()


async def test_an_http_1_0_stream_is_not_chunked_and_ends_with_the_connection(
    served: tuple[StreamServer, httpx.AsyncClient, httpx.AsyncClient], acme: dict[str, str]
) -> None:
    """RFC 9112 §6.1: no chunked transfer coding to an HTTP/1.0 client."""
    request = _get(f"{JOBS}/j1/stream", acme["Authorization"]).replace(b"HTTP/1.1", b"HTTP/1.0")
    answer = await _exchange(served[0].port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert body.startswith(b"retry: ")
    assert b"event: end" in body and b"\r\n0\r\n" not in body
