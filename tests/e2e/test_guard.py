"""Big bodies through real Serve: refused at the door (401, 413) at once, costing no memory.

Each request goes over a raw socket: its headers, then its body streamed from another thread
the way a careless or hostile client sends it, whatever the answer; the answer is timed from
the headers. RSS is read from /proc for the `Api` replica and the Serve proxy.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from ray._private import state as ray_state

from cluster.bootstrap import APP_NAME

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
BIG_BODY_BYTES = 100 * MIB
BIG_BODIES = 4
#: What the replica and the proxy may grow by over all the big bodies together.
MAX_RSS_GROWTH_BYTES = 100 * MIB
#: The answer arrives long before the body could have been read through Serve.
MAX_ANSWER_S = 1.0
_SEND_PIECE = b"x" * (256 * 1024)


@dataclass
class Answer:
    status: int  # CLOSED: the connection ended without an answer
    seconds: float
    head: str
    sent_bytes: int = 0  # of the body, when the answer came or the connection ended


#: The server hung up without an answer. Behind HAProxy this is a rare race, not a bug of
#: ours: the replica answers 401 and closes with the body still arriving, so its kernel
#: resets the connection, and a reset that reaches HAProxy before it has read the 401 loses
#: the answer. The body is refused either way; tests accept it where a body still streams.
CLOSED = 0


def refused(answer: Answer, status: int, body_bytes: int) -> bool:
    """Answered `status`, or cut off (`CLOSED`) before the body was through."""
    return answer.status == status or (answer.status == CLOSED and answer.sent_bytes < body_bytes)


class RawRequest:
    """One HTTP/1.1 request over its own socket; the body streams from a thread."""

    def __init__(self, url: str) -> None:
        where = urlsplit(url)
        self.host = f"{where.hostname}:{where.port}"
        self.sock = socket.create_connection((where.hostname, where.port), timeout=30)
        self.sent_bytes = 0
        self._buffer = b""

    def send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body_bytes: int,
        *,
        chunked: bool = False,
    ) -> Answer:
        """Send the headers, stream `body_bytes` of body (with its Content-Length, or
        chunked), and time the answer; the whole body goes, unless the server hangs up."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append(f"Content-Length: {body_bytes}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        started = time.monotonic()
        sender = threading.Thread(target=self._stream, args=(body_bytes, chunked), daemon=True)
        sender.start()
        try:
            status, head = self._read_response()
        except ConnectionError:
            status, head = CLOSED, ""
        seconds = time.monotonic() - started
        sender.join(timeout=60)
        assert not sender.is_alive(), "the body did not finish streaming"
        return Answer(status, seconds, head, self.sent_bytes)

    def get(self, path: str) -> int:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        return self._read_response()[0]

    def close(self) -> None:
        self.sock.close()

    def _stream(self, size: int, chunked: bool) -> None:
        try:
            while self.sent_bytes < size:
                piece = _SEND_PIECE[: size - self.sent_bytes]
                framed = b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece
                self.sock.sendall(framed)
                self.sent_bytes += len(piece)
            if chunked:
                self.sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server hung up: nothing more to send

    def _read_response(self) -> tuple[int, str]:
        while b"\r\n\r\n" not in self._buffer:
            self._recv()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        text = head.decode("latin-1")
        fields = dict(
            line.lower().split(": ", 1) for line in text.split("\r\n")[1:] if ": " in line
        )
        length = int(fields.get("content-length", "0"))
        while len(self._buffer) < length:
            self._recv()
        self._buffer = self._buffer[length:]
        return int(text.split(" ", 2)[1]), text

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data


def serve_pids() -> dict[str, int]:
    """The pids of this session's `Api` replica and Serve proxy (from Ray's actor table,
    not `ps`: other Ray clusters may run on this machine)."""
    alive = ray_state.actors(actor_state_name="ALIVE").values()
    names = {f"ServeReplica:{APP_NAME}:Api": "replica", "ProxyActor": "proxy"}
    pids = {names[a["ActorClassName"]]: a["Pid"] for a in alive if a["ActorClassName"] in names}
    assert set(pids) == {"replica", "proxy"}, pids
    return pids


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def rss_of(pids: dict[str, int]) -> dict[str, int]:
    return {name: rss_bytes(pid) for name, pid in pids.items()}


def growth_report(before: dict[str, int], after: dict[str, int]) -> str:
    return ", ".join(
        f"{name} {before[name] / MIB:.0f} -> {after[name] / MIB:.0f} MiB" for name in before
    )


def test_big_unauthenticated_bodies_are_refused_at_once_and_cost_no_memory(service):
    pids = serve_pids()
    before = rss_of(pids)
    answers = []
    for key in (None, "aos_0123456789abcdef_wrong") * (BIG_BODIES // 2):
        request = RawRequest(service.url)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        answers.append(request.send("POST", "/api/v1/jobs", headers, BIG_BODY_BYTES))
        request.close()
    after = rss_of(pids)
    report = f"{growth_report(before, after)}; answers in " + ", ".join(
        f"{a.status} {a.seconds:.2f} s" for a in answers
    )
    print(report)
    assert all(refused(a, 401, BIG_BODY_BYTES) for a in answers), report
    assert 401 in {a.status for a in answers}, report  # the race is rare
    assert max(a.seconds for a in answers) < MAX_ANSWER_S, report
    for name in pids:
        assert after[name] - before[name] < MAX_RSS_GROWTH_BYTES, report


def test_an_early_401_closes_the_connection_instead_of_reading_the_body(service):
    request = RawRequest(service.url)
    headers = {"Content-Type": "application/json"}
    try:
        answer = request.send("POST", "/api/v1/jobs", headers, 100 * MIB)
    finally:
        request.close()
    # Serve's proxy says `Connection: close`; HAProxy closes without saying so (it drops the
    # replica's hop-by-hop header). Either way the connection ends before the body is read.
    assert refused(answer, 401, 100 * MIB), answer
    assert request.sent_bytes < 100 * MIB  # the server hung up before the body was through
    fresh = RawRequest(service.url)
    try:
        assert fresh.get("/healthz") == 200
    finally:
        fresh.close()


def test_a_big_json_body_is_413_by_its_length_or_as_it_streams(service, tenant):
    auth = {"Authorization": f"Bearer {tenant.key}", "Content-Type": "application/json"}
    declared = RawRequest(service.url)
    try:
        answer = declared.send("POST", "/api/v1/jobs", auth, BIG_BODY_BYTES)
    finally:
        declared.close()
    assert refused(answer, 413, BIG_BODY_BYTES) and answer.seconds < MAX_ANSWER_S, answer
    # Far past the socket buffers (a few MiB on loopback), so a connection the server cut
    # shows as a body not sent through, not one the kernel took whole (CI saw 2.5 MiB go).
    chunked = RawRequest(service.url)
    try:
        answer = chunked.send("POST", "/api/v1/jobs", auth, BIG_BODY_BYTES, chunked=True)
    finally:
        chunked.close()
    assert refused(answer, 413, BIG_BODY_BYTES), answer
