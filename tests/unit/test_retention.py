"""Retention over the in-memory store with a fake clock: when a job expires, and the sweeper
that deletes expired jobs (batches, audit, restarts, failures, jobs it must pass over)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.commands import Completion, JobSpec
from actors.namespace_settings import NamespaceChanges
from actors.render import job_json
from actors.retention import RETENTION_ACTOR, expires_at
from actors.routing import shard_for
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from storage.errors import NotFound, StoreUnavailable
from storage.records import Batch, Job, JobStatus
from tests.unit.fakes import FakeClock, GatedStore, until

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DONE = Completion(JobStatus.SUCCEEDED)


def test_a_jobs_own_ttl_counts_from_its_completion_before_its_namespaces_default():
    assert expires_at(T0, ttl_s=60, default_ttl_s=3600) == T0 + 60
    assert expires_at(T0, ttl_s=None, default_ttl_s=3600) == T0 + 3600
    assert expires_at(T0, ttl_s=None, default_ttl_s=None) is None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def config(**options: object) -> ShardConfig:
    # A sweep every hour of real time: the tests run each pass themselves.
    fields: dict[str, object] = {"num_shards": 1, "retention_sweep_interval_s": 3600.0, **options}
    return ShardConfig(slot=0, **fields)  # type: ignore[arg-type]


async def started(store: GatedStore, clock: FakeClock, **options: object) -> Shard:
    shard = Shard(store, config(**options), clock=clock)
    await shard.start()
    return shard


@pytest.fixture
async def shard(store: GatedStore, clock: FakeClock) -> AsyncIterator[Shard]:
    shard = await started(
        store, clock, retention_sweep_batch=3, webhook_allowed_networks="127.0.0.0/8"
    )
    await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
    await shard.namespaces.create("keep", NamespaceChanges(), actor="t")
    yield shard
    await shard.stop()


async def finished(shards: ShardClient, job_id: str, ttl_s: int | None = None, ns="acme") -> Job:
    await shards.submit(ns, JobSpec(ttl_s=ttl_s), job_id=job_id)
    await shards.append(ns, job_id, b"output")
    return await shards.complete(ns, job_id, DONE)


# -- when a job expires -----------------------------------------------------------------------


async def test_a_finished_job_expires_its_ttl_after_completion(shards, clock):
    await shards.submit("acme", JobSpec(ttl_s=60), job_id="j1")
    running = await shards.get("acme", "j1")
    assert running.expires_at is None and job_json(running)["expiresAt"] is None
    clock.advance(10)
    done = await shards.complete("acme", "j1", DONE)
    assert done.expires_at == T0 + 70
    assert job_json(done)["expiresAt"] == "2026-01-01T00:01:10.000Z"


async def test_the_namespace_default_applies_when_the_job_has_no_ttl(shard, shards, clock):
    await shards.update_namespace("acme", NamespaceChanges(retention_ttl_s=3600))
    assert (await finished(shards, "default")).expires_at == T0 + 3600
    assert (await finished(shards, "own", ttl_s=5)).expires_at == T0 + 5
    cancelled = await shards.submit("acme", JobSpec(), job_id="cancelled")
    assert (await shards.cancel("acme", cancelled[0].job_id)).expires_at == T0 + 3600


async def test_a_changed_default_applies_to_jobs_finishing_after_the_change(shards):
    await shards.update_namespace("acme", NamespaceChanges(retention_ttl_s=3600))
    before = await finished(shards, "before")
    await shards.update_namespace("acme", NamespaceChanges(retention_ttl_s=60))
    assert (await shards.get("acme", "before")).expires_at == before.expires_at == T0 + 3600
    assert (await finished(shards, "after")).expires_at == T0 + 60
    await shards.update_namespace("acme", NamespaceChanges(retention_ttl_s=None))
    assert (await finished(shards, "kept")).expires_at is None


# -- the sweeper -------------------------------------------------------------------------------


async def test_a_pass_deletes_at_most_a_batch_the_earliest_expired_first(
    shard, shards, store, clock
):
    for i in range(7):
        await finished(shards, f"j{i}", ttl_s=10 + i)
    clock.advance(100)
    assert await shard.sweeper.sweep() == 3
    assert sorted(store.jobs["acme"]) == ["j3", "j4", "j5", "j6"]
    assert await shard.sweeper.sweep() == 3
    assert await shard.sweeper.sweep() == 1
    assert await shard.sweeper.sweep() == 0
    assert store.jobs["acme"] == {}


async def test_an_expired_job_goes_with_its_output_and_deliveries_and_is_audited(
    shard, shards, store, clock
):
    await shards.submit("acme", JobSpec(ttl_s=60, webhook_url="http://127.0.0.1/h"), job_id="j1")
    await shards.append("acme", "j1", b"output")
    await shards.complete("acme", "j1", DONE)
    assert await store.list_deliveries("acme", "j1")
    clock.advance(59)
    assert await shard.sweeper.sweep() == 0
    clock.advance(1)
    assert await shard.sweeper.sweep() == 1
    with pytest.raises(NotFound):
        await shards.get("acme", "j1")
    assert await store.read_output("acme", "j1") == []
    assert await store.list_deliveries("acme", "j1") == []
    [entry] = [a for a in store.audit if a.actor == RETENTION_ACTOR]
    assert (entry.action, entry.namespace, entry.target) == ("job.delete", "acme", "j1")
    assert (entry.at, entry.detail) == (T0 + 60, {"expiresAt": "2026-01-01T00:01:00.000Z"})


async def test_running_jobs_and_jobs_without_a_ttl_are_never_swept(shard, shards, store, clock):
    await shards.submit("acme", JobSpec(ttl_s=1), job_id="running")
    await finished(shards, "no-ttl")
    await finished(shards, "other-namespace", ns="keep")
    clock.advance(100 * 365 * 86400)
    assert await shard.sweeper.sweep() == 0
    assert sorted(store.jobs["acme"]) == ["no-ttl", "running"]
    assert list(store.jobs["keep"]) == ["other-namespace"]


async def test_jobs_finished_before_a_restart_are_swept_by_the_new_shard(
    shard, shards, store, clock
):
    await finished(shards, "j1", ttl_s=60)
    await shard.stop()
    reborn = await started(store, clock)
    assert len(reborn._jobs) == 0  # terminal jobs are not loaded at start
    clock.advance(60)
    assert await reborn.sweeper.sweep() == 1
    assert store.jobs["acme"] == {}
    await reborn.stop()


async def test_a_deletion_that_fails_leaves_the_job_whole_and_is_tried_again(
    shard, shards, store, clock
):
    await finished(shards, "j1", ttl_s=60)
    clock.advance(60)
    store.fail_commits = True
    with pytest.raises(StoreUnavailable):
        await shard.sweeper.sweep()
    store.fail_commits = False
    assert (await shards.get("acme", "j1")).status is JobStatus.SUCCEEDED
    assert [c.data for c in await store.read_output("acme", "j1")] == [b"output"]
    assert not [a for a in store.audit if a.actor == RETENTION_ACTOR]
    assert await shard.sweeper.sweep() == 1
    assert store.jobs["acme"] == {}


async def test_a_job_the_shard_cannot_delete_is_passed_over_not_retried_every_pass(store, clock):
    """Expired rows of a namespace this shard does not own (its jobs carry its slot, as
    after a change of the shard count) must not fill every pass."""
    shard = await started(store, clock, num_shards=64, retention_sweep_batch=1)
    foreign = next(f"ns-{i}" for i in range(1000) if shard_for(f"ns-{i}", 64) != 0)
    ours = next(f"ns-{i}" for i in range(1000) if shard_for(f"ns-{i}", 64) == 0)
    await shard.namespaces.create(ours, NamespaceChanges(), actor="t")
    stray = Job(foreign, "stray", 0, T0, T0, JobStatus.FAILED, completed_at=T0, expires_at=T0)
    await store.commit(Batch(jobs=[stray]))
    await finished(ShardClient.in_process([shard]), "j1", ttl_s=1, ns=ours)
    clock.advance(1)
    assert await shard.sweeper.sweep() == 0  # the stray job, passed over
    assert await shard.sweeper.sweep() == 1
    assert store.jobs[ours] == {} and list(store.jobs[foreign]) == ["stray"]
    await shard.stop()


async def test_the_sweeper_runs_by_itself_every_interval(store, clock):
    shard = await started(store, clock, retention_sweep_interval_s=0.01)
    await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
    await finished(ShardClient.in_process([shard]), "j1", ttl_s=1)
    clock.advance(1)
    await until(lambda: "j1" not in store.jobs["acme"])
    await shard.stop()
