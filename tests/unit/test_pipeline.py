"""The append pipeline: chunks queue while a round is in flight, each round one `append_many`,
results in order, bounded queues, the first bad chunk stops it after the ones before it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from actors.commands import JobSpec
from actors.pipeline import AppendPipeline, PipelineClosed, PipelineLimits
from actors.shard_types import AppendAck, AppendManyResult
from storage.errors import Conflict, Invalid, TooLarge
from tests.unit.fakes import WAIT_S


@contextlib.contextmanager
def gated(store) -> Iterator[asyncio.Event]:
    """Hold the store's commits; let them go on the way out, whatever happened."""
    store.gate = asyncio.Event()
    try:
        yield store.gate
    finally:
        store.gate.set()


@contextlib.asynccontextmanager
async def pipeline(shards, **options) -> AsyncIterator[AppendPipeline]:
    await shards.submit("acme", JobSpec(), job_id="j1")
    async with AppendPipeline(shards, "acme", "j1", **options) as started:
        yield started


async def all_results(p: AppendPipeline) -> list[AppendManyResult]:
    async def collect() -> list[AppendManyResult]:
        return [result async for result in p.results()]

    return await asyncio.wait_for(collect(), WAIT_S)


def acks_of(results: list[AppendManyResult]) -> list[AppendAck]:
    return [ack for result in results for ack in result.acks]


async def stored(store) -> list[bytes]:
    return [c.data for c in await store.read_output("acme", "j1", limit=10_000)]


async def test_chunks_put_while_a_round_commits_go_together_in_the_next_round(shards, store):
    data = [f"{i};".encode() for i in range(300)]
    async with pipeline(shards) as p:
        before = len(store.commits)
        with gated(store) as gate:
            await p.put(data[0])
            await asyncio.wait_for(store.arrived.wait(), WAIT_S)  # round 1 (one chunk) is held
            for chunk in data[1:]:
                await p.put(chunk)  # queue behind it
            gate.set()
            p.end()
            results = await all_results(p)
    assert [ack.seq for ack in acks_of(results)] == list(range(1, 301))
    assert [len(r.acks) for r in results] == [1, 256, 43]  # the round limit, then the rest
    assert len(store.commits) - before == 3
    assert await stored(store) == data


async def test_a_round_stops_at_its_byte_limit_but_takes_at_least_one_chunk(shards, store):
    limits = PipelineLimits(round_bytes=10)
    async with pipeline(shards, limits=limits) as p:
        with gated(store):
            for chunk in (b"x" * 12, b"a" * 4, b"b" * 4, b"c" * 4):
                await p.put(chunk)
        p.end()
        results = await all_results(p)
    assert [len(r.acks) for r in results] == [1, 2, 1]


async def test_put_waits_while_the_queue_is_full(shards, store):
    limits = PipelineLimits(queued_chunks=2, round_chunks=1)
    async with pipeline(shards, limits=limits) as p:
        with gated(store) as gate:
            await p.put(b"1")  # taken into round 1, held at the gate
            await asyncio.wait_for(store.arrived.wait(), WAIT_S)
            await p.put(b"2")
            await p.put(b"3")
            blocked = asyncio.create_task(p.put(b"4"))
            await asyncio.sleep(0.01)
            assert not blocked.done()  # backpressure: the caller stops reading its input
            gate.set()
            await asyncio.wait_for(blocked, WAIT_S)
        p.end()
        assert [a.seq for a in acks_of(await all_results(p))] == [1, 2, 3, 4]


async def test_a_bad_chunk_stops_the_pipeline_after_the_chunks_before_it(shards, store):
    async with pipeline(shards) as p:
        with gated(store):
            for chunk in (b"ok 1", b"ok 2", b"\xff not utf-8", b"never"):
                await p.put(chunk)
        results = await all_results(p)
        assert [a.seq for a in acks_of(results)] == [1, 2]
        assert isinstance(results[-1].error, Invalid)
        with pytest.raises(Invalid):
            await p.put(b"later")  # the producer learns at its next write too
    assert await stored(store) == [b"ok 1", b"ok 2"]


async def test_a_chunk_refused_by_the_caller_ends_it_after_the_queued_ones(shards, store):
    async with pipeline(shards) as p:
        await p.put(b"a")
        await p.put(b"b")
        p.refuse(Invalid("this is a text job: send text messages"))
        results = await all_results(p)
        with pytest.raises(Invalid):
            await p.put(b"c")
    assert [a.seq for a in acks_of(results)] == [1, 2]
    assert "text messages" in str(results[-1].error)
    assert await stored(store) == [b"a", b"b"]


async def test_an_empty_or_oversized_chunk_is_refused_at_its_place(shards, store):
    shards.max_chunk_bytes = 4
    async with pipeline(shards) as p:
        await p.put(b"abc")
        await p.put(b"12345")
        results = await all_results(p)
    assert [a.seq for a in acks_of(results)] == [1]
    assert isinstance(results[-1].error, TooLarge)


async def test_a_resumed_pipeline_acknowledges_resent_chunks_once(shards, store):
    async with pipeline(shards, first_seq=1) as first:
        for chunk in (b"a", b"b", b"c"):
            await first.put(chunk)
        first.end()
        assert len(acks_of(await all_results(first))) == 3
    async with AppendPipeline(shards, "acme", "j1", first_seq=2) as resumed:
        for chunk in (b"b", b"c", b"d"):
            await resumed.put(chunk)
        resumed.end()
        assert [a.seq for a in acks_of(await all_results(resumed))] == [2, 3, 4]
    async with AppendPipeline(shards, "acme", "j1", first_seq=4) as wrong:
        await wrong.put(b"X")
        results = await all_results(wrong)
    assert isinstance(results[-1].error, Conflict)
    assert await stored(store) == [b"a", b"b", b"c", b"d"]


async def test_put_after_end_or_close_is_refused(shards):
    async with pipeline(shards) as p:
        p.end()
        with pytest.raises(PipelineClosed):
            await p.put(b"x")
        await p.aclose()
        with pytest.raises(PipelineClosed):
            await p.put(b"x")


async def test_close_drops_what_is_queued_and_writes_no_part_of_a_chunk(shards, store):
    async with pipeline(shards) as p:
        with gated(store):
            await p.put(b"in flight")
            await asyncio.wait_for(store.arrived.wait(), WAIT_S)
            await p.put(b"queued")
            await p.aclose()
    # The round in flight was committed whole (its write is shielded); the queued one not.
    assert await stored(store) in ([b"in flight"], [])
    assert b"queued" not in await stored(store)
