"""The shard state machine over a real in-memory store: durability, idempotency, isolation.

Tests call it as every caller does, through `ShardClient` (no Ray: `in_process`)."""

from __future__ import annotations

import asyncio

import pytest

from actors.commands import Completion, JobSpec, ProgressUpdate
from actors.limits import MAX_APPEND_BYTES
from actors.namespace_settings import NamespaceChanges
from actors.shard import Shard, ShardConfig
from actors.shard_client import OUT_OF_BAND_BYTES, ShardClient
from storage.errors import (
    BadRequest,
    Conflict,
    Fenced,
    Invalid,
    NotFound,
    Overloaded,
    StoreUnavailable,
    TooLarge,
)
from storage.records import JobStatus, OutputFormat
from tests.unit.fakes import WAIT_S, Watched, until


async def test_submit_is_durable_when_it_returns(shards, store):
    job, created = await shards.submit("acme", JobSpec(title="export"), job_id="j1")
    assert created and job.status is JobStatus.RUNNING
    assert await store.get_job("acme", "j1") == job


async def test_resubmit_with_same_request_is_idempotent_and_different_is_conflict(shards):
    first, _ = await shards.submit("acme", JobSpec(title="a", tags=("x",)), job_id="j1")
    again, created = await shards.submit("acme", JobSpec(title="a", tags=("x",)), job_id="j1")
    assert not created and again == first
    with pytest.raises(Conflict):
        await shards.submit("acme", JobSpec(title="b"), job_id="j1")


async def test_submit_generates_an_id_when_none_is_given(shards):
    a, _ = await shards.submit("acme", JobSpec(), job_id=None)
    b, _ = await shards.submit("acme", JobSpec(), job_id=None)
    assert a.job_id != b.job_id


async def test_submit_to_unknown_namespace_is_not_found(shards):
    with pytest.raises(NotFound):
        await shards.submit("nobody", JobSpec(), job_id="j1")


