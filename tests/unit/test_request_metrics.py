"""Request metrics (serve_app.request_metrics): the route template as the label, the status a
client got, latency to the response head but not for long-polls, open streams gauged.

Ray's metrics do nothing outside Ray, so the metrics here are recording fakes; the e2e test
(tests/e2e/test_metrics.py) scrapes the real export.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.responses import StreamingResponse

from actors import metrics
from actors.shard_client import ShardClient
from serve_app.app import create_app
from serve_app.request_metrics import RequestMetrics, route_template
from storage.memory import MemoryStore
from tests.unit.recorded import Recorded, recording
from tests.unit.test_api import JOBS, http, make_app
from tests.unit.websocket import AsgiWebSocket, Refused


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorded]:
    """The HTTP metrics, recorded; request counts are flushed as soon as the loop turns."""
    monkeypatch.setattr(metrics, "TALLY_FLUSH_S", 0.0)
    return recording(
        monkeypatch, "HTTP_REQUESTS", "HTTP_REQUEST_DURATION", "HTTP_OPEN_STREAMS", "HTTP_SHED"
    )


async def counted(recorded: dict[str, Recorded]) -> list[dict[str, str]]:
    """The tag sets of the requests counted, once the tally has flushed."""
    await asyncio.sleep(0.01)
    return recorded["HTTP_REQUESTS"].tags()


def small_app() -> FastAPI:
    app = FastAPI()

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str, wait: float = 0) -> dict[str, str]:
        return {"jobId": job_id}

    @app.get("/jobs/{job_id}/stream")
    async def stream(job_id: str) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.websocket("/ws/{job_id}")
    async def ws(websocket: WebSocket, job_id: str) -> None:
        if job_id == "refused":
            await websocket.close()
            return
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    app.add_middleware(RequestMetrics)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=small_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def test_a_request_is_counted_by_its_route_template_never_its_path(client, recorded):
    assert (await client.get("/jobs/job-123")).status_code == 200
    assert (await client.get("/nowhere/job-123")).status_code == 404
    assert await counted(recorded) == [
        {"method": "GET", "route": "/jobs/{job_id}", "status": "200"},
        {"method": "GET", "route": metrics.UNMATCHED_ROUTE, "status": "404"},
    ]
    [(seconds, tags)] = recorded["HTTP_REQUEST_DURATION"].points[:1]
    assert tags == {"method": "GET", "route": "/jobs/{job_id}"} and 0 <= seconds < 60


async def test_a_long_poll_is_counted_but_not_timed(client, recorded):
    assert (await client.get("/jobs/a?wait=5")).status_code == 200
    assert await counted(recorded) == [
        {"method": "GET", "route": "/jobs/{job_id}", "status": "200"}
    ]
    assert recorded["HTTP_REQUEST_DURATION"].points == []


async def test_a_method_the_route_does_not_serve_keeps_the_routes_template(client, recorded):
    assert (await client.delete("/jobs/a")).status_code == 405
    assert await counted(recorded) == [
        {"method": "DELETE", "route": "/jobs/{job_id}", "status": "405"}
    ]


async def test_an_unhandled_error_is_counted_as_500(client, recorded):
    assert (await client.get("/boom")).status_code == 500
    assert await counted(recorded) == [{"method": "GET", "route": "/boom", "status": "500"}]


async def test_an_event_stream_is_gauged_open_until_it_ends(client, recorded):
    response = await client.get("/jobs/a/stream")
    assert response.headers["content-type"].startswith("text/event-stream")
    route = "/jobs/{job_id}/stream"
    assert recorded["HTTP_OPEN_STREAMS"].points == [(1, {"route": route}), (0, {"route": route})]
    assert await counted(recorded) == [{"method": "GET", "route": route, "status": "200"}]


async def test_a_websocket_is_counted_101_when_accepted_and_403_when_refused(recorded):
    app = small_app()
    accepted = await AsgiWebSocket(app, "/ws/a").connect()
    await accepted.finished()
    refused = AsgiWebSocket(app, "/ws/refused", denial=False)
    with pytest.raises(Refused):
        await refused.connect()
    await refused.finished()
    assert await counted(recorded) == [
        {"method": "GET", "route": "/ws/{job_id}", "status": "101"},
        {"method": "GET", "route": "/ws/{job_id}", "status": "403"},
    ]
    route = {"route": "/ws/{job_id}"}
    assert recorded["HTTP_OPEN_STREAMS"].points == [(1, route), (0, route)]


async def test_a_cancelled_request_is_counted_as_closed_by_its_client(recorded):
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> None:
        await asyncio.sleep(60)

    app.add_middleware(RequestMetrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        request = asyncio.create_task(c.get("/slow"))
        await asyncio.sleep(0.05)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    assert await counted(recorded) == [{"method": "GET", "route": "/slow", "status": "499"}]


async def test_the_api_counts_what_its_guard_refuses_under_the_route(
    store: MemoryStore, shards: ShardClient, recorded: dict[str, Recorded]
) -> None:
    """The guard answers 401 before FastAPI routes the request: the route is found anyway."""
    async with http(make_app(store, shards)) as api:
        assert (await api.get(f"{JOBS}/job-1/status")).status_code == 401
    assert await counted(recorded) == [
        {"method": "GET", "route": "/api/v1/jobs/{job_id}/status", "status": "401"}
    ]


async def test_the_api_without_request_metrics_records_nothing(
    store: MemoryStore, shards: ShardClient, recorded: dict[str, Recorded]
) -> None:
    async with http(make_app_without_metrics(store, shards)) as api:
        assert (await api.get("/healthz")).status_code == 200
    assert await counted(recorded) == []


def test_route_template_of_a_scope_no_app_has_seen():
    assert route_template({"type": "http", "path": "/x"}, []) == metrics.UNMATCHED_ROUTE


def make_app_without_metrics(store: MemoryStore, shards: ShardClient) -> FastAPI:
    return create_app(make_app(store, shards).state.deps, request_metrics=False)


async def test_requests_are_tallied_and_recorded_once_per_tag_set_a_flush(recorded):
    tally = metrics.Tally(metrics.HTTP_REQUESTS, ("method", "route"), flush_s=0.05)
    for method in ("GET", "GET", "POST", "GET"):
        tally.add(method, "/r")
    assert recorded["HTTP_REQUESTS"].points == []  # not before the flush
    await asyncio.sleep(0.2)
    assert recorded["HTTP_REQUESTS"].points == [
        (3, {"method": "GET", "route": "/r"}),
        (1, {"method": "POST", "route": "/r"}),
    ]
    tally.add("GET", "/r")
    await asyncio.sleep(0.2)
    assert recorded["HTTP_REQUESTS"].points[2:] == [(1, {"method": "GET", "route": "/r"})]
