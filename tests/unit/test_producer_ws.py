"""The producer's WebSocket in process (the whole app, its Guard included, over a real shard
on the in-memory store): the handshake refused as HTTP before the upgrade, one ack per
chunk in order, an error and a clear close code for a bad chunk, resume with `?seq=`."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from actors.shard import Shard
from actors.shard_client import ShardClient
from serve_app.errors import close_code
from serve_app.guard import Guard
from storage import errors
from tests.unit.fakes import WAIT_S, until
from tests.unit.test_api import ADMIN, JOBS, http, make_app
from tests.unit.websocket import AsgiWebSocket, Closed, Refused

#: The deployment's largest chunk in these tests, so "too large" is cheap to send.
MAX_CHUNK = 64


@pytest.fixture
def app(store, shard: Shard) -> FastAPI:
    shards = ShardClient(
        num_shards=1, shards=[shard].__getitem__, store=store, max_chunk_bytes=MAX_CHUNK
    )
    return make_app(store, shards)


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http(app) as client:
        yield client


async def key_of(api: httpx.AsyncClient, namespace: str) -> str:
    minted = await api.post(f"/api/v1/namespaces/{namespace}/keys", headers=ADMIN)
    assert minted.status_code == 201, minted.text
    return minted.json()["key"]


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {await key_of(api, 'acme')}"}


@pytest.fixture
async def job(api: httpx.AsyncClient, acme: dict[str, str]) -> str:
    return await new_job(api, acme, "j1")


async def new_job(api, headers, job_id: str, output_format: str = "text") -> str:
    body = {"jobId": job_id, "outputFormat": output_format}
    created = await api.post(JOBS, json=body, headers=headers)
    assert created.status_code == 201, created.text
    return job_id


def ws(app: FastAPI, job_id: str, headers: dict[str, str], query: str = "", **options):
    url = f"{JOBS}/{job_id}/output/ws" + (f"?{query}" if query else "")
    return AsgiWebSocket(app, url, headers=headers, **options)


async def acks_then_close(socket: AsgiWebSocket) -> tuple[list[dict], dict | None, Closed]:
    """Every message until the close: the acks, the error (if one came), how it closed."""
    acks, error = [], None
    while not isinstance(message := await socket.receive(), Closed):
        if "error" in message:
            error = message["error"]
        else:
            assert error is None, "no ack may follow the error"
            acks.append(message)
    return acks, error, message


async def receive_acks(socket: AsgiWebSocket, count: int) -> list[dict]:
    acks = [await socket.receive() for _ in range(count)]
    assert all(not isinstance(a, Closed) and "error" not in a for a in acks), acks
    return acks


async def raw_output(api, headers, job_id: str = "j1") -> bytes:
    response = await api.get(f"{JOBS}/{job_id}/output/raw", headers=headers)
    assert response.status_code == 200
    return response.content


# -- the handshake ---------------------------------------------------------------------------


async def test_each_chunk_is_acknowledged_in_order_with_many_in_flight(app, api, acme, job):
    socket = await ws(app, job, acme).connect()
    chunks = [f"line {i}\n" for i in range(200)]
    for chunk in chunks:  # all sent before any ack is read
        await socket.send_text(chunk)
    acks = await receive_acks(socket, len(chunks))
    offsets = [sum(len(c) for c in chunks[:i]) for i in range(len(chunks))]
    assert acks == [
        {"seq": i + 1, "offset": offsets[i], "size": len(c)} for i, c in enumerate(chunks)
    ]
    await socket.disconnect()
    assert await raw_output(api, acme) == "".join(chunks).encode()


async def test_a_binary_job_takes_binary_messages(app, api, acme):
    await new_job(api, acme, "bin", "binary")
    socket = await ws(app, "bin", acme).connect()
    for data in (b"\x00\xff", b"\x80"):
        await socket.send_bytes(data)
    assert [a["seq"] for a in await receive_acks(socket, 2)] == [1, 2]
    await socket.disconnect()
    output = await api.get(f"{JOBS}/bin/output", headers=acme)
    assert base64.b64decode(output.json()["output"]) == b"\x00\xff\x80"


async def test_the_namespace_comes_from_the_query_like_other_job_paths(app, api, acme, job):
    socket = await ws(app, job, acme, "namespace=acme").connect()
    await socket.send_text("x")
    assert (await socket.receive())["seq"] == 1
    await socket.disconnect()


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer aos_0123456789abcdef_nope"}, 401, "unauthorized"),
        ({"Authorization": "Basic eDp5"}, 401, "unauthorized"),
    ],
)
async def test_a_handshake_without_a_valid_key_is_refused_before_the_upgrade(
    app, job, headers, status, code
):
    with pytest.raises(Refused) as refused:
        await ws(app, job, headers).connect()
    assert refused.value.status == status
    assert refused.value.body["error"]["code"] == code


async def test_another_tenants_namespace_is_forbidden_and_its_jobs_unseen(app, api, acme, job):
    globex = {"Authorization": f"Bearer {await key_of(api, 'globex')}"}
    with pytest.raises(Refused) as forbidden:
        await ws(app, job, globex, "namespace=acme").connect()
    assert (forbidden.value.status, forbidden.value.body["error"]["code"]) == (403, "forbidden")
    with pytest.raises(Refused) as unseen:  # globex's key resolves to globex: no such job
        await ws(app, job, globex).connect()
    assert unseen.value.status == 404


@pytest.mark.parametrize(
    ("job_id", "query", "status"),
    [
        ("missing", "", 404),
        ("j1", "seq=0", 422),
        ("j1", "seq=abc", 422),
        ("j1", "seq=99999999999999999999", 422),
        ("bad%20id", "", 422),
        ("j1", "namespace=Not_A_Name", 422),
    ],
)
async def test_a_bad_job_or_query_is_refused_before_the_upgrade(
    app, acme, job, job_id, query, status
):
    with pytest.raises(Refused) as refused:
        await ws(app, job_id, acme, query).connect()
    assert refused.value.status == status
    assert sorted(refused.value.body["error"]) == ["code", "message"]


async def test_the_admin_key_must_name_the_namespace(app, job):
    with pytest.raises(Refused) as ambiguous:
        await ws(app, job, ADMIN).connect()
    assert ambiguous.value.status == 400
    socket = await ws(app, job, ADMIN, "namespace=acme").connect()
    await socket.send_text("x")
    assert (await socket.receive())["seq"] == 1
    await socket.disconnect()


async def test_a_browser_may_offer_its_key_as_a_subprotocol(app, api, acme, job):
    key = acme["Authorization"].removeprefix("Bearer ")
    offered = ("aos.v1", f"aos.bearer.{key}")
    socket = await ws(app, job, {}, subprotocols=offered).connect()
    assert socket.subprotocol == "aos.v1"  # never the one carrying the key
    await socket.send_text("x")
    assert (await socket.receive())["seq"] == 1
    await socket.disconnect()
    with pytest.raises(Refused) as refused:
        await ws(app, job, {}, subprotocols=("aos.v1", "aos.bearer.wrong")).connect()
    assert refused.value.status == 401


async def test_without_the_denial_extension_a_refusal_is_a_close_before_the_upgrade(app, job):
    with pytest.raises(Refused) as refused:
        await ws(app, job, {}, denial=False).connect()
    assert refused.value.code == 1008  # the server answers it with 403


async def test_an_unknown_websocket_path_is_closed_before_the_upgrade(app, acme):
    with pytest.raises(Refused) as refused:
        await AsgiWebSocket(app, "/api/v1/jobs/j1/nothing", headers=acme).connect()
    assert refused.value.code is not None


# -- bad chunks: acks before, then the error and a close code --------------------------------


async def test_a_binary_message_to_a_text_job_is_refused_after_the_acks_before_it(
    app, api, acme, job
):
    socket = await ws(app, job, acme).connect()
    await socket.send_text("a")
    await socket.send_text("b")
    await socket.send_bytes(b"c")
    await socket.send_text("never")
    acks, error, closed = await acks_then_close(socket)
    assert [a["seq"] for a in acks] == [1, 2]
    assert error["code"] == "invalid" and "text message" in error["message"]
    assert (closed.code, closed.reason) == (1007, "invalid")
    await socket.finished()
    assert await raw_output(api, acme) == b"ab"


async def test_a_text_message_to_a_binary_job_is_invalid(app, api, acme):
    await new_job(api, acme, "bin", "binary")
    socket = await ws(app, "bin", acme).connect()
    await socket.send_text("text")
    acks, error, closed = await acks_then_close(socket)
    assert acks == [] and error["code"] == "invalid" and closed.code == 1007


async def test_a_chunk_over_the_limit_is_too_large_1009(app, api, acme, job):
    socket = await ws(app, job, acme).connect()
    await socket.send_text("fits")
    await socket.send_text("x" * (MAX_CHUNK + 1))
    acks, error, closed = await acks_then_close(socket)
    assert len(acks) == 1 and error["code"] == "too_large" and closed.code == 1009


async def test_an_empty_message_is_invalid_1007(app, acme, job):
    socket = await ws(app, job, acme).connect()
    await socket.send_text("")
    _, error, closed = await acks_then_close(socket)
    assert error["code"] == "invalid" and closed.code == 1007


async def test_a_job_finished_meanwhile_is_a_conflict_1008(app, api, acme, job):
    socket = await ws(app, job, acme).connect()
    await socket.send_text("a")
    assert (await socket.receive())["seq"] == 1
    done = await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    assert done.status_code == 200
    await socket.send_text("late")
    acks, error, closed = await acks_then_close(socket)
    assert acks == [] and error["code"] == "conflict" and closed.code == 1008


async def test_a_store_failure_closes_1011_and_writes_nothing_of_the_round(
    app, api, acme, job, store
):
    socket = await ws(app, job, acme).connect()
    store.fail_commits = True
    await socket.send_text("lost")
    acks, error, closed = await acks_then_close(socket)
    store.fail_commits = False
    assert acks == [] and error["code"] == "store_unavailable" and closed.code == 1011
    assert await raw_output(api, acme) == b""


# -- resume ----------------------------------------------------------------------------------


async def test_a_resumed_producer_gets_resent_chunks_acknowledged_not_duplicated(
    app, api, acme, job
):
    first = await ws(app, job, acme, "seq=1").connect()
    for text in ("a", "b", "c"):
        await first.send_text(text)
    assert [a["seq"] for a in await receive_acks(first, 3)] == [1, 2, 3]
    await first.disconnect()
    again = await ws(app, job, acme, "seq=2").connect()  # it had not seen the acks of 2, 3
    for text in ("b", "c", "d"):
        await again.send_text(text)
    acks = await receive_acks(again, 3)
    assert acks == [
        {"seq": 2, "offset": 1, "size": 1},
        {"seq": 3, "offset": 2, "size": 1},
        {"seq": 4, "offset": 3, "size": 1},
    ]
    await again.disconnect()
    assert await raw_output(api, acme) == b"abcd"


async def test_a_resume_with_other_bytes_or_a_gap_is_a_conflict_1008(app, api, acme, job):
    first = await ws(app, job, acme, "seq=1").connect()
    await first.send_text("a")
    await receive_acks(first, 1)
    await first.disconnect()
    for query, text in (("seq=1", "A"), ("seq=3", "c")):
        socket = await ws(app, job, acme, query).connect()
        await socket.send_text(text)
        acks, error, closed = await acks_then_close(socket)
        assert acks == [] and error["code"] == "conflict" and closed.code == 1008
    assert await raw_output(api, acme) == b"a"


async def test_a_disconnect_mid_stream_loses_no_ack_and_writes_no_part_of_a_chunk(
    app, api, acme, job, store, shard
):
    chunks = [f"{i:04d}|" * 8 for i in range(40)]  # 40 bytes each
    store.gate = asyncio.Event()
    try:
        socket = await ws(app, job, acme, "seq=1").connect()
        for chunk in chunks:
            await socket.send_text(chunk)
        await asyncio.wait_for(store.arrived.wait(), WAIT_S)  # a round reached the store
        await socket.disconnect()  # gone before any ack
    finally:
        store.gate.set()
    await until(_no_pending_writes(shard))
    stored = await raw_output(api, acme)
    assert stored and len(stored) % 40 == 0  # the round in flight committed whole
    assert stored == "".join(chunks[: len(stored) // 40]).encode()  # a prefix, in order
    again = await ws(app, job, acme, "seq=1").connect()  # resend everything unacknowledged
    for chunk in chunks:
        await again.send_text(chunk)
    acks = await receive_acks(again, len(chunks))
    assert [a["seq"] for a in acks] == list(range(1, 41))
    await again.disconnect()
    assert await raw_output(api, acme) == "".join(chunks).encode()


async def test_acks_and_errors_are_json_text_messages(app, acme, job):
    socket = await ws(app, job, acme).connect()
    await socket.send_text("a")
    message = await socket._next()
    assert message["type"] == "websocket.send" and "bytes" not in message
    assert json.loads(message["text"]) == {"seq": 1, "offset": 0, "size": 1}
    await socket.disconnect()


def _no_pending_writes(shard: Shard):
    async def check() -> bool:
        return (await shard.stats())["pendingWrites"] == 0

    return check


async def test_a_plain_get_of_the_url_says_to_upgrade(api, acme, job):
    response = await api.get(f"{JOBS}/j1/output/ws", headers=acme)
    assert response.status_code == 426 and response.headers["upgrade"] == "websocket"
    assert response.json()["error"]["code"] == "upgrade_required"
    unauthenticated = await api.get(f"{JOBS}/j1/output/ws")
    assert unauthenticated.status_code == 401  # the Guard checks the key of every /api/ GET


async def test_the_guard_hands_websocket_scopes_to_the_app_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append((scope, receive, send))

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        pass

    scope = {"type": "websocket", "path": "/api/v1/jobs/j1/output/ws", "headers": []}
    await Guard(app)(scope, receive, send)
    assert seen == [(scope, receive, send)]  # no key checked here: the route does it


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.TooLarge("x"), 1009),
        (errors.Invalid("x"), 1007),
        (errors.Unstorable(), 1007),
        (errors.Conflict("x"), 1008),
        (errors.NotFound("x"), 1008),
        (errors.Forbidden("x"), 1008),
        (errors.Overloaded("x"), 1013),
        (errors.ShardUnavailable("x"), 1013),
        (errors.StoreUnavailable("x"), 1011),
        (errors.Fenced("x"), 1011),
        (RuntimeError("a bug"), 1011),
    ],
)
def test_each_error_closes_with_its_rfc_6455_code(error, code):
    assert close_code(error) == code


class BrokenAppends:
    """The shard, except that `append_many` fails with a bug (not one of our errors)."""

    def __init__(self, shard: Shard) -> None:
        self._shard = shard

    def __getattr__(self, name: str):
        return getattr(self._shard, name)

    async def append_many(self, namespace: str, **options):
        raise RuntimeError("a bug in the shard")


async def test_a_bug_is_an_internal_error_and_1011_not_a_hang(store, shard, caplog):
    shards = ShardClient(num_shards=1, shards=[BrokenAppends(shard)].__getitem__, store=store)
    app = make_app(store, shards)
    async with http(app) as api:
        acme = {"Authorization": f"Bearer {await key_of(api, 'acme')}"}
        await new_job(api, acme, "j1")
        socket = await ws(app, "j1", acme).connect()
        await socket.send_text("x")
        acks, error, closed = await acks_then_close(socket)
    assert acks == [] and error == {"code": "internal", "message": "internal error"}
    assert closed.code == 1011
    assert "a bug in the shard" in caplog.text  # logged, never sent
