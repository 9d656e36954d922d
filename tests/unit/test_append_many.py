"""`append_many`: many chunks in one group commit, in order, idempotent with `first_seq`, and
stopped at the first bad chunk with the chunks before it acknowledged and stored.

Through `ShardClient` over a real `Shard` on the in-memory store (no Ray)."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from collections.abc import Iterator

import pytest

from actors.commands import Completion, JobSpec
from actors.limits import MAX_APPEND_MANY_CHUNKS
from actors.namespace_settings import NamespaceChanges
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from actors.shard_types import AppendAck, AppendManyResult
from storage.errors import Conflict, Invalid, Overloaded, StoreUnavailable, TooLarge
from storage.records import JobStatus, OutputFormat
from tests.unit.fakes import until


@contextlib.contextmanager
def gated(store) -> Iterator[asyncio.Event]:
    """Hold the store's commits until the gate is set; set it on the way out whatever
    happened, so a failing test cannot leave the shard's teardown waiting forever."""
    store.gate = asyncio.Event()
    try:
        yield store.gate
    finally:
        store.gate.set()


def chunks_of(*texts: str) -> list[bytes]:
    return [text.encode() for text in texts]


async def stored(store, job_id: str = "j1") -> list[bytes]:
    return [c.data for c in await store.read_output("acme", job_id, limit=10_000)]


