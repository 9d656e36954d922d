"""Batch submit at the shard (`Shard.submit_many`) and through `ShardClient.submit_many`: one
group commit for the whole batch, `submit`'s rules per item, and each item's failure its own.

The shard is the real one over the in-memory store (`GatedStore` counts its commits)."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Sequence
from typing import Any

import pytest

from actors.commands import JobSpec
from actors.namespace_settings import NamespaceChanges
from actors.routing import shard_for
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from actors.shard_types import SubmitItem, SubmitResult
from storage import errors
from storage.errors import (
    AosError,
    Conflict,
    Fenced,
    Invalid,
    NotFound,
    Overloaded,
    ShardUnavailable,
    StoreUnavailable,
    TooLarge,
    Unstorable,
)
from storage.records import Job, JobStatus
from tests.unit.fakes import GatedStore, until

MARK = "unstorable-title-7f3a"


def item(job_id: str | None, title: str | None = None, *, namespace: str = "acme") -> SubmitItem:
    return SubmitItem(namespace, job_id, JobSpec(title=title), actor="test")


def outcome(result: SubmitResult) -> tuple[str | None, bool, type[AosError] | None]:
    """A result as (job id, created, error class), for comparing whole batches."""
    job_id = result.job.job_id if result.job is not None else None
    return job_id, result.created, type(result.error) if result.error is not None else None


# -- the shard ---------------------------------------------------------------------------------


async def test_a_batch_of_new_jobs_is_one_group_commit(shard, store):
    items = [item(f"j{i}", namespace=("acme", "globex")[i % 2]) for i in range(200)]
    before = len(store.commits)
    results = await shard.submit_many(items)
    assert [outcome(r) for r in results] == [(f"j{i}", True, None) for i in range(200)]
    assert len(store.commits) - before == 1
    assert len(store.commits[-1].jobs) == 200
    assert (await shard.stats())["batchSizes"][200] == 1
    for i, result in enumerate(results):
        assert await store.get_job(items[i].namespace, f"j{i}") == result.job


async def test_the_same_request_again_is_200_and_another_request_for_the_id_is_409(shard, store):
    await shard.submit_many([item("same", "a"), item("other", "a")])
    stored = await store.get_job("acme", "other")
    results = await shard.submit_many([item("same", "a"), item("other", "b"), item("new", "c")])
    assert [outcome(r) for r in results] == [
        ("same", False, None),
        (None, False, Conflict),
        ("new", True, None),
    ]
    assert await store.get_job("acme", "other") == stored


async def test_an_id_twice_in_a_batch_is_created_once_then_200_or_409(shard, store):
    results = await shard.submit_many(
        [item("j1", "a"), item("j1", "a"), item("j1", "b"), item("j2")]
    )
    assert [outcome(r) for r in results] == [
        ("j1", True, None),
        ("j1", False, None),
        (None, False, Conflict),
        ("j2", True, None),
    ]
    assert results[0].job == results[1].job
    assert len(store.commits[-1].jobs) == 2


class CountingStore(GatedStore):
    """Counts the job reads (one id or many)."""

    def __init__(self) -> None:
        super().__init__()
        self.job_reads = 0

    async def get_job(self, namespace: str, job_id: str) -> Job | None:
        self.job_reads += 1
        return await super().get_job(namespace, job_id)

    async def get_jobs(self, namespace: str, job_ids: Sequence[str]) -> list[Job]:
        self.job_reads += 1
        return await super().get_jobs(namespace, job_ids)


async def test_jobs_only_in_the_store_are_read_once_per_namespace_and_found():
    store = CountingStore()
    await store.open()
    first = Shard(store, ShardConfig(slot=0, num_shards=1))
    await first.start()
    for name in ("acme", "globex"):
        await first.namespaces.create(name, NamespaceChanges(), actor="t")
    items = [item(f"j{i}", namespace=("acme", "globex")[i % 2]) for i in range(100)]
    await first.submit_many(items)
    for done in items:
        await first.cancel(done.namespace, job_id=str(done.job_id))
    await first.stop()
    reborn = Shard(store, ShardConfig(slot=0, num_shards=1))  # holds no finished job
    await reborn.start()
    store.job_reads = 0
    results = await reborn.submit_many([*items, item("new")])
    assert [outcome(r) for r in results] == [
        *((i.job_id, False, None) for i in items),
        ("new", True, None),
    ]
    assert all(r.job.status is JobStatus.CANCELLED for r in results[:-1] if r.job)
    assert store.job_reads == 2
    await reborn.stop()


async def test_an_item_the_store_cannot_hold_fails_alone_and_the_others_are_stored(shard, store):
    store.unstorable = MARK
    results = await shard.submit_many(
        [item("before"), item("bad", f"x {MARK}"), item("bad", f"x {MARK}"), item("after")]
    )
    assert [outcome(r) for r in results] == [
        ("before", True, None),
        (None, False, Unstorable),
        (None, False, Unstorable),  # the same request twice: the same outcome
        ("after", True, None),
    ]
    assert await store.get_job("acme", "bad") is None
    for job_id in ("before", "after"):
        assert await store.get_job("acme", job_id) is not None
    store.unstorable = None
    again = await shard.submit_many([item("bad", "now storable")])
    assert outcome(again[0]) == ("bad", True, None)


async def test_an_unknown_namespace_or_a_refused_webhook_fails_only_its_item(shard, store):
    hooked = SubmitItem("acme", "hooked", JobSpec(webhook_url="http://10.0.0.1/hook"))
    results = await shard.submit_many([item("j1"), item("j1", namespace="nobody"), hooked])
    assert [outcome(r) for r in results] == [
        ("j1", True, None),
        (None, False, NotFound),
        (None, False, Invalid),
    ]
    assert await store.get_job("acme", "hooked") is None


async def test_a_failed_commit_fails_the_new_jobs_but_not_those_already_there(shard, store):
    await shard.submit_many([item("old")])
    store.fail_commits = True
    results = await shard.submit_many([item("old"), item("new1"), item("new2")])
    assert [outcome(r) for r in results] == [
        ("old", False, None),
        (None, False, StoreUnavailable),
        (None, False, StoreUnavailable),
    ]
    store.fail_commits = False
    await until(lambda: not shard.store_down)  # tests/unit/test_outage.py
    again = await shard.submit_many([item("new1"), item("new2")])
    assert [outcome(r) for r in again] == [("new1", True, None), ("new2", True, None)]


async def test_a_full_write_buffer_refuses_the_items_past_it(store):
    shard = Shard(store, ShardConfig(slot=0, num_shards=1, max_pending_items=3))
    await shard.start()
    await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
    results = await shard.submit_many([item(f"j{i}") for i in range(5)])
    assert [outcome(r) for r in results] == [
        ("j0", True, None),
        ("j1", True, None),
        ("j2", True, None),
        (None, False, Overloaded),
        (None, False, Overloaded),
    ]
    assert results[3].error is not None and results[3].error.retry_after_s
    assert await store.get_job("acme", "j3") is None
    await shard.stop()


async def test_a_fenced_shard_refuses_every_new_job(store, shard):
    usurper = Shard(store, ShardConfig(slot=0, num_shards=1))
    await usurper.start()
    results = await shard.submit_many([item("j1"), item("j2")])  # the first commit finds out
    assert {type(r.error) for r in results} == {Fenced}
    results = await shard.submit_many([item("j3")])  # and then it knows
    assert type(results[0].error) is Fenced
    await usurper.stop()


async def test_a_single_submit_is_a_batch_of_one_and_raises_its_error(shard):
    job, created = await shard.submit("acme", job_id="j1", spec=JobSpec(title="a"))
    assert created and job.job_id == "j1"
    assert await shard.submit("acme", job_id="j1", spec=JobSpec(title="a")) == (job, False)
    with pytest.raises(Conflict):
        await shard.submit("acme", job_id="j1", spec=JobSpec(title="b"))


ERRORS = [
    errors.AosError,
    errors.Invalid,
    errors.TooLarge,
    errors.Unstorable,
    errors.BadRequest,
    errors.Unauthorized,
    errors.Forbidden,
    errors.NotFound,
    errors.Conflict,
    errors.RequestTimeout,
    errors.Overloaded,
    errors.StoreUnavailable,
    errors.Fenced,
    errors.ShardUnavailable,
    errors.DnsUnavailable,
]


@pytest.mark.parametrize("retry_after_s", [None, 2.5])
@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_an_error_in_a_result_survives_pickling_with_its_class_message_and_retry(
    cls, retry_after_s
):
    error = cls("message", retry_after_s=retry_after_s)
    result = pickle.loads(pickle.dumps(SubmitResult(error=error)))  # as Ray carries it
    assert type(result.error) is cls and result.error.code == cls.code
    assert (result.error.message, str(result.error)) == ("message", "message")
    assert result.error.retry_after_s == retry_after_s


def test_the_pickling_test_covers_every_error_class():
    def tree(cls: type[AosError]) -> set[type[AosError]]:
        return {cls}.union(*(tree(sub) for sub in cls.__subclasses__()))

    assert {cls for cls in tree(AosError) if cls.__module__ == errors.__name__} == set(ERRORS)


# -- through ShardClient -----------------------------------------------------------------------

NUM_SHARDS = 4
NAMESPACES = [f"tenant-{i}" for i in range(12)]


class EchoShard:
    """A shard that answers each item with a job of its id; records each call's items."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.calls: list[list[SubmitItem]] = []

    async def submit_many(self, items: list[SubmitItem]) -> list[SubmitResult]:
        self.calls.append(list(items))
        assert all(shard_for(i.namespace, NUM_SHARDS) == self.slot for i in items)
        return [SubmitResult(Job(i.namespace, str(i.job_id), self.slot, 0.0, 0.0)) for i in items]