async def test_appends_get_increasing_seq_and_offsets_and_are_in_the_store(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    first = await shards.append("acme", "j1", b"hello ")
    second = await shards.append("acme", "j1", b"world")
    assert (first.seq, first.offset, second.seq, second.offset) == (1, 0, 2, 6)
    chunks = await store.read_output("acme", "j1")
    assert b"".join(c.data for c in chunks) == b"hello world"
    assert (await shards.get("acme", "j1")).output_size == 11


async def test_append_retried_with_its_seq_is_acknowledged_once(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    ack = await shards.append("acme", "j1", b"a", seq=1)
    again = await shards.append("acme", "j1", b"a", seq=1)
    assert again == ack
    assert len(await store.read_output("acme", "j1")) == 1
    with pytest.raises(Conflict):
        await shards.append("acme", "j1", b"different", seq=1)
    with pytest.raises(Conflict):
        await shards.append("acme", "j1", b"gap", seq=5)


async def test_retried_append_is_acknowledged_from_the_store_after_a_restart(store, shard, shards):
    await shards.submit("acme", JobSpec(), job_id="j1")
    ack = await shards.append("acme", "j1", b"abc", seq=1)
    await shard.stop()
    reborn = Shard(store, ShardConfig(slot=0, num_shards=1))
    await reborn.start()
    assert await ShardClient.in_process([reborn]).append("acme", "j1", b"abc", seq=1) == ack
    await reborn.stop()


async def test_output_is_closed_once_the_job_is_terminal(shards):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.complete("acme", "j1", Completion(JobStatus.SUCCEEDED))
    with pytest.raises(Conflict):
        await shards.append("acme", "j1", b"late")
    with pytest.raises(Conflict):
        await shards.set_progress("acme", "j1", ProgressUpdate(progress=50))


async def test_complete_repeated_is_acknowledged_but_a_different_outcome_conflicts(shards):
    await shards.submit("acme", JobSpec(), job_id="j1")
    done = await shards.complete("acme", "j1", Completion(JobStatus.FAILED, error="boom"))
    assert await shards.complete("acme", "j1", Completion(JobStatus.FAILED, error="boom")) == done
    with pytest.raises(Conflict):
        await shards.complete("acme", "j1", Completion(JobStatus.SUCCEEDED))
    with pytest.raises(Invalid):
        await shards.complete("acme", "j1", Completion(JobStatus.CANCELLED))


async def test_cancel_running_then_cancel_again_conflicts(shards):
    await shards.submit("acme", JobSpec(), job_id="j1")
    assert (await shards.cancel("acme", "j1")).status is JobStatus.CANCELLED
    with pytest.raises(Conflict):
        await shards.cancel("acme", "j1")


async def test_delete_needs_a_terminal_job_and_removes_its_output(shards, store):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.append("acme", "j1", b"x")
    with pytest.raises(Conflict):
        await shards.delete("acme", "j1")
    await shards.complete("acme", "j1", Completion(JobStatus.SUCCEEDED))
    await shards.delete("acme", "j1")
    with pytest.raises(NotFound):
        await shards.get("acme", "j1")
    assert await store.get_job("acme", "j1") is None
    assert await store.read_output("acme", "j1") == []


async def test_a_deleted_job_id_can_be_submitted_again(shards):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.cancel("acme", "j1")
    await shards.delete("acme", "j1")
    job, created = await shards.submit("acme", JobSpec(), job_id="j1")
    assert created and job.output_seq == 0


@pytest.mark.parametrize("value", [-1, 101, "50", True, float("nan")])
async def test_progress_out_of_range_is_invalid(shards, value):
    await shards.submit("acme", JobSpec(), job_id="j1")
    with pytest.raises(Invalid):
        await shards.set_progress("acme", "j1", ProgressUpdate(progress=value))


async def test_namespaces_never_see_each_others_jobs(shards):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.append("acme", "j1", b"secret")
    for call in (shards.get, shards.cancel):
        with pytest.raises(NotFound):
            await call("globex", "j1")
    with pytest.raises(NotFound):
        await shards.read_output("globex", "j1", version=1)


async def test_a_namespace_of_another_shard_is_refused(store):
    shard = Shard(store, ShardConfig(slot=0, num_shards=64))
    await shard.start()
    foreign = next(f"ns-{i}" for i in range(1000) if not _owned(f"ns-{i}", 64))
    with pytest.raises(BadRequest):
        await ShardClient.in_process([shard]).get(foreign, "j1")
    await shard.stop()


def _owned(namespace: str, num_shards: int) -> bool:
    from actors.routing import shard_for

    return shard_for(namespace, num_shards) == 0


@pytest.mark.parametrize("job_id", ["", "a/b", "x" * 129, "with space", "../etc"])
async def test_bad_job_ids_are_refused(shards, job_id):
    with pytest.raises(Invalid):
        await shards.submit("acme", JobSpec(), job_id=job_id)


async def test_oversized_and_empty_chunks_are_refused(store):
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
    shards = ShardClient(num_shards=1, shards=[shard].__getitem__, max_chunk_bytes=8)
    await shards.submit("acme", JobSpec(), job_id="j1")
    with pytest.raises(TooLarge):
        await shards.append("acme", "j1", b"1" * (MAX_APPEND_BYTES + 1))
    ack = await shards.append("acme", "j1", b"123456789")  # over the chunk size: two chunks
    assert (ack.seq, ack.size, ack.chunks) == (2, 9, 2)
    with pytest.raises(Invalid):
        await shards.append("acme", "j1", b"")
    await shard.stop()


async def test_a_big_append_crosses_as_buffers_and_is_kept_as_bytes(shards, store):
    """Over OUT_OF_BAND_BYTES the client hands the shard pickle buffers (Ray sends them
    without a pickled copy); the shard stores bytes, whatever it was given."""
    await shards.submit("acme", JobSpec(output_format=OutputFormat.BINARY), job_id="j1")
    body = bytes(range(256)) * (OUT_OF_BAND_BYTES // 256 + 1)
    ack = await shards.append("acme", "j1", body)
    chunks = await store.read_output("acme", "j1")
    assert ack.size == len(body) and b"".join(c.data for c in chunks) == body
    assert {type(c.data) for c in chunks} == {bytes}
    assert store.output[("acme", "j1")][1][1].data == chunks[0].data  # as the shard kept it
    assert type(store.output[("acme", "j1")][1][1].data) is bytes


async def test_text_jobs_need_utf8_and_binary_jobs_take_any_bytes(shards):
    await shards.submit("acme", JobSpec(), job_id="text")
    await shards.submit("acme", JobSpec(output_format=OutputFormat.BINARY), job_id="bin")
    with pytest.raises(Invalid):
        await shards.append("acme", "text", b"\xff\xfe")
    assert (await shards.append("acme", "bin", b"\xff\xfe")).size == 2


async def test_watch_wakes_on_commit_and_hands_over_the_new_chunk(shard):
    watched = Watched(shard)
    shards = ShardClient.in_process([watched])
    job, _ = await shards.submit("acme", JobSpec(), job_id="j1")
    waiter = asyncio.create_task(
        shards.watch("acme", "j1", revision=job.revision, after_seq=0, timeout_s=5)
    )
    await asyncio.wait_for(watched.watching.wait(), WAIT_S)
    assert not waiter.done()
    await shards.append("acme", "j1", b"live")
    update = await asyncio.wait_for(waiter, 2)
    assert [c.data for c in update.chunks] == [b"live"]
    assert update.job.output_seq == 1


async def test_watch_times_out_with_the_same_revision(shards):
    job, _ = await shards.submit("acme", JobSpec(), job_id="j1")
    update = await shards.watch("acme", "j1", revision=job.revision, timeout_s=0.05)
    assert update.job.revision == job.revision


async def test_restart_reloads_running_jobs_and_loads_terminal_ones_lazily(store, shard, shards):
    await shards.submit("acme", JobSpec(), job_id="run")
    await shards.append("acme", "run", b"kept")
    await shards.submit("acme", JobSpec(), job_id="done")
    await shards.complete("acme", "done", Completion(JobStatus.SUCCEEDED))
    await shard.stop()
    reborn = Shard(store, ShardConfig(slot=0, num_shards=1))
    await reborn.start()
    assert (await reborn.stats())["jobsLoaded"] == 1
    again = ShardClient.in_process([reborn])
    assert (await again.get("acme", "run")).output_seq == 1
    assert (await again.get("acme", "done")).status is JobStatus.SUCCEEDED
    assert (await again.append("acme", "run", b"more")).seq == 2
    await reborn.stop()


async def test_a_newer_owner_fences_the_old_shard(store, shards):
    await shards.submit("acme", JobSpec(), job_id="j1")
    usurper = Shard(store, ShardConfig(slot=0, num_shards=1))
    await usurper.start()
    with pytest.raises(Fenced):
        await shards.append("acme", "j1", b"stale")
    with pytest.raises(Fenced):
        await shards.append("acme", "j1", b"still stale")
    assert await store.read_output("acme", "j1") == []
    assert (await ShardClient.in_process([usurper]).append("acme", "j1", b"fresh")).seq == 1
    await usurper.stop()


async def test_a_failed_commit_is_reported_and_nothing_of_it_is_kept(store, shard, shards):
    await shards.submit("acme", JobSpec(), job_id="j1")
    store.fail_commits = True
    with pytest.raises(StoreUnavailable):
        await shards.append("acme", "j1", b"lost")
    store.fail_commits = False
    await until(lambda: not shard.store_down)  # tests/unit/test_outage.py
    assert (await shards.get("acme", "j1")).output_seq == 0
    assert (await shards.append("acme", "j1", b"next")).seq == 1


async def test_a_full_write_buffer_refuses_with_overloaded(store):
    shard = Shard(store, ShardConfig(slot=0, num_shards=1, max_pending_items=2))
    await shard.start()
    await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
    shards = ShardClient.in_process([shard])
    await shards.submit("acme", JobSpec(), job_id="j1")
    store.gate = asyncio.Event()
    writes = [asyncio.create_task(shards.append("acme", "j1", b"x")) for _ in range(2)]
    await until(lambda: _pending_writes_are(shard, 2))  # both queued behind the gate
    with pytest.raises(Overloaded) as refused:
        await shards.append("acme", "j1", b"x")
    assert refused.value.retry_after_s
    store.gate.set()
    assert sorted(a.seq for a in await asyncio.gather(*writes)) == [1, 2]
    await shard.stop()


async def test_concurrent_writes_share_group_commits(store, shards):
    jobs = [f"j{i}" for i in range(200)]
    await asyncio.gather(*(shards.submit("acme", JobSpec(), job_id=j) for j in jobs))
    before = len(store.commits)
    await asyncio.gather(*(shards.append("acme", j, b"x") for j in jobs))
    assert len(store.commits) - before < len(jobs) / 4
    assert [(await shards.get("acme", j)).output_seq for j in jobs] == [1] * len(jobs)


async def test_a_client_that_goes_away_does_not_cancel_others_writes(store, shard, shards):
    await shards.submit("acme", JobSpec(), job_id="a")
    await shards.submit("acme", JobSpec(), job_id="b")
    store.gate = asyncio.Event()
    leaving = asyncio.create_task(shards.append("acme", "a", b"x"))
    staying = asyncio.create_task(shards.append("acme", "b", b"y"))
    await until(lambda: _pending_writes_are(shard, 2))  # both queued behind the gate
    leaving.cancel()
    store.gate.set()
    assert (await staying).seq == 1
    assert (await shards.get("acme", "a")).output_seq == 1  # the write itself went through


async def test_the_in_memory_tail_is_bounded(store):
    config = ShardConfig(slot=0, num_shards=1, tail_bytes_per_job=100, tail_bytes_total=250)
    shard = Shard(store, config)
    await shard.start()
    await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
    shards = ShardClient.in_process([shard])
    for j in range(5):
        await shards.submit("acme", JobSpec(), job_id=f"j{j}")
        for _ in range(10):
            await shards.append("acme", f"j{j}", b"x" * 30)
    assert (await shard.stats())["tailBytes"] <= 250
    await shard.stop()


async def _pending_writes_are(shard: Shard, count: int) -> bool:
    return (await shard.stats())["pendingWrites"] == count
