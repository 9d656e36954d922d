"""Output versions in the shard, over the in-memory store: a re-run's new version, appends and
reads by version, the SHA-256 of each version (also after a restart), json documents."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace

import pytest

from actors.commands import Completion, JobSpec
from actors.feed import EventKind
from actors.limits import MAX_JSON_OUTPUT_BYTES, MAX_OUTPUT_VERSIONS
from actors.namespace_settings import NamespaceChanges
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from actors.tail import OutputTail
from actors.versions import next_version
from storage.errors import Conflict, Invalid, NotFound, TooLarge
from storage.records import Batch, Chunk, Job, JobStatus, OutputFormat
from tests.unit.fakes import FakeClock, GatedStore

T0 = 1_767_225_600.0
DONE = Completion(JobStatus.SUCCEEDED)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


async def started(store: GatedStore, clock: FakeClock) -> Shard:
    shard = Shard(store, ShardConfig(slot=0, num_shards=1), clock=clock)
    await shard.start()
    return shard


@pytest.fixture
async def shard(store: GatedStore, clock: FakeClock):
    shard = await started(store, clock)
    await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
    yield shard
    await shard.stop()


async def job_with(shards: ShardClient, *parts: bytes, **spec: object) -> Job:
    await shards.submit("acme", JobSpec(**spec), job_id="j1")  # type: ignore[arg-type]
    for part in parts:
        await shards.append("acme", "j1", part)
    return await shards.get("acme", "j1")


async def read(shards: ShardClient, version: int | None = None) -> bytes:
    job = await shards.get("acme", "j1")
    view = await shards.version(job, version)
    return b"".join([chunk.data async for chunk in shards.output(view)])


async def test_a_rerun_of_a_running_job_completes_its_version_and_starts_an_empty_one(
    shards, store, clock
):
    await job_with(shards, b"first ", b"try")
    clock.advance(5)
    job, created = await shards.start_version("acme", "j1")
    assert created and job.status is JobStatus.RUNNING
    assert (job.output_version, job.output_seq, job.output_size) == (2, 0, 0)
    assert job.output_version_at == T0 + 5 and job.output_sha256 is None
    [first] = await store.list_versions("acme", "j1")
    assert (first.version, first.last_seq, first.size) == (1, 2, 9)
    assert first.sha256 == sha(b"first try") and first.completed_at == T0 + 5
    assert first.created_at == T0
    ack = await shards.append("acme", "j1", b"again")
    assert (ack.seq, ack.offset, ack.version) == (1, 0, 2)
    assert await read(shards, 1) == b"first try" and await read(shards) == b"again"


async def test_a_rerun_of_a_finished_job_runs_it_again_without_expiry(shards, store, clock):
    await shards.submit("acme", JobSpec(ttl_s=60), job_id="j1")
    await shards.append("acme", "j1", b"out")
    clock.advance(1)
    done = await shards.complete("acme", "j1", Completion(JobStatus.FAILED, "boom"))
    assert done.output_sha256 == sha(b"out") and done.expires_at == T0 + 61
    clock.advance(1)
    job, created = await shards.start_version("acme", "j1")
    assert created and job.status is JobStatus.RUNNING
    assert (job.completed_at, job.expires_at, job.error, job.progress) == (None, None, None, 0.0)
    [first] = await store.list_versions("acme", "j1")
    assert first.completed_at == T0 + 1 and first.sha256 == sha(b"out")
    assert [j.job_id for j in await store.load_shard(0)] == ["j1"]  # reloaded as Running
    again = await shards.complete("acme", "j1", DONE)
    assert again.output_sha256 == sha(b"") and again.expires_at == T0 + 62


async def test_a_retried_start_on_an_empty_open_version_starts_none(shards, store):
    await job_with(shards, b"x")
    first, created = await shards.start_version("acme", "j1")
    again, created_again = await shards.start_version("acme", "j1")
    assert created and not created_again and again == first
    assert len(await store.list_versions("acme", "j1")) == 1
    fresh, _ = await shards.submit("acme", JobSpec(), job_id="j2")  # v1 empty and open
    same, created = await shards.start_version("acme", "j2")
    assert not created and same.output_version == 1 and same == fresh


async def test_appends_go_to_the_latest_version_only(shards):
    await job_with(shards, b"x")
    await shards.start_version("acme", "j1")
    with pytest.raises(Conflict, match=r"version 1 .* is complete"):
        await shards.append("acme", "j1", b"late", version=1)
    with pytest.raises(NotFound, match="no output version 3"):
        await shards.append("acme", "j1", b"early", version=3)
    result = await shards.append_many("acme", "j1", [b"a"], version=1)
    assert not result.acks and isinstance(result.error, Conflict)
    assert (await shards.append("acme", "j1", b"ok", version=2)).version == 2
    await shards.complete("acme", "j1", DONE)
    with pytest.raises(Conflict, match="version 2 is complete"):
        await shards.append("acme", "j1", b"after", version=2)


async def test_a_retried_append_to_a_completed_version_is_a_conflict(shards):
    await job_with(shards, b"abc")
    await shards.start_version("acme", "j1")
    with pytest.raises(Conflict):
        await shards.append("acme", "j1", b"abc", seq=1, version=1)
    ack = await shards.append("acme", "j1", b"abc", seq=1)  # the new version's seq 1
    assert (ack.seq, ack.version) == (1, 2)


async def test_reads_name_a_version_and_a_missing_one_is_not_found(shards):
    job = await job_with(shards, b"one")
    await shards.start_version("acme", "j1")
    job = await shards.get("acme", "j1")
    assert [v.version for v in await shards.versions(job)] == [1, 2]
    assert (await shards.version(job, 1)).size == 3
    for missing in (3, 2**63 - 1):
        with pytest.raises(NotFound):
            await shards.version(job, missing)
    with pytest.raises(Invalid):
        await shards.append("acme", "j1", b"x", version=0)


async def test_a_stream_of_an_earlier_version_replays_it_and_ends(shards):
    await job_with(shards, b"a", b"b")
    await shards.start_version("acme", "j1")
    await shards.append("acme", "j1", b"new")
    events = [e async for e in await shards.events("acme", "j1", version=1, heartbeat_s=0.1)]
    outputs = [e.chunk.data for e in events if e.chunk is not None]
    assert outputs == [b"a", b"b"] and events[-1].kind is EventKind.END
    with pytest.raises(NotFound):
        await shards.events("acme", "j1", version=9)


async def test_a_live_stream_ends_when_a_later_version_starts(shards):
    await job_with(shards, b"a")
    events = await shards.events("acme", "j1", heartbeat_s=0.05)
    kinds = []
    async for event in events:
        kinds.append((event.kind, event.chunk.data if event.chunk else None))
        if event.kind is EventKind.PROGRESS:
            await shards.append("acme", "j1", b"b")
            await shards.start_version("acme", "j1")
            await shards.append("acme", "j1", b"other version")
    outputs = [data for kind, data in kinds if kind is EventKind.OUTPUT]
    assert outputs == [b"a", b"b"] and kinds[-1][0] is EventKind.END


async def test_the_digest_is_right_after_a_restart_with_appends_before_and_after(
    store, clock, shard
):
    shards = ShardClient.in_process([shard])
    await job_with(shards, b"before ")
    await shard.stop()
    again = await started(store, clock)  # the running digest is gone with the old shard
    try:
        shards = ShardClient.in_process([again])
        await shards.append("acme", "j1", b"and after")
        job = await shards.complete("acme", "j1", DONE)
        assert job.output_sha256 == sha(b"before and after")
    finally:
        await again.stop()


async def test_a_rerun_after_a_restart_completes_the_version_with_its_digest(store, clock, shard):
    shards = ShardClient.in_process([shard])
    await job_with(shards, b"x" * 1000, b"y")
    await shard.stop()
    again = await started(store, clock)
    try:
        await ShardClient.in_process([again]).start_version("acme", "j1")
        [first] = await store.list_versions("acme", "j1")
        assert first.sha256 == sha(b"x" * 1000 + b"y")
    finally:
        await again.stop()


async def test_a_json_job_completes_only_as_one_document(shards):
    await job_with(shards, b'{"items": [1, ', output_format=OutputFormat.JSON)
    with pytest.raises(Invalid, match=r"not one JSON document .*premature EOF"):
        await shards.complete("acme", "j1", DONE)
    assert (await shards.get("acme", "j1")).status is JobStatus.RUNNING
    await shards.append("acme", "j1", b"2]} ")
    job = await shards.complete("acme", "j1", DONE)
    assert job.status is JobStatus.SUCCEEDED and job.output_sha256 == sha(b'{"items": [1, 2]} ')


@pytest.mark.parametrize("output", [b"", b"[1] [2]", b"{'a': 1}", b"[NaN]", b"// x\n1"])
async def test_a_json_job_with_no_document_or_more_than_one_is_refused(shards, output):
    await job_with(shards, *([output] if output else []), output_format=OutputFormat.JSON)
    with pytest.raises(Invalid):
        await shards.complete("acme", "j1", DONE)


async def test_a_json_job_may_fail_or_be_cancelled_with_any_output(shards):
    await job_with(shards, b"[1,", output_format=OutputFormat.JSON)
    failed = await shards.complete("acme", "j1", Completion(JobStatus.FAILED, "crashed"))
    assert failed.status is JobStatus.FAILED


async def test_a_json_version_is_at_most_its_limit(shards):
    await job_with(shards, output_format=OutputFormat.JSON)
    await shards.append("acme", "j1", b" " * (MAX_JSON_OUTPUT_BYTES - 1))
    with pytest.raises(TooLarge, match="json"):
        await shards.append("acme", "j1", b"12")
    await shards.append("acme", "j1", b"1")  # exactly at the limit
    assert (await shards.complete("acme", "j1", DONE)).status is JobStatus.SUCCEEDED


def test_a_job_has_at_most_its_limit_of_versions():
    job = Job("acme", "j1", 0, T0, T0, output_version=MAX_OUTPUT_VERSIONS - 1, output_seq=3)
    done, rerun = next_version(job, sha256="ab", now=T0 + 1)
    assert (done.version, done.last_seq, done.sha256, done.completed_at) == (
        MAX_OUTPUT_VERSIONS - 1,
        3,
        "ab",
        T0 + 1,
    )
    assert rerun.output_version == MAX_OUTPUT_VERSIONS and rerun.revision == job.revision + 1
    with pytest.raises(Conflict, match="most a job may have"):
        next_version(rerun, sha256="cd", now=T0 + 2)


def test_the_tail_holds_one_version_and_answers_for_that_version_only():
    tail = OutputTail(per_job_bytes=1024, total_bytes=4096)
    key = ("acme", "j1")
    for seq in (1, 2):
        tail.add(Chunk("acme", "j1", seq, seq - 1, b"a"))
    assert [c.seq for c in tail.after(key, 0, version=1)] == [1, 2]
    assert tail.after(key, 0, version=2) == ()
    tail.add(Chunk("acme", "j1", 1, 0, b"b", version=2))
    assert [c.data for c in tail.after(key, 0, version=2)] == [b"b"]
    assert tail.after(key, 1, version=1) == ()


async def test_a_rerun_job_is_not_evicted_as_a_finished_one(store, clock):
    """A finished job run again is no longer in the cache of finished jobs: evicting it with
    an append in flight would build the next append on the store's older view."""
    shard = Shard(store, ShardConfig(slot=0, num_shards=1, terminal_cache_jobs=1), clock=clock)
    await shard.start()
    try:
        await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
        shards = ShardClient.in_process([shard])
        await job_with(shards, b"x")
        await shards.complete("acme", "j1", DONE)
        await shards.start_version("acme", "j1")
        other = Job("acme", "j2", 0, T0, T0, status=JobStatus.SUCCEEDED, completed_at=T0)
        await store.commit(Batch(jobs=[other]))  # finished, in the store, not loaded
        store.gate, store.arrived = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(shards.append("acme", "j1", b"a"))
        await store.arrived.wait()
        loading = asyncio.ensure_future(shards.get("acme", "j2"))  # one finished job too many
        await asyncio.sleep(0)
        second = asyncio.ensure_future(shards.append("acme", "j1", b"b"))
        store.gate.set()
        await asyncio.gather(first, loading, second)
        assert (first.result().seq, second.result().seq) == (1, 2)
        assert await read(shards) == b"ab"
    finally:
        await shard.stop()


