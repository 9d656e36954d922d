"""The watch hub: the readers of one job share one shard watch, each woken in order at every
update; a slow reader holds no one up; the loop ends with the last reader."""

from __future__ import annotations

import asyncio

import pytest

from actors.shard_types import Update
from actors.watch_hub import WatchHub
from storage.errors import NotFound
from storage.records import Chunk, Job
from tests.unit.fakes import WAIT_S


class FakeShard:
    """A shard's `watch` the test answers: each call waits for the next `answer`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.waiting = 0
        self.cancelled = 0
        self._answers: asyncio.Queue[Update | Exception] = asyncio.Queue()

    async def watch(
        self, namespace: str, job_id: str, revision: int, after_seq: int, timeout_s: float
    ) -> Update:
        self.calls.append((job_id, revision, after_seq))
        self.waiting += 1
        try:
            answer = await self._answers.get()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.waiting -= 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    def answer(self, update: Update | Exception) -> None:
        self._answers.put_nowait(update)


@pytest.fixture
def shard() -> FakeShard:
    return FakeShard()


@pytest.fixture
def hub(shard: FakeShard) -> WatchHub:
    return WatchHub(shard.watch, window_bytes=3)


def _job(job_id: str = "j", **changes: object) -> Job:
    return Job("acme", job_id, 0, 1000.0, 1000.0).evolve(**changes)


def _chunk(seq: int, job_id: str = "j") -> Chunk:
    return Chunk("acme", job_id, seq, seq - 1, b"%d" % seq)


def _appended(job: Job, *seqs: int) -> Update:
    """`job` with output up to the last of `seqs`, and those chunks (the shard's tail)."""
    return Update(job.evolve(output_seq=seqs[-1]), tuple(_chunk(s) for s in seqs))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_readers_of_one_job_share_one_shard_watch_and_all_get_the_update(hub, shard):
    job = _job()
    subs = [hub.subscribe(job) for _ in range(5)]
    waits = [asyncio.create_task(s.watch(job.revision, 0, WAIT_S)) for s in subs]
    await _settle()
    assert shard.waiting == 1 and hub.watches == 1 and hub.subscribers == 5

    shard.answer(_appended(job, 1, 2))
    updates = await asyncio.wait_for(asyncio.gather(*waits), WAIT_S)

    assert {(u.job.output_seq, tuple(c.seq for c in u.chunks)) for u in updates} == {(2, (1, 2))}
    await _settle()
    assert shard.calls == [("j", job.revision, 0), ("j", job.revision + 1, 2)]


async def test_each_job_has_its_own_watch(hub, shard):
    subs = [hub.subscribe(_job(name)) for name in ("a", "b", "a")]
    waits = [asyncio.create_task(s.watch(2, 0, WAIT_S)) for s in subs]
    await _settle()
    assert sorted(call[0] for call in shard.calls) == ["a", "b"] and hub.watches == 2
    for wait in waits:
        wait.cancel()


async def test_subscribers_are_woken_in_the_order_they_subscribed(hub, shard):
    job = _job()
    order: list[int] = []

    async def reader(n: int) -> None:
        with hub.subscribe(job) as sub:
            await sub.watch(job.revision, 0, WAIT_S)
            order.append(n)

    readers = [asyncio.create_task(reader(n)) for n in range(10)]
    await _settle()
    shard.answer(_appended(job, 1))
    await asyncio.wait_for(asyncio.gather(*readers), WAIT_S)
    assert order == list(range(10))


async def test_a_slow_reader_gets_no_chunks_once_the_window_passed_it_and_holds_no_one_up(
    hub, shard
):
    job = _job()
    slow, fast = hub.subscribe(job), hub.subscribe(job)
    seen = job
    for seq in range(1, 6):  # the fast reader follows every update; the slow one does not
        waiting = asyncio.create_task(fast.watch(seen.revision, seq - 1, WAIT_S))
        await _settle()
        shard.answer(_appended(seen, seq))
        update = await asyncio.wait_for(waiting, WAIT_S)
        assert [c.seq for c in update.chunks] == [seq]
        seen = update.job

    late = await slow.watch(job.revision, 0, WAIT_S)  # the window (3 bytes) kept seqs 3..5

    assert late.job == seen and late.chunks == ()  # it reads seqs 1..5 from the store
    near = await slow.watch(job.revision, 3, WAIT_S)
    assert [c.seq for c in near.chunks] == [4, 5]


async def test_a_quiet_job_times_out_with_the_job_the_reader_last_saw(hub, shard):
    job = _job()
    with hub.subscribe(job) as sub:
        update = await sub.watch(job.revision, 0, 0.01)
    assert update == Update(job)


async def test_an_answer_older_than_a_readers_job_does_not_wake_it_backwards(hub, shard):
    old, newer = _job(), _job().evolve(output_seq=3)  # a reader that read the store later
    first = hub.subscribe(old)
    first_wait = asyncio.create_task(first.watch(old.revision, 0, WAIT_S))
    await _settle()
    second = hub.subscribe(newer)
    second_wait = asyncio.create_task(second.watch(newer.revision, 3, 0.2))
    shard.answer(_appended(old, 1))  # in flight before `newer` committed

    assert (await asyncio.wait_for(first_wait, WAIT_S)).job.output_seq == 1
    assert (await asyncio.wait_for(second_wait, WAIT_S)) == Update(newer)


async def test_a_job_created_again_wakes_its_readers_with_the_new_job(hub, shard):
    job = _job()
    with hub.subscribe(job) as sub:
        waiting = asyncio.create_task(sub.watch(job.revision, 0, WAIT_S))
        await _settle()
        again = Job("acme", "j", 0, 2000.0, 2000.0)  # revision 1: lower, but created later
        shard.answer(Update(again))
        assert (await asyncio.wait_for(waiting, WAIT_S)).job == again


async def test_a_failed_shard_watch_reaches_every_waiting_reader_and_the_next_wait_retries(
    hub, shard
):
    job = _job()
    subs = [hub.subscribe(job) for _ in range(3)]
    waits = [asyncio.create_task(s.watch(job.revision, 0, WAIT_S)) for s in subs]
    await _settle()
    shard.answer(NotFound("job 'j' not found"))
    for wait in waits:
        with pytest.raises(NotFound):
            await asyncio.wait_for(wait, WAIT_S)
    assert hub.watches == 0

    again = asyncio.create_task(subs[0].watch(job.revision, 0, WAIT_S))
    await _settle()
    assert shard.waiting == 1
    shard.answer(_appended(job, 1))
    assert (await asyncio.wait_for(again, WAIT_S)).job.output_seq == 1


async def test_the_loop_ends_and_the_shard_watch_is_cancelled_when_the_last_reader_leaves(
    hub, shard
):
    job = _job()
    subs = [hub.subscribe(job) for _ in range(3)]
    waits = [asyncio.create_task(s.watch(job.revision, 0, WAIT_S)) for s in subs]
    await _settle()
    for sub, wait in zip(subs[:2], waits[:2], strict=True):
        wait.cancel()
        sub.close()
    await _settle()
    assert shard.waiting == 1 and hub.subscribers == 1  # one reader left: the watch stays

    waits[2].cancel()
    subs[2].close()
    subs[2].close()  # closing twice leaves once
    await _settle()
    assert shard.waiting == 0 and shard.cancelled == 1
    assert hub.watches == 0 and hub.subscribers == 0


async def test_a_reader_that_never_waits_starts_no_watch(hub, shard):
    with hub.subscribe(_job()):
        await _settle()
    assert shard.calls == [] and hub.subscribers == 0


async def test_a_busy_readers_quiet_timer_is_set_once_not_once_per_update(hub, shard):
    """A reader woken by update after update keeps one timer, which moves on when it finds
    the reader's deadline later; once the job is quiet for `timeout_s`, the wait ends."""
    loop = asyncio.get_running_loop()
    armed = 0
    call_at = loop.call_at

    def counting(when: float, callback, *args, **options):  # type: ignore[no-untyped-def]
        nonlocal armed
        armed += callback.__qualname__ == "Subscription._on_timer"
        return call_at(when, callback, *args, **options)

    loop.call_at = counting  # type: ignore[method-assign]
    job = _job()
    try:
        with hub.subscribe(job) as sub:
            for seq in range(1, 21):
                waiting = asyncio.create_task(sub.watch(job.revision, seq - 1, 0.2))
                await _settle()
                shard.answer(_appended(job, seq))
                job = (await asyncio.wait_for(waiting, WAIT_S)).job
                assert job.output_seq == seq
            assert armed == 1
            started = loop.time()
            quiet = await asyncio.wait_for(sub.watch(job.revision, 20, 0.2), WAIT_S)
            assert quiet == Update(job) and loop.time() - started >= 0.2
            assert armed <= 3  # the first timer found a later deadline and moved once
    finally:
        del loop.call_at