class RestartingShard:
    async def submit_many(self, items: list[SubmitItem]) -> list[SubmitResult]:
        raise ShardUnavailable("the shard is restarting", retry_after_s=1.0)


def fleet(*, down: int | None = None) -> tuple[ShardClient, list[Any]]:
    shards: list[Any] = [
        RestartingShard() if slot == down else EchoShard(slot) for slot in range(NUM_SHARDS)
    ]
    return ShardClient(num_shards=NUM_SHARDS, shards=shards.__getitem__), shards


async def test_the_client_calls_each_shard_once_and_answers_in_the_items_order():
    client, shards = fleet()
    items = [item(f"j{i}", namespace=NAMESPACES[i % len(NAMESPACES)]) for i in range(60)]
    results = await client.submit_many(items)
    assert [(r.job.namespace, r.job.job_id) for r in results if r.job] == [
        (i.namespace, i.job_id) for i in items
    ]
    for shard in shards:
        assert len(shard.calls) == 1
        assert shard.calls[0] == [
            i for i in items if shard_for(i.namespace, NUM_SHARDS) == shard.slot
        ]


async def test_a_bad_namespace_or_job_id_fails_its_item_before_any_shard_is_called():
    client, shards = fleet()
    items = [
        item("ok"),
        item("bad/id"),
        item("x" * 129),
        item("j1", namespace="Not_Valid"),
        item("j1", namespace="a" * 64),
        item("ok2"),
    ]
    results = await client.submit_many(items)
    assert [outcome(r) for r in results] == [
        ("ok", False, None),
        (None, False, Invalid),
        (None, False, TooLarge),
        (None, False, Invalid),
        (None, False, TooLarge),
        ("ok2", False, None),
    ]
    assert sum(len(call) for shard in shards for call in shard.calls) == 2


