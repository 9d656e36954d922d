"""Data a store cannot hold: refused as `Unstorable`, for that write alone.

The API edge refuses such values first; these tests prove the defence behind it, with
records built directly: the store says `Unstorable` without quoting the data, the group
committer fails only the write that carried it, and a shard forgets only its job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from actors.commands import Completion, JobSpec
from actors.committer import GroupCommitter
from actors.shard import Shard
from storage.base import Store
from storage.errors import Conflict, Unstorable
from storage.records import Batch, Job, JobStatus, Namespace
from tests.backends import BACKENDS, PERSISTENT, TestBackend

NOW = 1_700_000_000.0
GENERIC = "the store could not hold this write's data"


@pytest.fixture(params=PERSISTENT)
def backend(request: pytest.FixtureRequest) -> TestBackend:
    """The persistent stores only (the in-memory store holds any value)."""
    chosen = BACKENDS[request.param]
    chosen.need()
    return chosen


def job(job_id: str, namespace: str = "b", **changes: object) -> Job:
    fields: dict[str, object] = {"slot": 0, "created_at": NOW, "updated_at": NOW, **changes}
    return Job(namespace=namespace, job_id=job_id, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    name: str
    batch: Batch
    refused_by: frozenset[str]


CASES = [
    Case(
        "lone surrogate in a title",
        Batch(jobs=[job("x", "a", title="\ud800")]),
        frozenset({"sqlite", "postgres", "mysql", "mongodb", "dynamodb", "cassandra"}),
    ),
    Case("NUL in a title", Batch(jobs=[job("x", "a", title="a\x00b")]), frozenset({"postgres"})),
    Case(
        "NUL in a namespace's JSON config",
        Batch(namespaces=[Namespace("a", NOW, {"note": "a\x00b"})]),
        frozenset({"postgres"}),
    ),
    Case(
        "lone surrogate in a namespace's JSON config",
        Batch(namespaces=[Namespace("a", NOW, {"note": "\ud800"})]),
        frozenset({"postgres", "mysql", "dynamodb", "cassandra"}),
    ),
    Case(
        "an int over 64 bits",
        Batch(jobs=[job("x", "a", output_size=2**63)]),
        frozenset({"sqlite", "postgres", "mysql", "mongodb"}),
    ),
    Case(
        # Over DynamoDB's 400 KB item and MySQL's 64 KB TEXT (the service allows 8,192
        # characters of description).
        "a job record over DynamoDB's 400 KB item",
        Batch(jobs=[job("x", "a", description="d" * 450_000)]),
        frozenset({"dynamodb", "mysql"}),
    ),
]


async def _holds(store: Store, batch: Batch) -> bool:
    """Whether `store` holds what `batch` wrote, as written."""
    for written in batch.jobs:
        if await store.get_job(written.namespace, written.job_id) != written:
            return False
    for namespace in batch.namespaces:
        if await store.get_namespace(namespace.name) != namespace:
            return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_value_the_store_cannot_hold_is_unstorable_and_never_quoted(
    store: Store, backend: TestBackend, case: Case
) -> None:
    if backend.name not in case.refused_by:
        await store.commit(case.batch)  # what a store can hold, it holds as it is
        assert await _holds(store, case.batch)
        return
    with pytest.raises(Unstorable) as refused:
        await store.commit(case.batch)
    assert refused.value.message == GENERIC
    assert refused.value.__cause__ is not None  # translated once, the cause kept for the log
    await store.ping()  # the store itself is fine
    await store.commit(Batch(jobs=[job("after")]))
    assert await store.get_job("b", "after") is not None
    assert not await _holds(store, case.batch)


@pytest.fixture
async def committer(store: Store) -> AsyncIterator[GroupCommitter]:
    epoch = await store.acquire_shard(0, "test")
    committer = GroupCommitter(
        store, slot=0, epoch=epoch, on_committed=lambda batch: None, on_failed=lambda b, e: None
    )
    committer.start()
    yield committer
    await committer.stop()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_one_unstorable_write_among_100_concurrent_fails_alone(
    store: Store, committer: GroupCommitter, backend: TestBackend, case: Case
) -> None:
    good = [job(f"j{i:03}", "b", title=f"title {i}") for i in range(100)]
    futures = [committer.add(jobs=[j]) for j in good[:50]]
    bad = committer.add(jobs=case.batch.jobs, namespaces=case.batch.namespaces)
    futures += [committer.add(jobs=[j]) for j in good[50:]]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)
    assert results == [None] * 100
    if backend.name in case.refused_by:
        with pytest.raises(Unstorable) as refused:
            await asyncio.wait_for(bad, 30)
        assert refused.value.message == GENERIC
    else:
        await asyncio.wait_for(bad, 30)
    for written in good:
        assert await store.get_job("b", written.job_id) == written
    assert await _holds(store, case.batch) == (backend.name not in case.refused_by)


def unstorable_completion() -> Completion:
    """A failure text the store cannot hold, as if it had slipped past the edge's checks."""
    completion = Completion(status=JobStatus.FAILED, error="broken")
    object.__setattr__(completion, "error", "\ud800")
    return completion


