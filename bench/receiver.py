"""A fast webhook receiver for benchmarks: a bare ASGI app on uvicorn in its own process.

It answers 204 at once and records, per request, the lag from the event's `timestamp`
(set when the change was committed) to its receipt. `GET /stats` returns the count and lags.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import time
from typing import Any

LAGS: list[float] = []
COUNT = [0]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] == "GET":
        payload = json.dumps({"count": COUNT[0], "lags": LAGS}).encode()
        LAGS.clear()
        COUNT[0] = 0
        await _reply(send, 200, payload)
        return
    COUNT[0] += 1
    if scope["path"] == "/lag":
        event = json.loads(body)
        stamp = event["timestamp"]
        LAGS.append(time.time() - _epoch(stamp))
    await _reply(send, 204, b"")


async def _reply(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _serve(port: int) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        http="httptools",
        loop="uvloop",
        backlog=4096,
    )


def start() -> tuple[multiprocessing.Process, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    process.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the benchmark receiver did not start")
