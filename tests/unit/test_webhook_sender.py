"""The sender against a real tiny HTTP receiver; it only ever connects to 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
import standardwebhooks.webhooks as std
import trustme

from actors.webhooks import signing
from actors.webhooks.sender import WebhookSender
from actors.webhooks.ssrf import parse_allowed_networks

LOOPBACK_ONLY = parse_allowed_networks("127.0.0.0/8")
BODY = b'{"type":"job.completed","data":{"job_id":"j-1"}}'
HEADERS = {"content-type": "application/json"}
_REASONS = {
    200: "OK",
    204: "No Content",
    302: "Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server on 127.0.0.1 whose behaviour is chosen by path.

    /ok 200, /fail 500, /redirect 302 to /ok, /slow 200 after 0.2 s, /hang never
    answers, /endless streams a body that never ends, /big sends a 10 MB body,
    /reset closes the connection without a reply, /retry-after/<value> 503 with that
    `Retry-After` (percent-encoded in the path). With `tls`, it speaks HTTPS.
    """

    tls: ssl.SSLContext | None = None
    server: asyncio.Server | None = None
    sent: int = 0  # body bytes written by /big
    requests: list[Request] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)

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
                if request.path == "/reset":
                    return
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
            if path == "/big":
                await self._write_big(writer)
                return
            status = {"/fail": 500, "/redirect": 302}.get(path, 200)
            extra = "Location: /ok\r\n" if status == 302 else ""
            if path.startswith("/retry-after/"):
                status, value = 503, urllib.parse.unquote(path.removeprefix("/retry-after/"))
                extra = f"Retry-After: {value}\r\n"
            head = f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Length: 2\r\n{extra}\r\n"
            writer.write(head.encode() + b"ok")
            await writer.drain()
        finally:
            self.in_flight -= 1

    async def _write_big(self, writer: asyncio.StreamWriter) -> None:
        size, chunk = 10 * 1024 * 1024, b"x" * 65536
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while self.sent < size:
            writer.write(chunk)
            await writer.drain()
            self.sent += len(chunk)


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


class FakeDns:
    """A resolver with a fixed table; `later` answers every lookup after a name's first."""

    def __init__(self, table: dict[str, list[str]], later: dict[str, list[str]] | None = None):
        self.table = table
        self.later = later or {}
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        seen = host in self.lookups
        self.lookups.append(host)
        if seen and host in self.later:
            return self.later[host]
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


DNS_TABLE = {
    "hooks.example.test": ["10.0.0.1"],
    "receiver.example.test": ["127.0.0.1"],
    "mixed.example.test": ["127.0.0.1", "10.0.0.1"],
    "rebind.example.test": ["127.0.0.1"],
    "tls.example.test": ["127.0.0.1"],
    "other.example.test": ["127.0.0.1"],
}


@pytest.fixture
def dns() -> FakeDns:
    # A rebinding name: approved once, then an internal address.
    return FakeDns(DNS_TABLE, later={"rebind.example.test": ["10.0.0.1"]})


@pytest.fixture
async def resolving(dns: FakeDns) -> AsyncIterator[WebhookSender]:
    async with WebhookSender(resolver=dns, allowed_networks=LOOPBACK_ONLY) as sender:
        yield sender


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("hooks.example.test", "blocked: webhook host hooks.example.test (10.0.0.1)"),
        ("mixed.example.test", "blocked: webhook host mixed.example.test (10.0.0.1)"),
        ("169.254.169.254", "blocked: webhook host 169.254.169.254"),
        ("nowhere.example.test", "dns error: cannot resolve"),
    ],
)
async def test_refused_destination_gets_nothing_sent(
    resolving: WebhookSender, receiver: Receiver, host: str, error: str
) -> None:
    url = f"http://{host}:{receiver.port}/ok"
    attempt = await resolving.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith(error), attempt.error
    assert receiver.requests == []


async def test_ftp_and_ambiguous_urls_are_refused_before_any_lookup(
    resolving: WebhookSender, dns: FakeDns
) -> None:
    for url, error in [
        ("ftp://receiver.example.test/x", "blocked: webhook URL scheme"),
        ("http://receiver.example.test\\@10.0.0.1/x", "blocked: webhook URL"),
    ]:
        attempt = await resolving.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
        assert attempt.error is not None and attempt.error.startswith(error), attempt.error
    assert dns.lookups == []


