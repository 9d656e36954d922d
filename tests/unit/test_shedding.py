"""Load shedding at the ingress (serve_app/shedding.py): past its bound a replica answers 503
`overloaded` with a spread `Retry-After` at once; long-polls and answers already started do
not count; places come back when requests end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from serve_app.budget import InFlight
from serve_app.shedding import RECEIVED_HEADER, Shedder, counted, queued_s
from tests.unit.fakes import WAIT_S, GatedStore
from tests.unit.test_api import ADMIN, JOBS, http, make_app

NS = {"namespace": "acme"}


def test_in_flight_refuses_past_its_bound_and_counts_what_it_sheds():
    slots = InFlight(2)
    assert slots.enter() is None and slots.enter() is None
    assert "working on 2 requests" in (slots.enter() or "") and slots.shed == 1
    slots.leave()
    assert slots.enter() is None and slots.count == 2


def test_in_flight_refuses_a_request_that_waited_too_long_to_arrive():
    slots = InFlight(10, max_queued_s=5)
    assert "waited 7.5 s" in (slots.enter(queued_s=7.5) or "") and slots.count == 0
    assert slots.enter(queued_s=4.9) is None
    assert slots.enter(queued_s=None) is None  # no stamp: only the count bounds it
    assert InFlight(10).enter(queued_s=1e6) is None  # no bound on the wait
    assert slots.shed == 1 and slots.count == 2


def test_the_wait_is_read_from_haproxys_stamp():
    def waited(stamp: str | None, now_s: float = 100.0) -> float | None:
        raw = [] if stamp is None else [(RECEIVED_HEADER.encode(), stamp.encode())]
        return queued_s(Headers(raw=raw), now_s)

    assert waited("97500") == 2.5
    assert waited("100200") == 0.0  # another node's clock a little ahead: no wait
    assert waited(None) is None and waited("soon") is None and waited("-5") is None
    assert waited("1000", now_s=1e6) is None  # a clock gone wrong, not a queue


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("POST", "/api/v1/jobs", b"", True),
        ("GET", "/api/v1/jobs/j/status", b"", True),
        ("GET", "/api/v1/jobs/j/stream", b"", True),  # until its headers are out
        ("GET", "/api/v1/jobs/j/status", b"wait=30", False),  # a long-poll waits on purpose
        ("GET", "/api/v1/jobs/j/status", b"namespace=a&wait=5", False),
        ("GET", "/api/v1/jobs/j/status", b"waiting=1", True),
        ("POST", "/api/v1/jobs", b"wait=5", True),  # only a GET long-polls
        ("GET", "/healthz", b"", False),
        ("GET", "/readyz", b"", False),
    ],
)
def test_which_requests_take_a_place(method: str, path: str, query: bytes, expected: bool):
    scope = {"type": "http", "method": method, "path": path, "query_string": query}
    assert counted(scope) is expected


def test_a_websocket_takes_no_place():
    assert not counted({"type": "websocket", "path": "/api/v1/jobs/j/output/ws"})


@pytest.fixture
async def gated_shard(store: GatedStore) -> AsyncIterator[Shard]:
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    yield shard
    await shard.stop()


async def _until(condition: Any) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_past_its_bound_a_replica_sheds_at_once_and_takes_requests_again_after(
    store: GatedStore, gated_shard: Shard
):
    app = make_app(store, ShardClient.in_process([gated_shard], store=store), max_in_flight=2)
    in_flight = app.state.deps.in_flight
    async with http(app) as api:
        made = await api.post("/api/v1/namespaces", json={"name": "acme"}, headers=ADMIN)
        assert made.is_success
        store.gate = asyncio.Event()  # the shard's commits wait here: submits stay in flight
        held = [
            asyncio.create_task(api.post(JOBS, params=NS, json={"jobId": j}, headers=ADMIN))
            for j in ("a", "b")
        ]
        await _until(lambda: in_flight.count == 2)

        shed = await asyncio.wait_for(
            api.post(JOBS, params=NS, json={"jobId": "c"}, headers=ADMIN), WAIT_S
        )
        assert shed.status_code == 503
        assert shed.json()["error"]["code"] == "overloaded"
        assert shed.headers["Retry-After"] in {"1", "2", "3"}
        assert "connection" not in shed.headers  # a small body unread: the connection stays
        # Unauthenticated, it is shed all the same: the key is not even looked at.
        assert (await api.post(JOBS, json={"jobId": "c"})).status_code == 503
        # A long-poll is not counted (here a 404 from its handler), nor is /healthz.
        polled = await api.get(f"{JOBS}/none/status", params={**NS, "wait": "1"}, headers=ADMIN)
        assert polled.status_code == 404
        assert (await api.get("/healthz")).status_code == 200
        # A request HAProxy received 10 s ago is shed, whatever the count.
        late = {**ADMIN, RECEIVED_HEADER: str(int((time.time() - 10) * 1000))}
        gone = await api.post(JOBS, params=NS, json={"jobId": "late"}, headers=late)
        assert gone.status_code == 503 and "waited" in gone.json()["error"]["message"]
        assert in_flight.shed == 3

        store.gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [201, 201]
        assert in_flight.count == 0
        again = await api.post(JOBS, params=NS, json={"jobId": "c"}, headers=ADMIN)
        assert again.status_code == 201


async def test_a_shed_request_with_a_large_body_closes_its_connection(
    store: GatedStore, gated_shard: Shard
):
    app = make_app(store, ShardClient.in_process([gated_shard], store=store), max_in_flight=1)
    app.state.deps.in_flight.count = 1  # every place taken
    async with http(app) as api:
        shed = await api.post(f"{JOBS}/j/output", content=b"x" * 100_000, headers=ADMIN)
    assert shed.status_code == 503
    assert shed.headers["connection"] == "close"  # not drained by the server to keep it


def _scope(in_flight: InFlight) -> Scope:
    deps = SimpleNamespace(in_flight=in_flight)
    return {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/jobs/j/output/raw",
        "query_string": b"",
        "headers": [],
        "app": SimpleNamespace(state=SimpleNamespace(deps=deps)),
    }


async def test_a_request_gives_its_place_back_once_its_answer_starts():
    """A download (or a stream) waits on its client once its headers are out, not on us."""
    body_may_go = asyncio.Event()
    in_flight = InFlight(1)

    async def download(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await body_may_go.wait()
        await send({"type": "http.response.body", "body": b"done"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    task = asyncio.create_task(Shedder(download)(_scope(in_flight), receive, send))
    await _until(lambda: sent)
    assert in_flight.count == 0  # the answer started: the place is free while the body goes
    body_may_go.set()
    await asyncio.wait_for(task, WAIT_S)
    assert in_flight.count == 0 and in_flight.shed == 0


async def test_a_request_that_fails_gives_its_place_back():
    in_flight = InFlight(1)

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    with pytest.raises(RuntimeError):
        await Shedder(broken)(_scope(in_flight), receive, send)
    assert in_flight.count == 0
