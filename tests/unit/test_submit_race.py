"""Submits of one job id that overlap: each is answered from what is durable, whatever the
interleaving. The in-memory store holds the first submit's commit at a gate, so the others
arrive while it is in flight (deterministically, no timing), then the commit succeeds or
fails.

Through `ShardClient` over a real `Shard` (no Ray)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from actors.commands import JobSpec
from actors.shard_client import ShardClient
from actors.shard_types import SubmitItem
from storage.errors import Conflict, StoreUnavailable
from storage.records import Batch
from tests.unit.fakes import WAIT_S, GatedStore


class FailOnceStore(GatedStore):
    """Fails the next commit (`fail_next`), once, as a store that is briefly unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    async def commit(self, batch: Batch) -> None:
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("injected: the store was briefly unreachable")
        await super().commit(batch)


@pytest.fixture
async def store() -> FailOnceStore:
    store = FailOnceStore()
    await store.open()
    return store


@contextlib.contextmanager
def gated(store: GatedStore) -> Iterator[asyncio.Event]:
    """Hold commits until the gate is set (set on the way out, so teardown never hangs)."""
    store.gate = asyncio.Event()
    store.arrived.clear()
    try:
        yield store.gate
    finally:
        store.gate.set()


def submit(shards: ShardClient, title: str = "a") -> asyncio.Task[Any]:
    return asyncio.ensure_future(shards.submit("acme", JobSpec(title=title), job_id="j1"))


async def first_in_flight(shards: ShardClient, store: GatedStore) -> asyncio.Task[Any]:
    """The first submit, its commit held at the gate."""
    first = submit(shards)
    await asyncio.wait_for(store.arrived.wait(), WAIT_S)
    return first


async def settled(task: asyncio.Task[Any]) -> Any:
    """The task's result, or the error it raised (as a value)."""
    try:
        return await asyncio.wait_for(task, WAIT_S)
    except Exception as exc:
        return exc


async def test_the_same_request_while_the_first_commits_is_200_only_once_it_is_durable(
    shards, store
):
    with gated(store) as gate:
        first = await first_in_flight(shards, store)
        again = [submit(shards) for _ in range(7)]
        await asyncio.sleep(0.01)
        assert not any(task.done() for task in again)  # not acknowledged before it is durable
        gate.set()
        job, created = await settled(first)
        replies = [await settled(task) for task in again]
    assert created
    assert replies == [(job, False)] * 7
    assert await store.get_job("acme", "j1") == job


async def test_the_same_request_while_the_first_fails_to_commit_is_never_not_found(shards, store):
    """The fault: the first submit's commit failed, and the resubmits that waited for it
    answered 404 for a job that the next submit then created."""
    with gated(store) as gate:
        first = await first_in_flight(shards, store)
        again = [submit(shards) for _ in range(7)]
        await asyncio.sleep(0.01)
        store.fail_next = True
        gate.set()
        failed = await settled(first)
        replies = [await settled(task) for task in again]
    assert isinstance(failed, StoreUnavailable)
    stored = await store.get_job("acme", "j1")
    assert stored is not None
    assert sorted(created for _, created in replies) == [False] * 6 + [True]
    assert all(job == stored for job, _ in replies)


async def test_another_request_is_409_only_once_the_first_is_durable(shards, store):
    with gated(store) as gate:
        first = await first_in_flight(shards, store)
        other = submit(shards, title="b")
        await asyncio.sleep(0.01)
        assert not other.done()
        gate.set()
        await settled(first)
        assert isinstance(await settled(other), Conflict)


async def test_another_request_gets_the_id_when_the_first_fails_to_commit(shards, store):
    with gated(store) as gate:
        first = await first_in_flight(shards, store)
        other = submit(shards, title="b")
        await asyncio.sleep(0.01)
        store.fail_next = True
        gate.set()
        assert isinstance(await settled(first), StoreUnavailable)
        job, created = await settled(other)
    assert created and job.title == "b"
    assert await store.get_job("acme", "j1") == job


async def test_a_batch_waiting_for_a_single_submit_that_fails_decides_again(shards, store):
    """The batch's first item creates the job itself; its second, another request for the
    same id, is then 409 (once that creation is durable)."""
    with gated(store) as gate:
        first = await first_in_flight(shards, store)
        items = [SubmitItem("acme", "j1", JobSpec(title="a")), SubmitItem("acme", "j1", JobSpec())]
        batch = asyncio.ensure_future(shards.submit_many(items))
        await asyncio.sleep(0.01)
        store.fail_next = True
        gate.set()
        assert isinstance(await settled(first), StoreUnavailable)
        results = await settled(batch)
    assert (results[0].error, results[0].created) == (None, True)
    assert isinstance(results[1].error, Conflict)
    assert await store.get_job("acme", "j1") == results[0].job
