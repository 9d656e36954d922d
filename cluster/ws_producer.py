"""A producer for code outside the Ray cluster: a job's output over the service's producer
WebSocket (`GET /api/v1/jobs/{jobId}/output/ws`), asyncio, with many chunks in flight.

    async with WebSocketProducer("http://127.0.0.1:8000", key, "job-1", seq=1) as producer:
        for line in lines:
            await producer.write(line)    # sent at once; waits only past max_in_flight
        acks = await producer.flush()     # every chunk so far is durable

Needs the `websockets` package (`pip install 'async-output-service[client]'`). The
server's errors come back as ours (`storage.errors`, by their `code`); a connection that
drops without one is a `ConnectionError`. Either way `last_ack` is the last durable chunk:
a new producer with `seq=last_ack.seq + 1` resends the rest safely.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from actors.shard_types import AppendAck
from storage import errors

if TYPE_CHECKING:
    from websockets.exceptions import InvalidStatus

#: Each error class of ours by its `code`, to raise what the server said.
_BY_CODE: dict[str, type[errors.AosError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.AosError)
}


class WebSocketProducer:
    """One job's output, one chunk per message (text for a text or json job, binary for a
    binary job: `str` is sent as text, `bytes` as binary); `seq` numbers the first chunk;
    every chunk goes to output `version` (default: the latest when the connection opens)."""

    def __init__(
        self,
        base_url: str,
        key: str,
        job_id: str,
        *,
        namespace: str | None = None,
        seq: int | None = None,
        version: int | None = None,
        max_in_flight: int = 1024,
        open_timeout_s: float = 30.0,
    ) -> None:
        given = (("namespace", namespace), ("seq", seq), ("version", version))
        query = {k: v for k, v in given if v is not None}
        base = base_url.rstrip("/").replace("http", "ws", 1)
        self.url = f"{base}/api/v1/jobs/{job_id}/output/ws" + (
            f"?{urlencode(query)}" if query else ""
        )
        self._key = key
        self._open_timeout_s = open_timeout_s
        self._room = asyncio.Semaphore(max_in_flight)
        self._socket: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._acks: list[AppendAck] = []
        self._sent = 0
        self._acked = 0
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        #: The last chunk acknowledged (durable).
        self.last_ack: AppendAck | None = None

    async def __aenter__(self) -> WebSocketProducer:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            await self.flush()
        await self.aclose()

    async def open(self) -> None:
        """Connect; a refused handshake raises the server's error (`Unauthorized`, ...)."""
        connect, invalid_status = _websockets()
        try:
            self._socket = await connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {self._key}"},
                open_timeout=self._open_timeout_s,
                max_size=None,
                proxy=None,
            )
        except invalid_status as refused:
            raise _error_of(_json(refused.response.body)) from refused
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def write(self, data: bytes | str) -> None:
        """Send the next chunk; waits while `max_in_flight` are unacknowledged. Raises the
        error that stopped the producer, if one did."""
        self._raise_if_stopped()
        await self._room.acquire()
        self._raise_if_stopped()
        self._sent += 1
        try:
            await self._socket.send(data)
        except Exception as exc:  # the connection is gone: the reader says why
            await self._settled()
            self._raise_if_stopped()
            raise ConnectionError("the producer's connection was lost") from exc

    async def flush(self) -> list[AppendAck]:
        """Wait until every chunk sent so far is acknowledged; their acks since the last
        flush, in order. Raises the error that stopped the producer, if one did."""
        while self._acked < self._sent and self._error is None:
            self._changed.clear()
            await self._changed.wait()
        self._raise_if_stopped()
        acks, self._acks = self._acks, []
        return acks

    async def aclose(self) -> None:
        """Close the connection (chunks not acknowledged may or may not be written, whole)."""
        if self._socket is not None:
            await self._socket.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for message in self._socket:
                body = json.loads(message)
                if "error" in body:
                    self._error = _error_of(body)
                    break
                ack = AppendAck(body["seq"], body["offset"], body["size"])
                self._acks.append(ack)
                self.last_ack = ack
                self._acked += 1
                self._room.release()
                self._changed.set()
        except Exception as exc:  # the connection dropped (or a reply we cannot read)
            self._error = ConnectionError(f"the producer's connection was lost: {exc}")
        if self._error is None:
            self._error = ConnectionError("the server closed the producer's connection")
        self._changed.set()
        for _ in range(self._sent - self._acked):
            self._room.release()  # wake writers waiting for room: they raise the error

    async def _settled(self) -> None:
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    def _raise_if_stopped(self) -> None:
        if self._error is not None:
            raise self._error


def _error_of(body: Any) -> BaseException:
    """Our error for the server's `{"error": {"code", "message"}}`."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ConnectionError(f"the server refused the producer: {body!r}")
    cls = _BY_CODE.get(str(error.get("code")), errors.AosError)
    return cls(str(error.get("message", "")))


def _json(raw: bytes | bytearray | None) -> Any:
    try:
        return json.loads(raw or b"")
    except ValueError:
        return bytes(raw or b"").decode(errors="replace")


def _websockets() -> tuple[Any, type[InvalidStatus]]:
    try:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus
    except ImportError as exc:  # an extra: only producers outside the cluster need it
        raise ImportError(
            "WebSocketProducer needs the websockets package: "
            "pip install 'async-output-service[client]'"
        ) from exc
    return connect, InvalidStatus
