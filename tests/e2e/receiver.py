"""A real webhook receiver on 127.0.0.1 for tests: records every request, answers as told."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.e2e.waiting import wait_until


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    #: The status the receiver answered with; None while the answer is being decided.
    answered: int | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """`answers[path]` decides the answer to a request to `path`: a status, or a status and
    headers (default 200)."""

    url: str
    received: list[Received] = field(default_factory=list)
    answers: dict[str, Callable[[Received], int | tuple[int, dict[str, str]]]] = field(
        default_factory=dict
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait_for(
        self, path: str, count: int, timeout_s: float = 30, where: Callable[[Received], bool] = bool
    ) -> list[Received]:
        """At least `count` requests to `path` matching `where`, once they have arrived."""

        def arrived() -> list[Received]:
            got = [r for r in self.at(path) if where(r)]
            return got if len(got) >= count else []

        return wait_until(
            arrived,
            timeout_s=timeout_s,
            what=f"{count} matching requests to {path}",
            state=lambda: f"{len(self.at(path))} requests to {path}",
        )


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            got = Received(
                self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
            )
            with receiver.lock:
                receiver.received.append(got)
            answer = receiver.answers.get(self.path, lambda _: 200)(got)
            status, headers = answer if isinstance(answer, tuple) else (answer, {})
            with receiver.lock:
                got.answered = status
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