async def test_versions_go_with_their_job_when_it_is_deleted(shards, store):
    await job_with(shards, b"x")
    await shards.start_version("acme", "j1")
    await shards.complete("acme", "j1", DONE)
    await shards.delete("acme", "j1")
    assert await store.list_versions("acme", "j1") == []


def test_a_running_jobs_latest_version_has_no_digest_or_completion_yet():
    job = Job("acme", "j1", 0, T0, T0, output_seq=2, output_size=5, output_sha256="ab")
    assert job.current_version.sha256 is None and job.current_version.completed_at is None
    done = replace(job, status=JobStatus.SUCCEEDED, completed_at=T0 + 1)
    assert done.current_version.sha256 == "ab" and done.current_version.completed_at == T0 + 1
    assert done.current_version.created_at == T0


async def test_a_rerun_expired_job_is_running_and_not_swept(shard, shards, store, clock):
    await shards.submit("acme", JobSpec(ttl_s=10), job_id="j1")
    await shards.complete("acme", "j1", DONE)
    clock.advance(60)  # expired, not swept yet
    assert [j.job_id for j in await store.expired_jobs(0, now=clock())] == ["j1"]
    await shards.start_version("acme", "j1")
    assert await shard.sweeper.sweep() == 0
    job = await shards.get("acme", "j1")
    assert job.status is JobStatus.RUNNING and job.expires_at is None
    assert await store.expired_jobs(0, now=clock()) == []
