"""The shard state machine over a real in-memory store: durability, idempotency, isolation."""

from __future__ import annotations

import asyncio

import pytest

from actors.shard import Shard, ShardConfig
from actors.validation import JobSpec
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


async def test_submit_is_durable_when_it_returns(shard, store):
    job, created = await shard.submit("acme", "j1", JobSpec(title="export"))
    assert created and job.status is JobStatus.RUNNING
    assert await store.get_job("acme", "j1") == job


async def test_resubmit_with_same_request_is_idempotent_and_different_is_conflict(shard):
    first, _ = await shard.submit("acme", "j1", JobSpec(title="a", tags=("x",)))
    again, created = await shard.submit("acme", "j1", JobSpec(title="a", tags=("x",)))
    assert not created and again == first
    with pytest.raises(Conflict):
        await shard.submit("acme", "j1", JobSpec(title="b"))


async def test_submit_generates_an_id_when_none_is_given(shard):
    a, _ = await shard.submit("acme", None, JobSpec())
    b, _ = await shard.submit("acme", None, JobSpec())
    assert a.job_id != b.job_id


async def test_submit_to_unknown_namespace_is_not_found(shard):
    with pytest.raises(NotFound):
        await shard.submit("nobody", "j1", JobSpec())


async def test_appends_get_increasing_seq_and_offsets_and_are_in_the_store(shard, store):
    await shard.submit("acme", "j1", JobSpec())
    first = await shard.append("acme", "j1", b"hello ")
    second = await shard.append("acme", "j1", b"world")
    assert (first.seq, first.offset, second.seq, second.offset) == (1, 0, 2, 6)
    chunks = await store.read_output("acme", "j1")
    assert b"".join(c.data for c in chunks) == b"hello world"
    assert (await shard.get("acme", "j1")).output_size == 11


async def test_append_retried_with_its_seq_is_acknowledged_once(shard, store):
    await shard.submit("acme", "j1", JobSpec())
    ack = await shard.append("acme", "j1", b"a", seq=1)
    again = await shard.append("acme", "j1", b"a", seq=1)
    assert again == ack
    assert len(await store.read_output("acme", "j1")) == 1
    with pytest.raises(Conflict):
        await shard.append("acme", "j1", b"different", seq=1)
    with pytest.raises(Conflict):
        await shard.append("acme", "j1", b"gap", seq=5)


async def test_retried_append_is_acknowledged_from_the_store_after_a_restart(store, shard):
    await shard.submit("acme", "j1", JobSpec())
    ack = await shard.append("acme", "j1", b"abc", seq=1)
    await shard.stop()
    reborn = Shard(store, ShardConfig(slot=0, num_shards=1))
    await reborn.start()
    assert await reborn.append("acme", "j1", b"abc", seq=1) == ack
    await reborn.stop()


async def test_output_is_closed_once_the_job_is_terminal(shard):
    await shard.submit("acme", "j1", JobSpec())
    await shard.complete("acme", "j1", JobStatus.SUCCEEDED)
    with pytest.raises(Conflict):
        await shard.append("acme", "j1", b"late")
    with pytest.raises(Conflict):
        await shard.set_progress("acme", "j1", progress=50)


async def test_complete_repeated_is_acknowledged_but_a_different_outcome_conflicts(shard):
    await shard.submit("acme", "j1", JobSpec())
    done = await shard.complete("acme", "j1", JobStatus.FAILED, error="boom")
    assert await shard.complete("acme", "j1", JobStatus.FAILED, error="boom") == done
    with pytest.raises(Conflict):
        await shard.complete("acme", "j1", JobStatus.SUCCEEDED)
    with pytest.raises(Invalid):
        await shard.complete("acme", "j1", JobStatus.CANCELLED)


async def test_cancel_running_then_cancel_again_conflicts(shard):
    await shard.submit("acme", "j1", JobSpec())
    assert (await shard.cancel("acme", "j1")).status is JobStatus.CANCELLED
    with pytest.raises(Conflict):
        await shard.cancel("acme", "j1")


