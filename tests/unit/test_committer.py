"""The group committer: batching, durability before acknowledgement, failure and back-pressure."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from actors.committer import GroupCommitter, durable
from storage.errors import AosError, Conflict, Overloaded, StoreUnavailable, Unstorable
from storage.records import Batch, Chunk, Job
from tests.unit.fakes import WAIT_S, GatedStore


@dataclass
class Outcomes:
    committed: list[Batch] = field(default_factory=list)
    failed: list[tuple[Batch, AosError]] = field(default_factory=list)


@pytest.fixture
def store() -> GatedStore:
    return GatedStore()


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
async def make(
    store: GatedStore, outcomes: Outcomes
) -> AsyncIterator[Callable[..., GroupCommitter]]:
    """Started committers over `store`, with `options`; stopped after the test."""
    started: list[GroupCommitter] = []

    def make(**options: int) -> GroupCommitter:
        committer = GroupCommitter(
            store,
            slot=None,
            epoch=None,
            on_committed=outcomes.committed.append,
            on_failed=lambda batch, exc: outcomes.failed.append((batch, exc)),
            **options,
        )
        committer.start()
        started.append(committer)
        return committer

    yield make
    if store.gate is not None:
        store.gate.set()
    for committer in started:
        await committer.stop()


@pytest.fixture
async def committer(make: Callable[..., GroupCommitter]) -> GroupCommitter:
    return make()


MARK = "unstorable-title-7f3a"


def _job(job_id: str, revision: int = 1, *, title: str | None = None) -> Job:
    return Job("acme", job_id, 0, 1000.0, 1000.0, title=title, revision=revision)


async def _done(*futures: Awaitable[None]) -> None:
    """Wait for `futures`, failing the test rather than hanging if one never resolves."""
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)


async def _hold(store: GatedStore, committer: GroupCommitter) -> asyncio.Future[None]:
    """Put one commit in flight and hold it at the store's gate."""
    store.gate = asyncio.Event()
    store.arrived.clear()
    future = committer.add(jobs=[_job("first")])
    await asyncio.wait_for(store.arrived.wait(), WAIT_S)
    return future


async def test_concurrent_adds_wait_for_the_commit_in_flight_and_share_the_next(store, committer):
    first = await _hold(store, committer)
    later = [committer.add(jobs=[_job(f"j{i}")]) for i in range(3)]
    store.gate.set()
    await _done(first, *later)
    assert [[j.job_id for j in b.jobs] for b in store.commits] == [["first"], ["j0", "j1", "j2"]]
    assert committer.batch_sizes == {1: 1, 3: 1}


async def test_callers_are_told_only_after_the_store_commit(store, committer, outcomes):
    future = await _hold(store, committer)
    await asyncio.sleep(0)
    assert not future.done() and await store.get_job("acme", "first") is None
    store.gate.set()
    await _done(future)
    assert await store.get_job("acme", "first") is not None
    assert [b.jobs[0].job_id for b in outcomes.committed] == ["first"]


async def test_failed_commit_fails_every_later_batch(store, make, outcomes):
    committer = make(max_batch_items=1)
    first = await _hold(store, committer)
    queued = [committer.add(jobs=[_job(f"j{i}")]) for i in range(2)]  # two more batches
    store.fail_commits = True
    store.gate.set()
    for future in (first, *queued):
        with pytest.raises(StoreUnavailable):
            await _done(durable(future))
    assert store.commits == [] and len(outcomes.failed) == 3
    assert committer.pending_items == 0
    store.fail_commits = False
    await _done(committer.add(jobs=[_job("after")]))  # the flusher lives on
    assert [b.jobs[0].job_id for b in store.commits] == ["after"]


async def test_a_backend_bug_fails_the_write_as_unstorable_without_its_text(
    store, committer, outcomes
):
    async def broken(batch: Batch) -> None:
        raise RuntimeError("driver bug")

    store.commit = broken  # type: ignore[method-assign]
    with pytest.raises(Unstorable) as refused:
        await _done(committer.add(jobs=[_job("a")]))
    assert "driver bug" not in str(refused.value)
    assert outcomes.failed[0][1] is refused.value


