"""The metrics' definitions (actors/metrics.py) and where the shard side records them: group
commits, a full write buffer, jobs created and finished, webhook outcomes; and the HTTP
edge's count of shed requests."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from dataclasses import replace

import pytest
from ray.util.metrics import Counter, Metric

from actors import metrics
from actors.commands import Completion, JobSpec
from actors.committer import GroupCommitter
from actors.namespace_settings import NamespaceChanges
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from serve_app import errors
from storage.errors import Overloaded, StoreUnavailable
from storage.memory import MemoryStore
from storage.records import Delivery, DeliveryStatus, Job, JobStatus
from tests.unit.recorded import Recorded, recording


@pytest.mark.parametrize(
    "buckets",
    [metrics.LATENCY_BUCKETS_S, metrics.COMMIT_BUCKETS_S, metrics.BATCH_SIZE_BUCKETS],
)
def test_buckets_rise_and_are_positive(buckets: list[float]) -> None:
    assert all(0 < low < high for low, high in itertools.pairwise(buckets))


def test_the_batch_size_buckets_reach_the_largest_batch() -> None:
    largest = inspect.signature(GroupCommitter).parameters["max_batch_items"].default
    assert metrics.BATCH_SIZE_BUCKETS[-1] == largest
    assert metrics.BATCH_SIZE_BUCKETS[0] == 1  # a batch of one is its own bucket


def test_every_metric_is_named_by_prometheus_conventions() -> None:
    defined = [v for v in vars(metrics).values() if isinstance(v, Metric)]
    names = {m.info["name"]: m for m in defined}
    assert len(names) == len(defined) == 11
    for name, metric in names.items():
        assert name.startswith("aos_") and metric.info["description"]
        if isinstance(metric, Counter):
            assert name.endswith("_total"), name
        assert "job" not in metric.info["tag_keys"] and "namespace" not in metric.info["tag_keys"]


def _nothing(*_: object) -> None:
    pass


def _job(job_id: str) -> Job:
    return Job("acme", job_id, 0, 1000.0, 1000.0)


async def test_a_commit_records_its_batch_size_and_duration_under_its_slot(monkeypatch):
    got = recording(monkeypatch, "COMMIT_BATCH_SIZE", "COMMIT_DURATION")
    store = MemoryStore()
    await store.open()
    epoch = await store.acquire_shard(3, "test")
    committer = GroupCommitter(
        store, slot=3, epoch=epoch, on_committed=_nothing, on_failed=_nothing
    )
    committer.start()
    try:
        adds = [committer.add(jobs=[_job(f"j{i}")]) for i in range(3)]
        await asyncio.gather(*adds)
    finally:
        await committer.stop()
    assert got["COMMIT_BATCH_SIZE"].points == [(3, {"slot": "3"})]
    [(seconds, tags)] = got["COMMIT_DURATION"].points
    assert tags == {"slot": "3"} and 0 <= seconds < 60


async def test_a_full_write_buffer_counts_the_write_it_refuses(monkeypatch):
    got = recording(monkeypatch, "SHARD_SHED")
    committer = GroupCommitter(
        MemoryStore(),
        slot=1,
        epoch=None,
        on_committed=_nothing,
        on_failed=_nothing,
        max_pending_items=1,
    )
    committer.add(jobs=[_job("a")])  # not started: it stays pending
    with pytest.raises(Overloaded):
        committer.add(jobs=[_job("b")])
    assert got["SHARD_SHED"].points == [(1, {"slot": "1"})]


async def test_jobs_are_counted_once_durable_when_created_and_when_finished(monkeypatch):
    got = recording(monkeypatch, "JOBS")  # before the shard: its tally holds the metric
    store = MemoryStore()
    await store.open()
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    shards = ShardClient.in_process([shard])
    try:
        await shards.create_namespace("default", NamespaceChanges())
        for job_id in ("a", "b", "c"):
            await shards.submit("default", JobSpec(), job_id=job_id)
        await shards.submit("default", JobSpec(), job_id="a")  # the same request: not created
        await shards.complete("default", "a", Completion(JobStatus.SUCCEEDED))
        await shards.complete("default", "a", Completion(JobStatus.SUCCEEDED))  # repeated
        await shards.complete("default", "b", Completion(JobStatus.FAILED, error="boom"))
        await shards.cancel("default", "c")
        shard._job_events.flush()  # what the tally holds goes out at most a second later
    finally:
        await shard.stop()
    counted: dict[str, float] = {}
    for value, tags in got["JOBS"].points:
        assert tags["slot"] == "0"
        counted[tags["event"]] = counted.get(tags["event"], 0) + value
    assert counted == {"created": 3, "succeeded": 1, "failed": 1, "cancelled": 1}


def test_webhook_outcomes_are_counted_by_the_status_each_delivery_was_left_in(monkeypatch):
    got = recording(monkeypatch, "WEBHOOK_DELIVERIES")
    base = Delivery("d", "acme", "j", 0, "job.completed", "http://x", b"{}", 1000.0)
    statuses = [DeliveryStatus.DELIVERED] * 2 + [DeliveryStatus.PENDING, DeliveryStatus.FAILED]
    metrics.record_deliveries(replace(base, status=status) for status in statuses)
    assert sorted(got["WEBHOOK_DELIVERIES"].points, key=lambda p: p[1]["outcome"]) == [
        (2, {"outcome": "delivered"}),
        (1, {"outcome": "failed"}),
        (1, {"outcome": "retrying"}),
    ]


def test_an_overloaded_answer_is_counted_as_shed_and_other_503s_are_not(monkeypatch):
    got = recording(monkeypatch, "HTTP_SHED")
    assert errors.to_response(Overloaded("full", retry_after_s=1)).status_code == 503
    assert errors.to_response(StoreUnavailable("down")).status_code == 503
    assert got["HTTP_SHED"].points == [(1.0, {})]


def test_shard_gauges_are_tagged_with_the_slot(monkeypatch):
    got: dict[str, Recorded] = recording(monkeypatch, "PENDING_WRITES", "OUTBOX_DEPTH")
    metrics.record_shard_gauges(2, pending_writes=7, outbox_depth=4)
    assert got["PENDING_WRITES"].points == [(7, {"slot": "2"})]
    assert got["OUTBOX_DEPTH"].points == [(4, {"slot": "2"})]