async def test_many_chunks_are_appended_in_order_in_one_group_commit(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    data = [f"chunk {i};".encode() for i in range(100)]
    before = len(store.commits)
    result = await shards.append_many("acme", "j1", data)
    assert result.error is None
    assert len(store.commits) - before == 1  # one transaction for all 100
    assert [a.seq for a in result.acks] == list(range(1, 101))
    offsets = [sum(map(len, data[:i])) for i in range(100)]
    assert [(a.offset, a.size) for a in result.acks] == list(
        zip(offsets, map(len, data), strict=True)
    )
    assert await stored(store) == data
    job = await shards.get("acme", "j1")
    assert (job.output_seq, job.output_size) == (100, sum(map(len, data)))


async def test_a_second_call_continues_after_the_first(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.append_many("acme", "j1", chunks_of("ab", "c"))
    await shards.append("acme", "j1", b"d")
    result = await shards.append_many("acme", "j1", chunks_of("ef", "g"))
    assert result.acks == (AppendAck(4, 4, 2), AppendAck(5, 6, 1))
    assert b"".join(await stored(store)) == b"abcdefg"


async def test_resuming_with_the_same_data_acknowledges_written_chunks_and_appends_the_rest(
    shards, store
):
    await shards.submit("acme", JobSpec(), job_id="j1")
    first = await shards.append_many("acme", "j1", chunks_of("a", "b", "c"), first_seq=1)
    before = len(store.commits)
    again = await shards.append_many("acme", "j1", chunks_of("b", "c", "d", "e"), first_seq=2)
    assert again.error is None
    assert again.acks[:2] == first.acks[1:]  # acknowledged again, not written again
    assert [a.seq for a in again.acks] == [2, 3, 4, 5]
    assert len(store.commits) - before == 1  # only d and e were committed
    assert await stored(store) == chunks_of("a", "b", "c", "d", "e")


async def test_resuming_entirely_inside_written_output_writes_nothing(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.append_many("acme", "j1", chunks_of("a", "b", "c"))
    before = len(store.commits)
    again = await shards.append_many("acme", "j1", chunks_of("a", "b"), first_seq=1)
    assert [a.seq for a in again.acks] == [1, 2] and again.error is None
    assert len(store.commits) == before


async def test_resuming_with_different_data_conflicts_at_that_chunk(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.append_many("acme", "j1", chunks_of("a", "b", "c"))
    result = await shards.append_many("acme", "j1", chunks_of("b", "X", "d"), first_seq=2)
    assert [a.seq for a in result.acks] == [2]
    assert isinstance(result.error, Conflict) and "seq 3" in result.error.message
    assert await stored(store) == chunks_of("a", "b", "c")  # d was not written


async def test_a_first_seq_past_the_end_is_a_gap_and_writes_nothing(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.append("acme", "j1", b"a")
    result = await shards.append_many("acme", "j1", chunks_of("c", "d"), first_seq=3)
    assert result.acks == () and isinstance(result.error, Conflict)
    assert "gap" in result.error.message
    assert await stored(store) == [b"a"]


async def test_a_bad_chunk_in_the_middle_stores_the_ones_before_it_and_none_after(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")  # a text job: UTF-8 only
    data = [b"one", b"two", b"\xff\xfe", b"four"]
    result = await shards.append_many("acme", "j1", data)
    assert [a.seq for a in result.acks] == [1, 2]
    assert isinstance(result.error, Invalid) and "UTF-8" in result.error.message
    assert await stored(store) == [b"one", b"two"]
    assert (await shards.get("acme", "j1")).output_seq == 2
    assert (await shards.append("acme", "j1", b"four")).seq == 3  # the job goes on


async def test_a_binary_job_takes_any_bytes_and_a_json_job_utf8(shards, store):
    await shards.submit("acme", JobSpec(output_format=OutputFormat.BINARY), job_id="bin")
    result = await shards.append_many("acme", "bin", [b"\xff\x00", b"\x80"])
    assert result.error is None and len(result.acks) == 2
    await shards.submit("acme", JobSpec(output_format=OutputFormat.JSON), job_id="js")
    refused = await shards.append_many("acme", "js", [b'{"a": 1}', b"\xc3"])
    assert len(refused.acks) == 1 and isinstance(refused.error, Invalid)


async def test_a_finished_job_takes_no_new_chunks_but_acknowledges_written_ones(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.append_many("acme", "j1", chunks_of("a", "b"))
    await shards.complete("acme", "j1", Completion(JobStatus.SUCCEEDED))
    late = await shards.append_many("acme", "j1", chunks_of("c"))
    assert late.acks == () and isinstance(late.error, Conflict)
    retried = await shards.append_many("acme", "j1", chunks_of("b", "c"), first_seq=2)
    assert [a.seq for a in retried.acks] == [2] and isinstance(retried.error, Conflict)
    assert await stored(store) == chunks_of("a", "b")


async def test_chunks_the_client_refuses_end_the_call_there(store, shard):
    shards = ShardClient(num_shards=1, shards=[shard].__getitem__, max_chunk_bytes=4)
    await shards.submit("acme", JobSpec(), job_id="j1")
    too_big = await shards.append_many("acme", "j1", [b"ab", b"cd", b"12345", b"ef"])
    assert [a.seq for a in too_big.acks] == [1, 2] and isinstance(too_big.error, TooLarge)
    empty = await shards.append_many("acme", "j1", [b"", b"gh"])
    assert empty.acks == () and isinstance(empty.error, Invalid)
    assert await stored(store) == [b"ab", b"cd"]


async def test_too_many_chunks_in_one_call_are_refused_before_any_is_sent(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    with pytest.raises(TooLarge):
        await shards.append_many("acme", "j1", [b"x"] * (MAX_APPEND_MANY_CHUNKS + 1))
    with pytest.raises(Invalid):
        await shards.append_many("acme", "j1", [b"x"], first_seq=0)
    assert await stored(store) == []


async def test_no_chunks_is_no_write(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    before = len(store.commits)
    assert await shards.append_many("acme", "j1", []) == AppendManyResult()
    assert len(store.commits) == before


async def test_a_resume_waits_for_the_commit_in_flight_of_the_chunks_it_resends(
    shard, shards, store
):
    # A producer disconnects while its round commits and reconnects at once with ?seq=1.
    await shards.submit("acme", JobSpec(), job_id="j1")
    with gated(store):
        first = asyncio.create_task(shards.append_many("acme", "j1", chunks_of("a", "b")))
        await until(lambda: _pending_writes_are(shard, 1))
        resumed = asyncio.create_task(
            shards.append_many("acme", "j1", chunks_of("a", "b", "c"), first_seq=1)
        )
        await asyncio.sleep(0.01)
        assert not resumed.done()  # waiting for the commit, not answering "different data"
    assert [a.seq for a in (await first).acks] == [1, 2]
    result = await resumed
    assert result.error is None and [a.seq for a in result.acks] == [1, 2, 3]
    assert await stored(store) == chunks_of("a", "b", "c")


async def test_a_resume_after_a_failed_commit_in_flight_appends_the_chunks_anew(
    shard, shards, store
):
    await shards.submit("acme", JobSpec(), job_id="j1")
    with gated(store):
        first = asyncio.create_task(shards.append_many("acme", "j1", chunks_of("a", "b")))
        await until(lambda: _pending_writes_are(shard, 1))
        resumed = asyncio.create_task(
            shards.append_many("acme", "j1", chunks_of("a", "b"), first_seq=1)
        )
        await asyncio.sleep(0.01)
        store.fail_commits = True
    lost = await first
    assert lost.acks == () and isinstance(lost.error, StoreUnavailable)
    store.fail_commits = False
    result = await resumed
    assert result.error is None and [a.seq for a in result.acks] == [1, 2]
    assert await stored(store) == chunks_of("a", "b")


async def test_a_full_write_buffer_writes_none_of_the_chunks(store):
    shard = Shard(store, ShardConfig(slot=0, num_shards=1, max_pending_items=1))
    await shard.start()
    await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
    shards = ShardClient.in_process([shard])
    await shards.submit("acme", JobSpec(), job_id="j1")
    with gated(store):
        held = asyncio.create_task(shards.append("acme", "j1", b"x"))
        await until(lambda: _pending_writes_are(shard, 1))
        refused = await shards.append_many("acme", "j1", chunks_of("a", "b"))
        assert refused.acks == () and isinstance(refused.error, Overloaded)
    await held
    assert await stored(store) == [b"x"]
    await shard.stop()


def test_a_result_with_its_error_survives_pickling():
    # It crosses Ray as a value: the error keeps its type, message and retry hint.
    result = AppendManyResult(
        (AppendAck(1, 0, 3),), Overloaded("the buffer is full", retry_after_s=2.0)
    )
    again = pickle.loads(pickle.dumps(result))
    assert again.acks == result.acks
    assert isinstance(again.error, Overloaded)
    assert (again.error.message, again.error.retry_after_s) == ("the buffer is full", 2.0)
    assert again.error.code == "overloaded"


async def _pending_writes_are(shard: Shard, count: int) -> bool:
    return (await shard.stats())["pendingWrites"] == count