@pytest.mark.parametrize("bad", [(0,), (37,), (99,), (3, 50, 51, 98), tuple(range(0, 100, 7))])
async def test_only_the_adds_the_store_refuses_fail_and_the_rest_commit_in_order(
    store, committer, outcomes, bad
):
    store.unstorable = MARK
    first = await _hold(store, committer)
    adds = [
        committer.add(jobs=[_job(f"j{i}", title=MARK if i in bad else f"t{i}")]) for i in range(100)
    ]
    store.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*adds, return_exceptions=True), WAIT_S)
    await _done(first)
    for i, result in enumerate(results):
        if i in bad:
            assert isinstance(result, Unstorable), result
            assert MARK not in str(result) and "cannot store" not in str(result)
        else:
            assert result is None
    good = [f"j{i}" for i in range(100) if i not in bad]
    assert [job.job_id for batch in store.commits for job in batch.jobs] == ["first", *good]
    for job_id in good:
        assert (await store.get_job("acme", job_id)).title == f"t{job_id[1:]}"
    assert [[j.job_id for j in b.jobs] for b, _ in outcomes.failed] == [[f"j{i}"] for i in bad]
    assert sum(n * count for n, count in committer.batch_sizes.items()) == 1 + len(good)
    assert committer.pending_items == 0


async def test_finding_one_refused_add_among_n_takes_about_2_log2_n_commits(store, committer):
    n = 1000
    store.unstorable = MARK
    await _hold(store, committer)
    adds = [committer.add(jobs=[_job(f"j{i}", title=MARK if i == 617 else None)]) for i in range(n)]
    store.gate.set()
    await asyncio.wait_for(asyncio.gather(*adds, return_exceptions=True), WAIT_S)
    # The whole batch, then two halves at each of ceil(log2 n) levels (the held one aside).
    assert store.attempts - 1 <= 1 + 2 * math.ceil(math.log2(n))
    assert len(store.commits) - 1 <= math.ceil(math.log2(n))


async def test_adds_built_on_a_refused_add_of_the_same_job_fail_with_it(store, make, outcomes):
    """Committing them alone could leave a gap (a chunk whose predecessor never was)."""
    store.unstorable = MARK
    committer = make(max_batch_items=4)
    first = await _hold(store, committer)
    before = committer.add(jobs=[_job("j", 1)])
    refused = committer.add(jobs=[_job("j", 2, title=MARK)])
    built_on = committer.add(chunks=[Chunk("acme", "j", 1, 0, b"a")])
    other = committer.add(jobs=[_job("k")])
    later = committer.add(chunks=[Chunk("acme", "j", 2, 1, b"b")])  # the next batch
    unrelated = committer.add(jobs=[_job("z")])
    store.gate.set()
    await _done(first, before, other, unrelated)
    with pytest.raises(Unstorable):
        await _done(refused)
    for future in (built_on, later):
        with pytest.raises(Conflict):
            await _done(future)
    assert (await store.get_job("acme", "j")).revision == 1
    assert await store.read_output("acme", "j") == []
    assert await store.get_job("acme", "k") and await store.get_job("acme", "z")
    assert committer.pending_items == 0


async def test_an_unavailable_store_while_isolating_fails_what_is_not_committed_yet(
    store, make, outcomes
):
    store.unstorable = MARK
    committer = make(max_batch_items=16)
    first = await _hold(store, committer)
    batch = [
        committer.add(jobs=[_job(f"j{i}", title=MARK if i == 11 else None)]) for i in range(16)
    ]
    later = [committer.add(jobs=[_job(f"later{i}")]) for i in range(3)]  # the next batch
    # Commits: the held one, the batch (refused), its left half; then the store is gone.
    store.fail_after = 3
    store.gate.set()
    await _done(first, *batch[:8])
    for future in (*batch[8:], *later):
        with pytest.raises(StoreUnavailable):
            await _done(durable(future))
    committed = [j.job_id for b in store.commits for j in b.jobs]
    assert committed == ["first", *(f"j{i}" for i in range(8))]
    assert [type(exc) for _, exc in outcomes.failed] == [StoreUnavailable, StoreUnavailable]
    assert committer.pending_items == 0
    store.fail_after = None
    await _done(committer.add(jobs=[_job("after")]))  # the flusher lives on


async def test_a_full_buffer_refuses_with_overloaded_until_it_drains(store, make):
    committer = make(max_pending_items=2)
    first = await _hold(store, committer)
    second = committer.add(jobs=[_job("second")])
    with pytest.raises(Overloaded) as refused:
        committer.add(jobs=[_job("third")])
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
    store.gate.set()
    await _done(first, second)
    await committer.add(jobs=[_job("third")])


async def test_output_over_the_byte_budget_is_refused_with_overloaded(store, make):
    committer = make(max_pending_bytes=10)
    first = await _hold(store, committer)
    committer.add(chunks=[Chunk("acme", "first", 1, 0, b"12345678")])
    with pytest.raises(Overloaded):
        committer.add(chunks=[Chunk("acme", "first", 2, 8, b"12345678")])
    store.gate.set()
    await _done(committer.barrier())
    await committer.add(chunks=[Chunk("acme", "first", 2, 8, b"12345678")])
    assert first.done()


