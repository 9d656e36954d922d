"""The direct Python client calls the shard actors: same validation and durability as HTTP."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cluster.client import Client
from storage.errors import Conflict, Invalid, NotFound
from storage.records import JobStatus

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(service) -> Client:
    return Client.connect()


@pytest.fixture
def namespace(admin) -> str:
    name = f"c-{uuid.uuid4().hex[:10]}"
    assert admin.post("/api/v1/namespaces", json={"name": name}).status_code == 201
    return name


def test_a_job_end_to_end_through_the_actors(client, namespace, tenant, admin):
    job = client.submit(namespace, "j1", metadata={"title": "direct", "tags": ["py"]})
    assert job.status is JobStatus.RUNNING
    assert client.append(namespace, "j1", b"hello ").seq == 1
    assert client.append(namespace, "j1", "world").seq == 2
    assert client.progress(namespace, "j1", 75).progress == 75
    assert client.complete(namespace, "j1").status is JobStatus.SUCCEEDED
    assert client.output(namespace, "j1") == b"hello world"
    assert client.status(namespace, "j1").output_size == 11
    seen_over_http = admin.get("/api/v1/jobs/j1/output", params={"namespace": namespace})
    assert seen_over_http.json()["output"] == "hello world"


def test_the_client_validates_like_http(client, namespace):
    client.submit(namespace, "j1")
    with pytest.raises(Invalid):
        client.progress(namespace, "j1", 150)
    with pytest.raises(Invalid):
        client.submit(namespace, "bad/id")
    with pytest.raises(Conflict):
        client.submit(namespace, "j1", metadata={"title": "different"})
    with pytest.raises(NotFound):
        client.status(namespace, "missing")


def test_events_iterate_output_then_end_and_resume(client, namespace):
    client.submit(namespace, "j1")

    async def consume(
        after: int, caught_up: asyncio.Event | None = None
    ) -> list[tuple[str, int | None]]:
        seen = []
        async for event in client.events(namespace, "j1", after_seq=after):
            seen.append((event.kind.value, event.chunk.seq if event.chunk else None))
            if event.kind.value == "status" and caught_up is not None:
                caught_up.set()  # the replay is over: every later event is live
            if event.kind.value == "end":
                return seen
        return seen

    async def scenario() -> list[tuple[str, int | None]]:
        caught_up = asyncio.Event()
        reader = asyncio.create_task(consume(0, caught_up))
        await asyncio.wait(
            [reader, asyncio.create_task(caught_up.wait())],
            timeout=30,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if reader.done():
            reader.result()  # the reader failed before catching up: raise its error
        assert caught_up.is_set(), "the reader did not catch up within 30 s"
        for text in ("a", "b", "c"):
            await asyncio.to_thread(client.append, namespace, "j1", text)
        await asyncio.to_thread(client.complete, namespace, "j1")
        return await asyncio.wait_for(reader, 30)

    seen = asyncio.run(scenario())
    caught_up_at = [k for k, _ in seen].index("status")
    assert "output" not in [k for k, _ in seen[:caught_up_at]]  # so all output came live
    assert [s for k, s in seen if k == "output"] == [1, 2, 3]
    assert seen[-1] == ("end", None)
    resumed = asyncio.run(consume(2))
    assert [s for k, s in resumed if k == "output"] == [3]
