"""The Python client's batch submit (`Client.submit_many`) over an in-process shard, no Ray: the
HTTP batch's rules, from Python (tests/e2e/test_batch.py runs it against the real shards)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.limits import MAX_BATCH_JOBS
from actors.namespace_settings import NamespaceChanges
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from cluster.blocking import run
from cluster.client import Client
from storage.errors import BadRequest, Conflict, Invalid, NotFound, TooLarge
from storage.memory import MemoryStore


@pytest.fixture
def client() -> Iterator[Client]:
    """A client over one shard holding namespaces acme and globex, on the client's loop."""

    async def start() -> Shard:
        store = MemoryStore()
        await store.open()
        shard = Shard(store, ShardConfig(slot=0, num_shards=1))
        await shard.start()
        for name in ("acme", "globex"):
            await shard.namespaces.create(name, NamespaceChanges(), actor="test")
        return shard

    shard = run(start())
    yield Client(ShardClient.in_process([shard]))
    run(shard.stop())


def test_submit_many_answers_each_job_in_order(client):
    results = client.submit_many(
        None,
        [
            {"jobId": "j1", "namespace": "acme", "metadata": {"title": "a", "tags": ["x"]}},
            {"jobId": "j2", "namespace": "globex", "outputFormat": "binary"},
            {"namespace": "acme", "metadata": {"title": "no id"}},
        ],
    )
    assert [(r.job.namespace, r.created) for r in results if r.job] == [
        ("acme", True),
        ("globex", True),
        ("acme", True),
    ]
    assert results[0].job.tags == ("x",) and results[1].job.output_format.value == "binary"
    assert results[2].job.job_id and results[2].job.title == "no id"
    assert client.status("globex", "j2") == results[1].job


def test_submit_many_is_idempotent_per_job_and_each_error_is_its_own(client):
    client.submit_many("acme", [{"jobId": "j1", "metadata": {"title": "a"}}])
    results = client.submit_many(
        "acme",
        [
            {"jobId": "j1", "metadata": {"title": "a"}},
            {"jobId": "j1", "metadata": {"title": "b"}},
            {"jobId": "bad/id"},
            {"jobId": "j2", "surprise": True},
            {"jobId": "j3", "namespace": "globex"},  # not the namespace given
            {"jobId": "j4", "namespace": "nobody"},
            "not a job",
            {"jobId": "j5"},
        ],
    )
    outcomes = [(type(r.error) if r.error else r.created) for r in results]
    assert outcomes == [False, Conflict, Invalid, Invalid, BadRequest, BadRequest, Invalid, True]
    assert str(results[6].error) == "a job must be a JSON object"
    with pytest.raises(NotFound):
        client.status("acme", "j2")


def test_submit_many_without_a_namespace_needs_each_jobs_own(client):
    results = client.submit_many(None, [{"jobId": "j1", "namespace": "acme"}, {"jobId": "j2"}])
    assert results[0].created and isinstance(results[1].error, BadRequest)
    unknown = client.submit_many(None, [{"jobId": "j1", "namespace": "nobody"}])
    assert isinstance(unknown[0].error, NotFound)


def test_submit_many_refuses_more_than_the_most_jobs_and_submits_none(client):
    with pytest.raises(TooLarge):
        client.submit_many("acme", [{"jobId": f"j{i}"} for i in range(MAX_BATCH_JOBS + 1)])
    with pytest.raises(NotFound):
        client.status("acme", "j0")