async def test_delete_needs_a_terminal_job_and_removes_its_output(shard, store):
    await shard.submit("acme", "j1", JobSpec())
    await shard.append("acme", "j1", b"x")
    with pytest.raises(Conflict):
        await shard.delete("acme", "j1")
    await shard.complete("acme", "j1", JobStatus.SUCCEEDED)
    await shard.delete("acme", "j1")
    with pytest.raises(NotFound):
        await shard.get("acme", "j1")
    assert await store.get_job("acme", "j1") is None
    assert await store.read_output("acme", "j1") == []


async def test_a_deleted_job_id_can_be_submitted_again(shard):
    await shard.submit("acme", "j1", JobSpec())
    await shard.cancel("acme", "j1")
    await shard.delete("acme", "j1")
    job, created = await shard.submit("acme", "j1", JobSpec())
    assert created and job.output_seq == 0


@pytest.mark.parametrize("value", [-1, 101, "50", True, float("nan")])
async def test_progress_out_of_range_is_invalid(shard, value):
    await shard.submit("acme", "j1", JobSpec())
    with pytest.raises(Invalid):
        await shard.set_progress("acme", "j1", progress=value)


async def test_namespaces_never_see_each_others_jobs(shard):
    await shard.submit("acme", "j1", JobSpec())
    await shard.append("acme", "j1", b"secret")
    for call in (shard.get, shard.cancel):
        with pytest.raises(NotFound):
            await call("globex", "j1")
    with pytest.raises(NotFound):
        await shard.read_output("globex", "j1")


async def test_a_namespace_of_another_shard_is_refused(store):
    shard = Shard(store, ShardConfig(slot=0, num_shards=64))
    await shard.start()
    foreign = next(f"ns-{i}" for i in range(1000) if not _owned(f"ns-{i}", 64))
    with pytest.raises(BadRequest):
        await shard.get(foreign, "j1")
    await shard.stop()


def _owned(namespace: str, num_shards: int) -> bool:
    from actors.routing import shard_for

    return shard_for(namespace, num_shards) == 0


@pytest.mark.parametrize("job_id", ["", "a/b", "x" * 129, "with space", "../etc"])
async def test_bad_job_ids_are_refused(shard, job_id):
    with pytest.raises(Invalid):
        await shard.submit("acme", job_id, JobSpec())


async def test_oversized_and_empty_chunks_are_refused(store):
    shard = Shard(store, ShardConfig(slot=0, num_shards=1, max_chunk_bytes=8))
    await shard.start()
    await shard.namespaces.create("acme", {}, actor="t")
    await shard.submit("acme", "j1", JobSpec())
    with pytest.raises(TooLarge):
        await shard.append("acme", "j1", b"123456789")
    with pytest.raises(Invalid):
        await shard.append("acme", "j1", b"")
    await shard.stop()


async def test_text_jobs_need_utf8_and_binary_jobs_take_any_bytes(shard):
    await shard.submit("acme", "text", JobSpec())
    await shard.submit("acme", "bin", JobSpec(output_format=OutputFormat.BINARY))
    with pytest.raises(Invalid):
        await shard.append("acme", "text", b"\xff\xfe")
    assert (await shard.append("acme", "bin", b"\xff\xfe")).size == 2


async def test_watch_wakes_on_commit_and_hands_over_the_new_chunk(shard):
    job, _ = await shard.submit("acme", "j1", JobSpec())
    waiter = asyncio.create_task(
        shard.watch("acme", "j1", revision=job.revision, after_seq=0, timeout_s=5)
    )
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await shard.append("acme", "j1", b"live")
    update = await asyncio.wait_for(waiter, 2)
    assert [c.data for c in update.chunks] == [b"live"]
    assert update.job.output_seq == 1


async def test_watch_times_out_with_the_same_revision(shard):
    job, _ = await shard.submit("acme", "j1", JobSpec())
    update = await shard.watch("acme", "j1", revision=job.revision, timeout_s=0.05)
    assert update.job.revision == job.revision