async def test_a_job_deleted_and_written_again_goes_into_the_next_batch(store, committer):
    await committer.add(jobs=[_job("j")])
    first = await _hold(store, committer)
    deleted = committer.add(deleted=[("acme", "j")])
    written = committer.add(jobs=[_job("j", revision=5)])
    store.gate.set()
    await _done(first, deleted, written)
    assert store.commits[-2].deleted == [("acme", "j")] and store.commits[-2].jobs == []
    assert (await store.get_job("acme", "j")).revision == 5


async def test_a_batch_writes_only_the_newest_record_of_each_job(store, committer):
    first = await _hold(store, committer)
    later = [committer.add(jobs=[_job("j", revision=r)]) for r in (1, 2, 3)]
    store.gate.set()
    await _done(first, *later)
    assert [j.revision for j in store.commits[-1].jobs] == [3]


async def test_a_cancelled_waiter_does_not_cancel_the_batch_for_others(store, committer):
    await _hold(store, committer)
    shared = committer.add(jobs=[_job("shared")])
    leaving = asyncio.create_task(durable(shared))
    staying = asyncio.create_task(durable(shared))
    await asyncio.sleep(0)
    leaving.cancel()
    store.gate.set()
    await _done(staying)
    assert leaving.cancelled() and not shared.cancelled()
    assert await store.get_job("acme", "shared") is not None


async def test_barrier_waits_for_everything_queued_so_far(store, make):
    committer = make(max_batch_items=1)
    await _hold(store, committer)
    queued = [committer.add(jobs=[_job(f"j{i}")]) for i in range(3)]
    barrier = asyncio.create_task(committer.barrier())
    await asyncio.sleep(0)
    assert not barrier.done()
    store.gate.set()
    await _done(barrier)
    assert all(f.done() for f in queued) and len(store.commits) == 4
    await asyncio.wait_for(committer.barrier(), 1)  # nothing queued: returns at once


async def test_barrier_waits_for_the_batch_in_flight_too(store, committer):
    first = await _hold(store, committer)  # popped from the queue, committing
    barrier = asyncio.create_task(committer.barrier())
    await asyncio.sleep(0)
    assert not barrier.done()
    store.gate.set()
    await _done(barrier)
    assert first.done()


async def test_stop_commits_what_is_pending_first(store, make):
    committer = make()
    await _hold(store, committer)
    pending = committer.add(jobs=[_job("pending")])
    stopping = asyncio.create_task(committer.stop())
    store.gate.set()
    await _done(stopping)
    assert pending.done() and await store.get_job("acme", "pending") is not None


async def test_a_write_that_would_wait_too_long_to_commit_is_refused_at_once(store, make):
    """Past one batch queued, an add that would wait longer than `max_commit_wait_s` at the
    store's pace is refused with `Overloaded`; once the queue drains it is taken again."""
    committer = make(max_batch_items=2, max_commit_wait_s=5)
    committer.pace.committed(1, 10.0)  # the store managed 0.1 writes/s lately
    first = await _hold(store, committer)
    second = committer.add(jobs=[_job("second")])  # a batch's worth queued: 20 s of commits
    with pytest.raises(Overloaded) as refused:
        committer.add(jobs=[_job("third")])
    assert "s of commits" in refused.value.message
    assert refused.value.retry_after_s in {1.0, 2.0, 3.0}
    store.gate.set()
    await _done(first, second)
    await _done(committer.add(jobs=[_job("third")]))


async def test_the_commit_wait_counts_once_a_pace_is_known(store, make):
    committer = make(max_batch_items=3, max_commit_wait_s=5)
    first = await _hold(store, committer)
    queued = [committer.add(jobs=[_job(f"j{i}")]) for i in range(5)]  # no commit seen yet
    store.gate.set()
    await _done(first, *queued)
    assert committer.pace.wait_s(1) is not None  # the commits taught it the store's pace


async def test_the_commit_wait_counts_only_past_one_batch_queued(store, make):
    """Under a batch queued every add is taken, however slow the pace learnt at light load:
    one batch is how the committer learns the store's pace under load."""
    committer = make(max_batch_items=3, max_commit_wait_s=5)
    committer.pace.committed(1, 10.0)
    first = await _hold(store, committer)
    taken = [committer.add(jobs=[_job(f"j{i}")]) for i in range(2)]  # 1, then 2 queued
    with pytest.raises(Overloaded):
        committer.add(jobs=[_job("refused")])  # 3 queued: 30 s at 0.1 writes/s
    store.gate.set()
    await _done(first, *taken)