async def _loaded_jobs(shard: Shard) -> int:
    jobs: int = (await shard.stats())["jobsLoaded"]
    return jobs


async def test_a_shard_forgets_only_the_job_whose_write_was_refused(
    shard: Shard, store: Store
) -> None:
    await shard.submit("acme", job_id="keep", spec=JobSpec(title="fine"))
    await shard.submit("globex", job_id="other", spec=JobSpec(title="fine"))
    before = dict((await shard.stats())["batchSizes"])
    # One batch (nothing here waits before its write is queued): the refused completion
    # comes after a committed append of the same job and among writes of another one.
    results = await asyncio.gather(
        shard.append("acme", job_id="keep", chunks=[b"kept "]),
        shard.complete("acme", job_id="keep", completion=unstorable_completion()),
        *(shard.append("globex", job_id="other", chunks=[b"%d" % i]) for i in range(3)),
        return_exceptions=True,
    )
    after = (await shard.stats())["batchSizes"]
    assert max(n for n, count in after.items() if count > before.get(n, 0)) > 1  # one batch
    assert isinstance(results[1], Unstorable) and results[1].message == GENERIC
    assert [r for i, r in enumerate(results) if i != 1 and isinstance(r, BaseException)] == []
    assert await _loaded_jobs(shard) == 1  # "keep" is forgotten, "other" stays loaded
    kept = await shard.get("acme", job_id="keep")  # reloaded: what the store holds
    assert kept == await store.get_job("acme", "keep")
    assert (kept.status, kept.output_seq) == (JobStatus.RUNNING, 1)
    ack = await shard.append("acme", job_id="keep", chunks=[b"and more"])  # no gap, no repeat
    assert ack.seq == 2
    chunks = await store.read_output("acme", "keep")
    assert b"".join(c.data for c in chunks) == b"kept and more"
    other = await shard.get("globex", job_id="other")
    assert other == await store.get_job("globex", "other") and other.output_seq == 3


async def test_a_delete_built_on_a_refused_completion_fails_too(shard: Shard, store: Store) -> None:
    await shard.submit("acme", job_id="j", spec=JobSpec(title="fine"))
    refused, delete = await asyncio.gather(
        shard.complete("acme", job_id="j", completion=unstorable_completion()),
        shard.delete("acme", job_id="j"),  # allowed: the completion made it terminal
        return_exceptions=True,
    )
    assert isinstance(refused, Unstorable) and isinstance(delete, Conflict)
    stored = await store.get_job("acme", "j")
    assert stored is not None and stored.status is JobStatus.RUNNING
    assert await shard.get("acme", job_id="j") == stored