async def test_restart_reloads_running_jobs_and_loads_terminal_ones_lazily(store, shard):
    await shard.submit("acme", "run", JobSpec())
    await shard.append("acme", "run", b"kept")
    await shard.submit("acme", "done", JobSpec())
    await shard.complete("acme", "done", JobStatus.SUCCEEDED)
    await shard.stop()
    reborn = Shard(store, ShardConfig(slot=0, num_shards=1))
    await reborn.start()
    assert reborn.stats()["jobsLoaded"] == 1
    assert (await reborn.get("acme", "run")).output_seq == 1
    assert (await reborn.get("acme", "done")).status is JobStatus.SUCCEEDED
    assert (await reborn.append("acme", "run", b"more")).seq == 2
    await reborn.stop()


async def test_a_newer_owner_fences_the_old_shard(store, shard):
    await shard.submit("acme", "j1", JobSpec())
    usurper = Shard(store, ShardConfig(slot=0, num_shards=1))
    await usurper.start()
    with pytest.raises(Fenced):
        await shard.append("acme", "j1", b"stale")
    with pytest.raises(Fenced):
        await shard.append("acme", "j1", b"still stale")
    assert await store.read_output("acme", "j1") == []
    assert (await usurper.append("acme", "j1", b"fresh")).seq == 1
    await usurper.stop()


async def test_a_failed_commit_is_reported_and_nothing_of_it_is_kept(store, shard):
    await shard.submit("acme", "j1", JobSpec())
    store.fail_commits = True
    with pytest.raises(StoreUnavailable):
        await shard.append("acme", "j1", b"lost")
    store.fail_commits = False
    assert (await shard.get("acme", "j1")).output_seq == 0
    assert (await shard.append("acme", "j1", b"next")).seq == 1


async def test_a_full_write_buffer_refuses_with_overloaded(store):
    shard = Shard(store, ShardConfig(slot=0, num_shards=1, max_pending_items=2))
    await shard.start()
    await shard.namespaces.create("acme", {}, actor="t")
    await shard.submit("acme", "j1", JobSpec())
    store.gate = asyncio.Event()
    writes = [asyncio.create_task(shard.append("acme", "j1", b"x")) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as refused:
        await shard.append("acme", "j1", b"x")
    assert refused.value.retry_after_s
    store.gate.set()
    assert sorted(a.seq for a in await asyncio.gather(*writes)) == [1, 2]
    await shard.stop()


async def test_concurrent_writes_share_group_commits(store, shard):
    jobs = [f"j{i}" for i in range(200)]
    await asyncio.gather(*(shard.submit("acme", j, JobSpec()) for j in jobs))
    before = len(store.commits)
    await asyncio.gather(*(shard.append("acme", j, b"x") for j in jobs))
    assert len(store.commits) - before < len(jobs) / 4
    assert [(await shard.get("acme", j)).output_seq for j in jobs] == [1] * len(jobs)


async def test_a_client_that_goes_away_does_not_cancel_others_writes(store, shard):
    await shard.submit("acme", "a", JobSpec())
    await shard.submit("acme", "b", JobSpec())
    store.gate = asyncio.Event()
    leaving = asyncio.create_task(shard.append("acme", "a", b"x"))
    staying = asyncio.create_task(shard.append("acme", "b", b"y"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    store.gate.set()
    assert (await staying).seq == 1
    assert (await shard.get("acme", "a")).output_seq == 1  # the write itself went through


async def test_the_in_memory_tail_is_bounded(store):
    config = ShardConfig(slot=0, num_shards=1, tail_bytes_per_job=100, tail_bytes_total=250)
    shard = Shard(store, config)
    await shard.start()
    await shard.namespaces.create("acme", {}, actor="t")
    for j in range(5):
        await shard.submit("acme", f"j{j}", JobSpec())
        for _ in range(10):
            await shard.append("acme", f"j{j}", b"x" * 30)
    assert shard.stats()["tailBytes"] <= 250
    await shard.stop()
