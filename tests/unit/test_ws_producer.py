"""`WebSocketProducer` against the app served by a real uvicorn in this event loop (no Ray):
the real WebSocket stack end to end, the handshake refused as HTTP, errors raised as ours,
resume with `seq`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from actors.shard import Shard
from actors.shard_client import ShardClient
from cluster.ws_producer import WebSocketProducer
from storage.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unauthorized
from tests.conftest import free_port
from tests.unit.fakes import WAIT_S
from tests.unit.test_api import ADMIN, JOBS, make_app

MAX_CHUNK = 1024


@pytest.fixture
async def base_url(store, shard: Shard) -> AsyncIterator[str]:
    shards = ShardClient(
        num_shards=1, shards=[shard].__getitem__, store=store, max_chunk_bytes=MAX_CHUNK
    )
    port = free_port()
    config = uvicorn.Config(
        make_app(store, shards), host="127.0.0.1", port=port, lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not server.started:
        assert asyncio.get_running_loop().time() < deadline and not serving.done()
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(serving, WAIT_S)


@pytest.fixture
async def api(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers=ADMIN) as client:
        yield client


@pytest.fixture
async def key(api: httpx.AsyncClient) -> str:
    minted = await api.post("/api/v1/namespaces/acme/keys")
    assert minted.status_code == 201
    return minted.json()["key"]


async def submit(api, job_id: str, output_format: str = "text") -> None:
    body = {"jobId": job_id, "outputFormat": output_format}
    created = await api.post(JOBS, json=body, params={"namespace": "acme"})
    assert created.status_code == 201, created.text


async def raw(api, job_id: str) -> bytes:
    response = await api.get(f"{JOBS}/{job_id}/output/raw", params={"namespace": "acme"})
    return response.content


async def test_chunks_stream_with_many_in_flight_and_flush_returns_their_acks(base_url, api, key):
    await submit(api, "j1")
    lines = [f"line {i}\n" for i in range(300)]
    async with WebSocketProducer(base_url, key, "j1", max_in_flight=64) as producer:
        for line in lines:
            await producer.write(line)
        acks = await producer.flush()
    assert [a.seq for a in acks] == list(range(1, 301))
    assert producer.last_ack == acks[-1]
    assert await raw(api, "j1") == "".join(lines).encode()


async def test_a_binary_job_takes_bytes(base_url, api, key):
    await submit(api, "bin", "binary")
    async with WebSocketProducer(base_url, key, "bin") as producer:
        await producer.write(b"\x00\xff")
    assert await raw(api, "bin") == b"\x00\xff"


async def test_a_refused_handshake_raises_the_servers_error(base_url, api, key):
    await submit(api, "j1")
    with pytest.raises(Unauthorized):
        await WebSocketProducer(base_url, "aos_0123456789abcdef_wrong", "j1").open()
    with pytest.raises(NotFound):
        await WebSocketProducer(base_url, key, "missing").open()
    minted = await api.post("/api/v1/namespaces/globex/keys")
    globex = minted.json()["key"]
    with pytest.raises(Forbidden):
        await WebSocketProducer(base_url, globex, "j1", namespace="acme").open()


async def test_a_bad_chunk_raises_its_error_after_the_earlier_ones_are_durable(base_url, api, key):
    await submit(api, "j1")
    producer = WebSocketProducer(base_url, key, "j1")
    await producer.open()
    await producer.write("fine")
    await producer.write(b"binary to a text job")
    with pytest.raises(Invalid):
        await producer.flush()
    assert producer.last_ack is not None and producer.last_ack.seq == 1
    with pytest.raises(Invalid):
        await producer.write("later")
    await producer.aclose()
    assert await raw(api, "j1") == b"fine"


async def test_a_chunk_over_the_limit_raises_too_large(base_url, api, key):
    await submit(api, "j1")
    producer = WebSocketProducer(base_url, key, "j1")
    await producer.open()
    await producer.write("x" * (MAX_CHUNK + 1))
    with pytest.raises(TooLarge):
        await producer.flush()
    await producer.aclose()


async def test_a_new_producer_at_the_next_seq_resends_without_doubling(base_url, api, key):
    await submit(api, "j1")
    async with WebSocketProducer(base_url, key, "j1", seq=1) as first:
        for text in ("a", "b", "c"):
            await first.write(text)
    async with WebSocketProducer(base_url, key, "j1", seq=2) as again:
        for text in ("b", "c", "d"):
            await again.write(text)
        assert [a.seq for a in await again.flush()] == [2, 3, 4]
    conflicting = WebSocketProducer(base_url, key, "j1", seq=2)
    await conflicting.open()
    await conflicting.write("X")
    with pytest.raises(Conflict):
        await conflicting.flush()
    await conflicting.aclose()
    assert await raw(api, "j1") == b"abcd"
