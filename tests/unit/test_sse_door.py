"""The stream's lean way in (serve_app.sse.StreamDoor, EventStream, until_disconnect): the
door answers exactly as FastAPI's route does, serves what it recognises itself, and a
stream ends with its client.

Each request goes to two apps over the same shard: the service's, and one without the door
(FastAPI's route), and both answers must be the same bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors.shard_client import ShardClient
from serve_app import sse
from storage.memory import MemoryStore
from tests.unit.fakes import Watched
from tests.unit.test_api import ADMIN, JOBS, http, make_app, new_tenant, submit


def without_door(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not sse.StreamDoor]
    return app


@pytest.fixture
async def apps(store: MemoryStore, watched: Watched) -> AsyncIterator[list[httpx.AsyncClient]]:
    shards = ShardClient.in_process([watched], store=store)
    async with (
        http(make_app(store, shards)) as door,
        http(without_door(make_app(store, shards))) as route,
    ):
        yield [door, route]


@pytest.fixture
async def finished(apps: list[httpx.AsyncClient]) -> dict[str, str]:
    return await finished_job(apps[0])


async def finished_job(api: httpx.AsyncClient) -> dict[str, str]:
    """A key of namespace acme (beside namespace globex), whose job j1 has two chunks and
    succeeded."""
    acme = await new_tenant(api, "acme")
    await new_tenant(api, "globex")
    await submit(api, acme, jobId="j1")
    for part in (b"one", b"two"):
        await api.post(f"{JOBS}/j1/output", content=part, headers=acme)
    await api.post(f"{JOBS}/j1/complete", json={"status": "Succeeded"}, headers=acme)
    return acme


CASES = [
    ("j1", {}, {}, 200),
    ("j1", {"after": "1"}, {}, 200),
    ("j1", {}, {"Last-Event-ID": "1"}, 200),
    ("j1", {"version": "1"}, {}, 200),
    ("j1", {"version": "2"}, {}, 404),
    ("j1", {"version": "0"}, {}, 422),  # left to FastAPI: pydantic's message
    ("j1", {"version": "x"}, {}, 422),
    ("j1", {"version": ""}, {}, 422),
    ("j1", {"after": "9"}, {}, 409),
    ("j1", {"after": "x"}, {}, 422),
    ("j1", {}, {"Last-Event-ID": "1-x"}, 422),
    ("j1", {"namespace": "globex"}, {}, 403),
    ("j1", {"namespace": "-bad"}, {}, 422),
    ("nope", {}, {}, 404),
]


@pytest.mark.parametrize(("job", "query", "headers", "status"), CASES)
async def test_the_door_answers_as_the_route(apps, finished, job, query, headers, status):
    answers = [
        await api.get(f"{JOBS}/{job}/stream", params=query, headers={**finished, **headers})
        for api in apps
    ]
    door, route = answers
    assert door.status_code == route.status_code == status, door.text
    assert door.headers.raw == route.headers.raw
    assert door.content == route.content


async def test_an_admin_without_a_namespace_is_400_either_way(apps, finished):
    answers = [await api.get(f"{JOBS}/j1/stream", headers=ADMIN) for api in apps]
    assert [a.status_code for a in answers] == [400, 400]
    assert answers[0].content == answers[1].content


async def test_the_door_serves_plain_requests_and_leaves_odd_ones_to_the_route(
    apps, finished, monkeypatch
):
    served: list[Any] = []
    opened = sse._open

    async def spied(connection: Any, asked: Any) -> sse.EventStream:
        served.append(asked)
        return await opened(connection, asked)

    monkeypatch.setattr(sse, "_open", spied)
    door = apps[0]
    assert (await door.get(f"{JOBS}/j1/stream", headers=finished)).status_code == 200
    assert (await door.get(f"{JOBS}/j1/stream?version=01", headers=finished)).status_code == 200
    assert [asked.job_id for asked in served] == ["j1"]  # "01" went on to FastAPI


async def test_a_disconnect_ends_the_work_and_returns():
    ended = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    async def receive() -> dict[str, str]:
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    await asyncio.wait_for(sse.until_disconnect(forever(), receive), 60)
    assert ended.is_set()


async def test_work_done_stops_the_listener():
    listening = asyncio.Event()
    gone = asyncio.Event()

    async def receive() -> dict[str, str]:
        listening.set()
        try:
            await asyncio.Event().wait()
        finally:
            gone.set()
        return {"type": "http.disconnect"}

    async def work() -> None:
        await listening.wait()

    await asyncio.wait_for(sse.until_disconnect(work(), receive), 60)
    await asyncio.wait_for(gone.wait(), 60)


async def test_a_cancel_from_elsewhere_is_raised():
    async def receive() -> dict[str, str]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    task = asyncio.create_task(sse.until_disconnect(asyncio.Event().wait(), receive))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_frame_is_rendered_once_for_every_stream_handed_the_same_event() -> None:
    """The hub hands each stream of a job the same `Job` and `Chunk`: one rendering for all;
    another job or chunk is rendered anew, and the frames held stay under their bound."""
    from actors.feed import Event, EventKind
    from tests.unit.test_watch_hub import _chunk, _job

    frames = sse.Frames(max_bytes=400)
    job = _job("j1")
    chunk = _chunk(1, "j1")
    first = frames.of(Event(EventKind.OUTPUT, job, chunk))
    assert first == sse.format_event(Event(EventKind.OUTPUT, job, chunk)).encode()
    assert frames.of(Event(EventKind.OUTPUT, job, chunk)) is first  # not rendered again
    assert frames.of(Event(EventKind.STATUS, job)) != first
    copy = _chunk(1, "j1")
    again = frames.of(Event(EventKind.OUTPUT, job, copy))
    assert again == first and again is not first  # an equal chunk read elsewhere: rendered
    for n in range(2, 10):
        frames.of(Event(EventKind.OUTPUT, job, _chunk(n, "j1")))
    assert 0 < frames._bytes <= 400
    assert len(frames._frames) < 10
