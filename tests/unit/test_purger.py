"""Deleting a job: gone to readers at once, its output removed afterwards in bounded steps
(actors/purger.py), resumed by the next owner of the slot, and its id free only after."""

from __future__ import annotations

import asyncio

import pytest

from actors import purger
from actors import shard as shard_module
from actors.commands import Completion, JobSpec
from actors.namespace_settings import NamespaceChanges
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from storage.errors import NotFound, Overloaded, StoreUnavailable
from storage.memory import MemoryStore
from storage.records import JobStatus
from tests.unit.fakes import until


class SlowPurges(MemoryStore):
    """Counts purge steps; each can be held (`gate`) or fail (`failures` first ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.failures = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def purge_output(
        self, namespace: str, job_id: str, *, fence: tuple[int, int], max_bytes: int
    ) -> bool:
        await self.gate.wait()
        self.steps += 1
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the store is away")
        return await super().purge_output(namespace, job_id, fence=fence, max_bytes=max_bytes)


async def started(store: MemoryStore) -> tuple[Shard, ShardClient]:
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    if await store.get_namespace("acme") is None:
        await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
    return shard, ShardClient.in_process([shard], store=store)


async def finished_job(shards: ShardClient, job_id: str, chunks: int) -> None:
    await shards.submit("acme", JobSpec(), job_id=job_id)
    for _ in range(chunks):
        await shards.append("acme", job_id, b"x" * 1000)
    await shards.complete("acme", job_id, Completion(JobStatus.SUCCEEDED))


@pytest.fixture
async def store() -> SlowPurges:
    store = SlowPurges()
    await store.open()
    return store


async def test_a_deleted_jobs_output_goes_in_steps_and_its_id_waits_for_the_last(
    store: SlowPurges, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(purger, "PURGE_STEP_BYTES", 2500)  # 3 chunks of 1,000 bytes a step
    monkeypatch.setattr(shard_module, "MAX_DELETE_WAIT_S", 30.0)
    shard, shards = await started(store)
    await finished_job(shards, "j1", chunks=10)
    store.gate.clear()
    await shards.delete("acme", "j1")  # returns once the delete commits
    with pytest.raises(NotFound):
        await shards.get("acme", "j1")
    assert await store.read_output("acme", "j1") == []  # unreadable before it is purged
    assert len(store.output[("acme", "j1")][1]) == 10
    again = asyncio.ensure_future(shards.submit("acme", JobSpec(), job_id="j1"))
    await asyncio.sleep(0.05)
    assert not again.done()  # the id is still taken by the old job's output
    store.gate.set()
    job, created = await again
    assert created and job.output_seq == 0
    assert store.steps == 5  # four of 3, 3, 3 and 1 chunks, then the purge record
    assert ("acme", "j1") not in store.purges
    assert await store.read_output("acme", "j1") == []
    await shard.stop()


async def test_a_submit_of_an_id_still_purging_is_503_after_a_short_wait(store: SlowPurges) -> None:
    """A waiting submit would hold the writes coalesced with it: it waits briefly, then
    asks the client to come back (Retry-After)."""
    shard, shards = await started(store)
    await finished_job(shards, "j1", chunks=3)
    store.gate.clear()
    await shards.delete("acme", "j1")
    with pytest.raises(Overloaded, match="still being deleted") as refused:
        await shards.submit("acme", JobSpec(), job_id="j1")
    assert refused.value.retry_after_s == 1.0
    store.gate.set()
    await until(lambda: not store.purges)
    assert (await shards.submit("acme", JobSpec(), job_id="j1"))[1]
    await shard.stop()


async def test_a_purge_the_old_owner_left_is_finished_by_the_next_one(store: SlowPurges) -> None:
    shard, shards = await started(store)
    await finished_job(shards, "j1", chunks=3)
    store.gate.clear()
    await shards.delete("acme", "j1")
    await shard.stop()  # dies before its purge ran
    assert await store.load_purges(0) == [("acme", "j1")]
    store.gate.set()
    shard, shards = await started(store)
    await until(lambda: not store.purges)
    assert ("acme", "j1") not in store.output or not store.output[("acme", "j1")]
    job, created = await shards.submit("acme", JobSpec(), job_id="j1")
    assert created and job.output_seq == 0
    await shard.stop()


async def test_a_step_the_store_refused_is_tried_again(
    store: SlowPurges, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(purger, "RETRY_S", 0.01)
    shard, shards = await started(store)
    await finished_job(shards, "j1", chunks=2)
    store.failures = 3
    await shards.delete("acme", "j1")
    await until(lambda: not store.purges)
    assert store.steps == 3 + 2  # three refused, then the chunks and the record
    await shard.stop()


async def test_other_jobs_are_written_while_a_big_purge_runs(
    store: SlowPurges, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(purger, "PURGE_STEP_BYTES", 1000)
    shard, shards = await started(store)
    await finished_job(shards, "big", chunks=50)
    await shards.submit("acme", JobSpec(), job_id="other")
    store.gate.clear()
    await shards.delete("acme", "big")
    ack = await shards.append("acme", "other", b"written meanwhile")  # not held by the purge
    assert ack.seq == 1
    store.gate.set()
    await until(lambda: not store.purges)
    await shard.stop()
