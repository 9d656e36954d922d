"""A fast webhook receiver for benchmarks: a bare ASGI app on uvicorn in its own process.

It answers 204 at once. A POST to `/lag` records the lag from the event's `timestamp` (set
when the change was made) to its receipt; `GET /stats` returns the count and lags and
starts them over. A POST to `/record` also keeps what a check needs afterwards: the
Standard Webhooks headers, the body and the receipt time; `GET /records` returns them as
`[[webhook-id, webhook-timestamp, webhook-signature, body, received_at], ...]` and starts
them over. `GET /count` is how many records are kept, cheap enough to poll while deliveries arrive.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import time
from typing import Any

LAGS: list[float] = []
COUNT = [0]
RECORDS: list[tuple[str, str, str, str, float]] = []
SIGNED = (b"webhook-id", b"webhook-timestamp", b"webhook-signature")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    received_at = time.time()
    if scope["method"] == "GET":
        await _reply(send, 200, _read(scope["path"]))
        return
    COUNT[0] += 1
    if scope["path"] in ("/lag", "/record"):
        event = json.loads(body)
        LAGS.append(received_at - _epoch(event["timestamp"]))
    if scope["path"] == "/record":
        headers = dict(scope["headers"])
        signed = [headers.get(name, b"").decode() for name in SIGNED]
        RECORDS.append((signed[0], signed[1], signed[2], body.decode(), received_at))
    await _reply(send, 204, b"")


def _read(path: str) -> bytes:
    """`/count` (records kept so far), or `/records` or the stats, then start over."""
    if path == "/count":
        return str(len(RECORDS)).encode()
    if path == "/records":
        payload = json.dumps(RECORDS).encode()
        RECORDS.clear()
        return payload
    payload = json.dumps({"count": COUNT[0], "lags": LAGS}).encode()
    LAGS.clear()
    COUNT[0] = 0
    return payload


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
