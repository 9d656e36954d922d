"""The producer's WebSocket through real Ray Serve (HAProxy or Serve's own proxy), real shard
actors and SQLite, with the `websockets` client: many chunks in flight, each acknowledged
once and in order, read back exactly; handshakes refused as HTTP; a producer cut off
mid-stream resumes with `?seq=` and nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.e2e

CHUNK_BYTES = 1024
OPEN_TIMEOUT_S = 30.0
#: How long one ack may take to come, at worst (a cold shard, a slow shared machine).
ACK_TIMEOUT_S = 60.0
HAPROXY = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"


def ws_url(service, job_id: str, **query: Any) -> str:
    base = service.url.replace("http://", "ws://", 1)
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{base}/api/v1/jobs/{job_id}/output/ws" + (f"?{params}" if params else "")


def open_ws(url: str, key: str | None) -> connect:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return connect(
        url, additional_headers=headers, proxy=None, open_timeout=OPEN_TIMEOUT_S, max_size=None
    )


def submit(tenant, job_id: str, output_format: str = "binary") -> None:
    body = {"jobId": job_id, "outputFormat": output_format}
    assert tenant.http.post("/api/v1/jobs", json=body).status_code == 201


def raw(tenant, job_id: str) -> bytes:
    response = tenant.http.get(f"/api/v1/jobs/{job_id}/output/raw")
    assert response.status_code == 200
    return response.content


def chunks(count: int, *, salt: int = 0) -> list[bytes]:
    """`count` distinct 1 KiB chunks (so a doubled or reordered one shows)."""
    return [(f"{salt}:{i}:".encode() * CHUNK_BYTES)[:CHUNK_BYTES] for i in range(count)]


async def stream(socket: ClientConnection, data: list[bytes], *, first_seq: int) -> list[dict]:
    """Send every chunk without waiting (many in flight) while reading one ack per chunk."""

    async def send_all() -> None:
        for chunk in data:
            await socket.send(chunk)

    sender = asyncio.create_task(send_all())
    acks = [json.loads(await asyncio.wait_for(socket.recv(), ACK_TIMEOUT_S)) for _ in data]
    await sender
    expected_seqs = list(range(first_seq, first_seq + len(data)))
    assert [a.get("seq") for a in acks] == expected_seqs, acks[:3]
    return acks


def test_2000_chunks_in_flight_are_each_acknowledged_once_in_order_and_read_back(service, tenant):
    submit(tenant, "bulk")
    data = chunks(2000)

    async def produce() -> tuple[list[dict], float]:
        async with open_ws(ws_url(service, "bulk"), tenant.key) as socket:
            started = time.perf_counter()
            acks = await stream(socket, data, first_seq=1)
            return acks, time.perf_counter() - started

    acks, elapsed_s = asyncio.run(produce())
    assert acks == [
        {"seq": i + 1, "offset": i * CHUNK_BYTES, "size": CHUNK_BYTES} for i in range(2000)
    ]
    assert raw(tenant, "bulk") == b"".join(data)
    proxy = "HAProxy" if HAPROXY else "Serve's proxy"
    print(
        f"\nproducer WebSocket ({proxy}): 2000 x 1 KiB acknowledged in {elapsed_s:.2f} s,"
        f" {2000 / elapsed_s:,.0f} appends/s"
    )


def test_a_handshake_without_a_key_or_with_another_tenants_is_refused_as_http(
    service, tenant, other_tenant
):
    submit(tenant, "guarded")

    async def status_of(url: str, key: str | None) -> tuple[int, dict]:
        try:
            async with open_ws(url, key):
                pass
        except InvalidStatus as refused:
            return refused.response.status_code, json.loads(refused.response.body or b"{}")
        raise AssertionError("the handshake was accepted")

    no_key = asyncio.run(status_of(ws_url(service, "guarded"), None))
    others = asyncio.run(
        status_of(ws_url(service, "guarded", namespace=tenant.namespace), other_tenant.key)
    )
    # Both ingresses carry the denial response: HAProxy forwards the replica's uvicorn
    # answer, and Serve's Python proxy relays the replica's ASGI messages to its uvicorn.
    assert no_key[0] == 401 and no_key[1]["error"]["code"] == "unauthorized"
    assert others[0] == 403 and others[1]["error"]["code"] == "forbidden"


def test_a_bad_chunk_gets_the_earlier_acks_then_its_error_and_close_code(service, tenant):
    submit(tenant, "typed")

    async def produce() -> tuple[list[dict], int | None]:
        async with open_ws(ws_url(service, "typed"), tenant.key) as socket:
            await socket.send(b"fine")
            await socket.send("a text message to a binary job")
            messages = []
            try:
                while True:
                    messages.append(json.loads(await asyncio.wait_for(socket.recv(), 60)))
            except ConnectionClosed as closed:
                return messages, closed.rcvd.code if closed.rcvd else None

    messages, code = asyncio.run(produce())
    assert messages[0] == {"seq": 1, "offset": 0, "size": 4}
    assert messages[1]["error"]["code"] == "invalid" and len(messages) == 2
    assert code == 1007
    assert raw(tenant, "typed") == b"fine"


def test_a_producer_cut_off_mid_stream_resumes_with_seq_and_nothing_is_lost_or_doubled(
    service, tenant
):
    submit(tenant, "resumed")
    data = chunks(600, salt=7)

    async def cut_off() -> int:
        """Stream everything, read some acks, then drop the TCP connection at once."""
        socket = await open_ws(ws_url(service, "resumed", seq=1), tenant.key)
        for chunk in data:
            await socket.send(chunk)
        acked = 0
        while acked < 100:
            ack = json.loads(await asyncio.wait_for(socket.recv(), ACK_TIMEOUT_S))
            assert ack["seq"] == acked + 1
            acked += 1
        socket.transport.abort()  # no close frame: the server just sees the socket go
        return acked

    async def resume(acked: int) -> list[dict]:
        async with open_ws(ws_url(service, "resumed", seq=acked + 1), tenant.key) as socket:
            return await stream(socket, data[acked:], first_seq=acked + 1)

    acked = asyncio.run(cut_off())
    acks = asyncio.run(resume(acked))
    assert [a["offset"] for a in acks] == [i * CHUNK_BYTES for i in range(acked, len(data))]
    assert raw(tenant, "resumed") == b"".join(data)  # every chunk once, in order
    job = tenant.http.get("/api/v1/jobs/resumed").json()
    assert job["outputSeq"] == len(data)
