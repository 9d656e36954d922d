"""A WebSocket client for an ASGI app running in the test's own event loop.

Starlette's `TestClient` runs the app in a thread with its own loop, where the shard (made
in the test's loop) cannot run, so the tests speak ASGI to the app directly: the
handshake (accepted, or refused with an HTTP response through the denial extension),
messages both ways, and the close.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message

WAIT_S = 5.0


@dataclass
class Refused(Exception):
    """The handshake was answered with HTTP (`status`, JSON `body`), or closed (`code`)."""

    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    code: int | None = None


@dataclass
class Closed:
    code: int
    reason: str


class AsgiWebSocket:
    """One connection to `app` at `url` (a path with its query string)."""

    def __init__(
        self,
        app: ASGIApp,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        subprotocols: tuple[str, ...] = (),
        denial: bool = True,
    ) -> None:
        parts = urlsplit(url)
        self.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
            "path": parts.path,
            "raw_path": parts.path.encode(),
            "query_string": parts.query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "subprotocols": list(subprotocols),
            "state": {},
            "extensions": {"websocket.http.response": {}} if denial else {},
        }
        self._app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.subprotocol: str | None = None

    async def connect(self) -> AsgiWebSocket:
        """Open it; `Refused` when the app answers the handshake with anything but accept."""
        self._task = asyncio.create_task(
            self._app(self.scope, self._to_app.get, self._from_app.put)
        )
        await self._to_app.put({"type": "websocket.connect"})
        first = await self._next()
        if first["type"] == "websocket.accept":
            self.subprotocol = first.get("subprotocol")
            return self
        if first["type"] == "websocket.close":
            raise Refused(code=first.get("code", 1000))
        assert first["type"] == "websocket.http.response.start", first
        body = b""
        while True:
            part = await self._next()
            body += part.get("body", b"")
            if not part.get("more_body", False):
                break
        headers = {k.decode(): v.decode() for k, v in first.get("headers", [])}
        raise Refused(first["status"], json.loads(body), headers)

    async def send_text(self, text: str) -> None:
        await self._to_app.put({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._to_app.put({"type": "websocket.receive", "bytes": data})

    async def receive(self) -> dict[str, Any] | Closed:
        """The next JSON message from the app, or how it closed."""
        message = await self._next()
        if message["type"] == "websocket.close":
            await self._to_app.put({"type": "websocket.disconnect", "code": message["code"]})
            return Closed(message.get("code", 1000), message.get("reason") or "")
        assert message["type"] == "websocket.send", message
        return json.loads(message["text"])

    async def disconnect(self, code: int = 1000) -> None:
        """The client goes away; wait for the app to finish."""
        await self._to_app.put({"type": "websocket.disconnect", "code": code})
        await self.finished()

    async def finished(self) -> None:
        assert self._task is not None
        await asyncio.wait_for(self._task, WAIT_S)

    async def _next(self) -> Message:
        return await asyncio.wait_for(self._from_app.get(), WAIT_S)
