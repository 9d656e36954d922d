"""The sender against a real tiny HTTP receiver; it only ever connects to 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import httpx
import pytest
import standardwebhooks.webhooks as std

from actors.webhooks import signing
from actors.webhooks.sender import WebhookSender
from actors.webhooks.ssrf import Resolver, parse_allowed_networks

LOOPBACK_ONLY = parse_allowed_networks("127.0.0.0/8")
BODY = b'{"type":"job.completed","data":{"job_id":"j-1"}}'
HEADERS = {"content-type": "application/json"}
_REASONS = {200: "OK", 204: "No Content", 302: "Found", 500: "Internal Server Error"}


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server on 127.0.0.1 whose behaviour is chosen by path.

    /ok 200, /fail 500, /redirect 302 to /ok, /slow 200 after 0.2 s, /hang never
    answers, /endless streams a body that never ends.
    """

    server: asyncio.Server | None = None
    requests: list[Request] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while (request := await _read_request(reader)) is not None:
                self.requests.append(request)
                await self._answer(request.path, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up, which the sender does on purpose at times
        finally:
            writer.close()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if path == "/hang":
                await asyncio.Event().wait()
            if path == "/slow":
                await asyncio.sleep(0.2)
            if path == "/endless":
                await _write_endless(writer)
            status = {"/fail": 500, "/redirect": 302}.get(path, 200)
            extra = "Location: /ok\r\n" if status == 302 else ""
            head = f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Length: 2\r\n{extra}\r\n"
            writer.write(head.encode() + b"ok")
            await writer.drain()
        finally:
            self.in_flight -= 1


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # keep-alive connection closed between requests
    request_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in filter(None, lines):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(path=request_line.split(" ")[1], headers=headers, body=body)


async def _write_endless(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    while True:
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()


async def _receiver() -> Receiver:
    receiver = Receiver()
    await receiver.start()
    return receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = await _receiver()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def other_receiver() -> AsyncIterator[Receiver]:
    receiver = await _receiver()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    async with WebhookSender(allowed_networks=LOOPBACK_ONLY) as sender:
        yield sender


async def _timed_send(
    sender: WebhookSender, url: str, timeout_s: float
) -> tuple[float, int | None]:
    started = time.perf_counter()
    attempt = await sender.send(url=url, headers=HEADERS, body=BODY, timeout_s=timeout_s)
    return time.perf_counter() - started, attempt.status_code


async def test_200_is_reported_with_status_and_duration(
    sender: WebhookSender, receiver: Receiver
) -> None:
    before = time.time()
    attempt = await sender.send(url=f"{receiver.url}/ok", headers=HEADERS, body=BODY, timeout_s=5)
    assert (attempt.status_code, attempt.error) == (200, None)
    assert before <= attempt.at <= time.time()
    assert 0 < attempt.duration_ms < 5000


async def test_receiver_gets_a_body_it_can_verify(
    sender: WebhookSender, receiver: Receiver
) -> None:
    secret = signing.new_secret()
    headers = signing.headers(
        msg_id="msg_1", timestamp=int(time.time()), body=BODY, secrets=[secret]
    )
    await sender.send(url=f"{receiver.url}/ok", headers=headers, body=BODY, timeout_s=5)
    [request] = receiver.requests
    assert request.body == BODY
    std.Webhook(secret).verify(request.body, request.headers)


async def test_500_is_a_status_not_an_error(sender: WebhookSender, receiver: Receiver) -> None:
    attempt = await sender.send(url=f"{receiver.url}/fail", headers=HEADERS, body=BODY, timeout_s=5)
    assert (attempt.status_code, attempt.error) == (500, None)


async def test_redirect_is_not_followed(sender: WebhookSender, receiver: Receiver) -> None:
    attempt = await sender.send(
        url=f"{receiver.url}/redirect", headers=HEADERS, body=BODY, timeout_s=5
    )
    assert attempt.status_code == 302
    assert receiver.paths == ["/redirect"]


async def test_redirect_is_not_followed_even_by_an_injected_client_that_would(
    receiver: Receiver,
) -> None:
    async with (
        httpx.AsyncClient(follow_redirects=True, trust_env=False) as http,
        WebhookSender(http=http, allowed_networks=LOOPBACK_ONLY) as sender,
    ):
        attempt = await sender.send(
            url=f"{receiver.url}/redirect", headers=HEADERS, body=BODY, timeout_s=5
        )
    assert attempt.status_code == 302
    assert receiver.paths == ["/redirect"]


async def test_hanging_receiver_times_out(sender: WebhookSender, receiver: Receiver) -> None:
    attempt = await sender.send(
        url=f"{receiver.url}/hang", headers=HEADERS, body=BODY, timeout_s=0.3
    )
    assert (attempt.status_code, attempt.error) == (None, "timeout")
    assert 250 <= attempt.duration_ms < 2000


async def test_hanging_receiver_does_not_delay_another(
    receiver: Receiver, other_receiver: Receiver
) -> None:
    # A limit of 1 per destination: the fast sends must not queue behind the hang.
    async with WebhookSender(per_host_limit=1, allowed_networks=LOOPBACK_ONLY) as sender:
        hung, *fast = await asyncio.gather(
            _timed_send(sender, f"{receiver.url}/hang", 0.3),
            *(_timed_send(sender, f"{other_receiver.url}/ok", 5) for _ in range(3)),
        )
    assert hung[1] is None and hung[0] >= 0.25
    assert [status for _, status in fast] == [200, 200, 200]
    assert max(elapsed for elapsed, _ in fast) < 0.25


async def test_endless_reply_is_cut_off_after_its_status(
    sender: WebhookSender, receiver: Receiver
) -> None:
    attempt = await sender.send(
        url=f"{receiver.url}/endless", headers=HEADERS, body=BODY, timeout_s=5
    )
    assert (attempt.status_code, attempt.error) == (200, None)


async def test_per_host_limit_caps_concurrent_requests(receiver: Receiver) -> None:
    async with WebhookSender(per_host_limit=2, allowed_networks=LOOPBACK_ONLY) as sender:
        results = await asyncio.gather(
            *(_timed_send(sender, f"{receiver.url}/slow", 5) for _ in range(6))
        )
    assert [status for _, status in results] == [200] * 6
    assert receiver.max_in_flight == 2
    assert len(sender._gates) == 0  # idle destinations are forgotten


async def test_refused_connection_is_a_connect_error(sender: WebhookSender) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again on exit: nothing listens there
    attempt = await sender.send(
        url=f"http://127.0.0.1:{port}/ok", headers=HEADERS, body=BODY, timeout_s=5
    )
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("connect error: ")


class RecordingTransport(httpx.AsyncBaseTransport):
    """Stands in for the network: records requests and answers 204, connects nowhere."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(204)


def _fake_resolver(table: dict[str, Sequence[str]]) -> Resolver:
    async def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


@pytest.fixture
async def offline() -> AsyncIterator[tuple[WebhookSender, RecordingTransport]]:
    transport = RecordingTransport()
    resolver = _fake_resolver(
        {"hooks.example.test": ["10.0.0.1"], "public.example.test": ["93.184.216.34"]}
    )
    async with (
        httpx.AsyncClient(transport=transport) as http,
        WebhookSender(http=http, resolver=resolver, allowed_networks=LOOPBACK_ONLY) as sender,
    ):
        yield sender, transport


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://hooks.example.test/x", "blocked: webhook host hooks.example.test (10.0.0.1)"),
        ("http://169.254.169.254/latest/meta-data/", "blocked: webhook host 169.254.169.254"),
        ("ftp://public.example.test/x", "blocked: webhook URL scheme"),
        ("http://nowhere.example.test/x", "dns error: cannot resolve"),
    ],
)
async def test_refused_url_sends_nothing(
    offline: tuple[WebhookSender, RecordingTransport], url: str, error: str
) -> None:
    sender, transport = offline
    attempt = await sender.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith(error)
    assert transport.requests == []


async def test_public_destination_is_posted_through_the_injected_client(
    offline: tuple[WebhookSender, RecordingTransport],
) -> None:
    sender, transport = offline
    attempt = await sender.send(
        url="https://public.example.test/hook", headers=HEADERS, body=BODY, timeout_s=5
    )
    assert (attempt.status_code, attempt.error) == (204, None)
    [request] = transport.requests
    assert (request.method, str(request.url), request.content) == (
        "POST",
        "https://public.example.test/hook",
        BODY,
    )


async def test_closing_the_sender_leaves_an_injected_client_open() -> None:
    async with httpx.AsyncClient(transport=RecordingTransport()) as http:
        async with WebhookSender(http=http):
            pass
        assert not http.is_closed


async def test_send_before_open_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="not open"):
        await WebhookSender().send(url="http://127.0.0.1/", headers={}, body=b"", timeout_s=1)