async def test_the_client_gives_a_job_without_an_id_a_new_one():
    client, _ = fleet()
    results = await client.submit_many([item(None), item(None)])
    ids = [r.job.job_id for r in results if r.job]
    assert len(set(ids)) == 2 and all(ids) and "None" not in ids


async def test_a_restarting_shard_fails_its_items_with_503_and_the_others_go_through():
    down = shard_for("tenant-0", NUM_SHARDS)
    client, _ = fleet(down=down)
    items = [item(f"j{i}", namespace=ns) for i, ns in enumerate(NAMESPACES)]
    results = await client.submit_many(items)
    for i, result in zip(items, results, strict=True):
        if shard_for(i.namespace, NUM_SHARDS) == down:
            assert isinstance(result.error, ShardUnavailable) and result.error.retry_after_s
        else:
            assert result.error is None and result.job is not None


async def test_an_empty_batch_calls_no_shard():
    client, shards = fleet()
    assert await client.submit_many([]) == []
    assert all(not shard.calls for shard in shards)


async def test_concurrent_batches_of_one_shard_each_get_their_own_results(shards, store):
    batches = [[item(f"b{b}-j{i}") for i in range(20)] for b in range(5)]
    replies = await asyncio.gather(*(shards.submit_many(batch) for batch in batches))
    for batch, reply in zip(batches, replies, strict=True):
        assert [outcome(r) for r in reply] == [(i.job_id, True, None) for i in batch]
        for result in reply:
            assert await store.get_job("acme", result.job.job_id) == result.job