async def test_a_name_is_dialled_at_the_address_it_was_checked_at_and_keeps_its_host_header(
    resolving: WebhookSender, receiver: Receiver, dns: FakeDns
) -> None:
    # The system cannot resolve *.example.test: only the checked answer can reach the receiver.
    url = f"http://receiver.example.test:{receiver.port}/ok"
    attempt = await resolving.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
    assert (attempt.status_code, attempt.error) == (200, None)
    [request] = receiver.requests
    assert request.headers["host"] == f"receiver.example.test:{receiver.port}"
    assert dns.lookups == ["receiver.example.test"]


async def test_an_answer_that_changes_after_the_check_is_never_dialled(
    resolving: WebhookSender, receiver: Receiver, dns: FakeDns
) -> None:
    """DNS rebinding: the name is resolved once per connection, and that checked answer is
    the address dialled. Had the connection resolved again, it would get 10.0.0.1."""
    url = f"http://rebind.example.test:{receiver.port}/ok"
    first = await resolving.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
    assert (first.status_code, first.error) == (200, None)
    assert dns.lookups == ["rebind.example.test"]
    # A new connection asks again, gets the internal answer, and is refused.
    async with WebhookSender(resolver=dns, allowed_networks=LOOPBACK_ONLY) as fresh:
        second = await fresh.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
    assert second.error is not None and second.error.startswith(
        "blocked: webhook host rebind.example.test (10.0.0.1)"
    )
    assert len(receiver.requests) == 1


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_receiver(ca: trustme.CA) -> AsyncIterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("tls.example.test").configure_cert(context)
    receiver = Receiver(tls=context)
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def trusting(dns: FakeDns, ca: trustme.CA) -> AsyncIterator[WebhookSender]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with WebhookSender(
        resolver=dns, allowed_networks=LOOPBACK_ONLY, ssl_context=context
    ) as sender:
        yield sender


async def test_https_to_a_pinned_address_verifies_the_urls_host_name(
    trusting: WebhookSender, tls_receiver: Receiver
) -> None:
    """The certificate names tls.example.test only: the TLS server name and the check are
    the URL's host, though the connection goes to 127.0.0.1."""
    url = f"https://tls.example.test:{tls_receiver.port}/ok"
    attempt = await trusting.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
    assert (attempt.status_code, attempt.error) == (200, None)
    assert tls_receiver.requests[0].headers["host"] == f"tls.example.test:{tls_receiver.port}"


async def test_https_with_a_certificate_for_another_name_is_refused(
    trusting: WebhookSender, tls_receiver: Receiver
) -> None:
    url = f"https://other.example.test:{tls_receiver.port}/ok"
    attempt = await trusting.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("connect error: ")
    assert "certificate" in attempt.error.lower()
    assert tls_receiver.requests == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0", 0.0),
        ("99999999999999999999", 86_400.0),  # capped at the longest policy delay, a day
        ("-5", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # a date already past
    ],
)
async def test_retry_after_of_the_reply_is_kept_in_the_attempt(
    sender: WebhookSender, receiver: Receiver, value: str, expected: float | None
) -> None:
    url = f"{receiver.url}/retry-after/{urllib.parse.quote(value, safe='')}"
    attempt = await sender.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
    assert (attempt.status_code, attempt.retry_after_s) == (503, expected)


async def test_retry_after_as_an_http_date_is_the_seconds_until_then(receiver: Receiver) -> None:
    now = 1_800_000_000.0
    async with WebhookSender(allowed_networks=LOOPBACK_ONLY, clock=lambda: now) as sender:
        date = email.utils.formatdate(now + 90, usegmt=True)
        url = f"{receiver.url}/retry-after/{urllib.parse.quote(date, safe='')}"
        attempt = await sender.send(url=url, headers=HEADERS, body=BODY, timeout_s=5)
    assert attempt.retry_after_s == 90.0


async def test_a_10_mb_reply_is_cut_off_and_the_next_send_works(
    sender: WebhookSender, receiver: Receiver
) -> None:
    big = await sender.send(url=f"{receiver.url}/big", headers=HEADERS, body=BODY, timeout_s=5)
    assert (big.status_code, big.error) == (200, None)
    after = await sender.send(url=f"{receiver.url}/ok", headers=HEADERS, body=BODY, timeout_s=5)
    assert (after.status_code, after.error) == (200, None)
    assert receiver.sent < 10 * 1024 * 1024  # the rest was never asked for


async def test_a_reset_connection_is_a_network_error(
    sender: WebhookSender, receiver: Receiver
) -> None:
    attempt = await sender.send(
        url=f"{receiver.url}/reset", headers=HEADERS, body=BODY, timeout_s=5
    )
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("network error: ")


async def test_send_before_open_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="not open"):
        await WebhookSender().send(url="http://127.0.0.1/", headers={}, body=b"", timeout_s=1)
