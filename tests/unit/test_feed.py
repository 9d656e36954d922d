"""The event feed: replay from the store, then live updates from the shard's watch, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from actors import feed
from actors.feed import Event, EventKind, job_events, replay
from actors.shard_types import Update
from storage.memory import MemoryStore
from storage.records import Batch, Chunk, Job, JobStatus
from tests.unit.fakes import WAIT_S

HEARTBEAT_S = 7.0


class Shard:
    """The shard as the feed sees it: a store to read, and a watch the test answers."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.updates: asyncio.Queue[Update] = asyncio.Queue()
        self.watched: list[tuple[int, int, float]] = []

    async def watch(self, revision: int, after_seq: int, timeout_s: float) -> Update:
        self.watched.append((revision, after_seq, timeout_s))
        return await self.updates.get()

    async def read(self, after_seq: int, limit: int) -> list[Chunk]:
        return await self.store.read_output("acme", "j", after_seq=after_seq, limit=limit)

    def events(self, job: Job, *, after_seq: int = 0) -> AsyncIterator[Event]:
        return job_events(
            job, watch=self.watch, read=self.read, after_seq=after_seq, heartbeat_s=HEARTBEAT_S
        )


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def shard(store: MemoryStore) -> Shard:
    return Shard(store)


def _chunk(seq: int, data: bytes | None = None) -> Chunk:
    return Chunk("acme", "j", seq, seq - 1, data if data is not None else b"%d" % seq)


async def _stored(store: MemoryStore, *seqs: int) -> None:
    await store.commit(Batch(chunks=[_chunk(s) for s in seqs]))


def _job(**changes: object) -> Job:
    return Job("acme", "j", 0, 1000.0, 1000.0).evolve(**changes)


def _seen(event: Event) -> tuple[str, int | None]:
    return (event.kind.value, event.chunk.seq if event.chunk is not None else None)


async def _take(events: AsyncIterator[Event], count: int) -> list[tuple[str, int | None]]:
    return [_seen(await asyncio.wait_for(anext(events), WAIT_S)) for _ in range(count)]


async def test_a_finished_job_replays_its_output_then_status_progress_and_end(store, shard):
    await _stored(store, 1, 2, 3)
    job = _job(output_seq=3, status=JobStatus.SUCCEEDED)
    seen = [_seen(e) async for e in shard.events(job)]
    assert seen == [
        ("output", 1),
        ("output", 2),
        ("output", 3),
        ("status", None),
        ("progress", None),
        ("end", None),
    ]
    assert shard.watched == []


async def test_resuming_after_a_seq_replays_only_what_follows(store, shard):
    await _stored(store, 1, 2, 3)
    job = _job(output_seq=3, status=JobStatus.FAILED)
    seen = [_seen(e) async for e in shard.events(job, after_seq=2)]
    assert seen[0] == ("output", 3) and ("output", 2) not in seen


async def test_live_updates_follow_the_replay(store, shard):
    await _stored(store, 1)
    job = _job(output_seq=1)
    events = shard.events(job)
    assert await _take(events, 3) == [("output", 1), ("status", None), ("progress", None)]
    grown = job.evolve(output_seq=2)
    shard.updates.put_nowait(Update(grown, (_chunk(2),)))  # from the tail: not in the store
    assert await _take(events, 1) == [("output", 2)]
    assert shard.watched[0] == (job.revision, 1, HEARTBEAT_S)
    moved = grown.evolve(progress=50.0)
    shard.updates.put_nowait(Update(moved))
    assert await _take(events, 1) == [("progress", None)]
    assert shard.watched[-1] == (moved.revision - 1, 2, HEARTBEAT_S)
    shard.updates.put_nowait(Update(moved.evolve(status=JobStatus.SUCCEEDED)))
    assert await _take(events, 2) == [("status", None), ("end", None)]
    with pytest.raises(StopAsyncIteration):
        await anext(events)


async def test_a_heartbeat_when_nothing_changed(store, shard):
    job = _job()
    events = shard.events(job)
    assert await _take(events, 2) == [("status", None), ("progress", None)]
    shard.updates.put_nowait(Update(job))  # the watch timed out
    assert await _take(events, 1) == [("heartbeat", None)]
    shard.updates.put_nowait(Update(job.evolve(status=JobStatus.CANCELLED)))
    assert await _take(events, 2) == [("status", None), ("end", None)]


async def test_tail_chunks_after_a_gap_are_read_from_the_store_instead(store, shard):
    job = _job()
    events = shard.events(job)
    await _take(events, 2)
    await _stored(store, 1, 2, 3)
    # The tail lost seq 1 (it only holds recent output): the store fills the gap, in order.
    shard.updates.put_nowait(Update(job.evolve(output_seq=3), (_chunk(2, b"tail"), _chunk(3))))
    out = [await asyncio.wait_for(anext(events), WAIT_S) for _ in range(3)]
    assert [(e.kind, e.chunk.seq if e.chunk else 0) for e in out] == [
        (EventKind.OUTPUT, seq) for seq in (1, 2, 3)
    ]
    assert out[1].chunk is not None and out[1].chunk.data == b"2"  # the store's, not the tail's


async def test_tail_chunks_past_the_committed_seq_are_not_sent(store, shard):
    job = _job()
    events = shard.events(job)
    await _take(events, 2)
    await _stored(store, 1)
    shard.updates.put_nowait(Update(job.evolve(output_seq=1), (_chunk(1), _chunk(2))))
    assert await _take(events, 1) == [("output", 1)]
    shard.updates.put_nowait(Update(job.evolve(output_seq=1).evolve(status=JobStatus.FAILED)))
    assert await _take(events, 2) == [("status", None), ("end", None)]


async def test_end_waits_for_all_output_of_a_finished_job(store, shard):
    job = _job(output_seq=2, status=JobStatus.SUCCEEDED)
    await _stored(store, 1)  # seq 2 is not readable yet
    events = shard.events(job)
    assert await _take(events, 3) == [("output", 1), ("status", None), ("progress", None)]
    await _stored(store, 2)
    shard.updates.put_nowait(Update(job, (_chunk(2),)))
    assert await _take(events, 2) == [("output", 2), ("end", None)]


class Reads:
    """A read function over a store that records every (after_seq, limit) asked for."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.asked: list[tuple[int, int]] = []

    async def __call__(self, after_seq: int, limit: int) -> list[Chunk]:
        self.asked.append((after_seq, limit))
        return await self.store.read_output("acme", "j", after_seq=after_seq, limit=limit)


async def test_replay_pages_grow_for_small_chunks_and_stop_at_until_seq(store):
    await _stored(store, *range(1, 1001))
    reads = Reads(store)
    seqs = [c.seq async for c in replay(reads, after_seq=0, until_seq=900)]
    assert seqs == list(range(1, 901))
    assert reads.asked[0] == (0, feed.MAX_PAGE_CHUNKS)
    assert all(after + limit <= 900 for after, limit in reads.asked)


async def test_replay_ends_when_the_store_has_nothing_more(store):
    await _stored(store, 1, 2)
    reads = Reads(store)
    seqs = [c.seq async for c in replay(reads, after_seq=0, until_seq=5)]
    assert seqs == [1, 2] and len(reads.asked) == 2
