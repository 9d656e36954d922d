"""The Cassandra store's own guarantees, on a real server: the durable setting checked at
open, an unreachable server, and the staged commit (storage/staged.py) interrupted at
each of its steps, larger than one logged batch, and raced by a stale owner."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionBusy

from storage import cassandra_schema as cql
from storage.cassandra import INLINE_BYTES, CassandraStore
from storage.cassandra_driver import durable_sync, location, run
from storage.cassandra_rows import TTL_GRACE_S, Unit
from storage.errors import Fenced, StoreUnavailable
from storage.records import Batch, Chunk, Job, JobQuery, JobStatus
from tests.backends import BACKENDS

MiB = 1024 * 1024
NOW = time.time()


@pytest.fixture
async def url(session_url: Callable[[str], str]) -> AsyncIterator[str]:
    """The session's keyspace, emptied."""
    backend = BACKENDS["cassandra"]
    backend.need()
    url = session_url("cassandra")
    store = CassandraStore(url)
    await store.open()
    await backend.empty(store, url)
    await store.close()
    yield url


async def opened(store: CassandraStore) -> CassandraStore:
    await store.open()
    return store


def job(job_id: str, **changes: Any) -> Job:
    return Job("acme", job_id, 0, NOW, NOW, **changes)


def chunks(job_id: str, count: int, size: int) -> list[Chunk]:
    return [
        Chunk("acme", job_id, seq, (seq - 1) * size, os.urandom(size))
        for seq in range(1, count + 1)
    ]


class Interrupted(Exception):
    """Stands for a process killed at that point."""


# -- durable setting, unreachable server ---------------------------------------------------------


def test_only_a_synced_commit_log_is_durable() -> None:
    durable_sync("h:9042/ks", "batch")
    durable_sync("h:9042/ks", "group")
    for value in ("periodic", None):
        with pytest.raises(StoreUnavailable, match=f"commitlog_sync={value}"):
            durable_sync("h:9042/ks", value)


async def test_open_refuses_a_node_whose_commit_log_is_not_synced(url: str) -> None:
    class Periodic(CassandraStore):
        # A real setting of the node whose value is not batch nor group ("0ms").
        durable_query = cql.COMMITLOG_SYNC.replace("'commitlog_sync'", "'commitlog_sync_period'")

    with pytest.raises(StoreUnavailable, match="commitlog_sync=0ms"):
        await Periodic(url).open()
    store = await opened(CassandraStore(url))  # the test server's own setting is batch
    await store.close()


async def test_an_unreachable_server_is_unavailable_quickly_and_never_quoted(
    unused_tcp_port: int,
) -> None:
    url = f"cassandra://admin:s3cret@127.0.0.1:{unused_tcp_port}/aos"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        await CassandraStore(url).open()
    assert time.monotonic() - started < 15
    assert raised.value.__cause__ is not None
    where = f"cassandra 127.0.0.1:{unused_tcp_port}/aos"
    assert raised.value.message == f"the store ({where}) is unavailable; retry shortly"


# -- staged commits ------------------------------------------------------------------------------


class StopsApplying(CassandraStore):
    """Dies in `_apply` after `writes` of its units went out (one at a time)."""

    def __init__(self, url: str, writes: int) -> None:
        super().__init__(url)
        self.writes_left = writes

    async def _write_all(self, units: list[Unit]) -> None:
        if units and units[0][0][0] == "STAGE":  # staging, before the commit's record
            await super()._write_all(units)
            return
        for unit in units:
            if self.writes_left == 0:
                raise Interrupted()
            self.writes_left -= 1
            await super()._write_all([unit])


async def test_a_commit_interrupted_after_its_record_is_whole_once_the_shard_is_taken(
    url: str,
) -> None:
    crashing = await opened(StopsApplying(url, writes=2))
    epoch = await crashing.acquire_shard(0, "old")
    done = job("j1", output_seq=3, output_size=3 * 1000)
    batch = Batch(slot=0, epoch=epoch, jobs=[done], chunks=chunks("j1", 3, 1000))
    with pytest.raises(Interrupted):
        await crashing.commit(batch)
    reader = await opened(CassandraStore(url))
    try:
        assert await reader.get_job("acme", "j1") is None  # the job last: nothing shows yet
        taker = await opened(CassandraStore(url))
        await taker.acquire_shard(0, "new")  # rolls the recorded commit forward
        assert await reader.get_job("acme", "j1") == done
        assert await reader.read_output("acme", "j1") == batch.chunks
        assert await reader.list_jobs("acme", JobQuery()) == [done]
        crashing.writes_left = -1  # as if it came back: it finishes its commit, then is fenced
        with pytest.raises(Fenced):
            await crashing.commit(Batch(slot=0, epoch=epoch, jobs=[job("late")]))
        assert await reader.get_job("acme", "j1") == done
        await taker.close()
    finally:
        await asyncio.gather(reader.close(), crashing.close())


class StopsBeforeRecording(CassandraStore):
    async def _record(self, slot: int | None, epoch: int | None, commit_id: str) -> None:
        raise Interrupted()


async def test_a_commit_interrupted_before_its_record_is_absent_and_its_parts_dropped(
    url: str,
) -> None:
    crashing = await opened(StopsBeforeRecording(url))
    epoch = await crashing.acquire_shard(0, "old")
    big = chunks("j1", 1, INLINE_BYTES * 4)  # staged in rows, not inside the record
    with pytest.raises(Interrupted):
        await crashing.commit(Batch(slot=0, epoch=epoch, jobs=[job("j1")], chunks=big))
    assert await crashing._staged_ids(0) != []
    taker = await opened(CassandraStore(url))
    try:
        await taker.acquire_shard(0, "new")
        assert await taker.get_job("acme", "j1") is None
        assert await taker.read_output("acme", "j1") == []
        assert await taker._staged_ids(0) == []
    finally:
        await asyncio.gather(taker.close(), crashing.close())


async def test_a_commit_larger_than_many_logged_batches_is_all_or_nothing(url: str) -> None:
    """500 jobs and 64 MiB of chunks: several staged parts, over eight logged batches."""
    jobs = [job(f"j{i:03}", title=f"job {i}") for i in range(500)]
    output = chunks("j000", 16, 4 * MiB)
    crashing = await opened(StopsApplying(url, writes=10))
    epoch = await crashing.acquire_shard(0, "old")
    with pytest.raises(Interrupted):
        await crashing.commit(Batch(slot=0, epoch=epoch, jobs=jobs, chunks=output))
    reader = await opened(CassandraStore(url))
    try:
        assert await reader.get_jobs("acme", [j.job_id for j in jobs]) == []
        taker = await opened(CassandraStore(url))
        await taker.acquire_shard(0, "new")
        found = await reader.get_jobs("acme", [j.job_id for j in jobs])
        assert sorted(found, key=lambda j: j.job_id) == jobs
        assert await reader.read_output("acme", "j000") == output
        assert await taker._staged_ids(0) == []
        await taker.close()
    finally:
        await asyncio.gather(reader.close(), crashing.close())


class Stalls(CassandraStore):
    """Records its commits, then waits for `go` before applying them."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.recorded = asyncio.Event()
        self.go = asyncio.Event()

    async def _apply(self, batch: Batch, commit_id: str) -> None:
        self.recorded.set()
        await self.go.wait()
        await super()._apply(batch, commit_id)


async def test_a_stale_owners_late_apply_cannot_overwrite_a_newer_epoch(url: str) -> None:
    stale = await opened(Stalls(url))
    epoch = await stale.acquire_shard(0, "old")
    first = job("j1", progress=0.25)
    stale.go.set()
    await stale.commit(Batch(slot=0, epoch=epoch, jobs=[first]))
    stale.go.clear()
    late = first.evolve(progress=0.5, tags=("stale",))
    pending = asyncio.create_task(stale.commit(Batch(slot=0, epoch=epoch, jobs=[late])))
    await stale.recorded.wait()
    taker = await opened(CassandraStore(url))
    try:
        new_epoch = await taker.acquire_shard(0, "new")  # rolls `late` forward
        assert await taker.get_job("acme", "j1") == late
        newest = late.evolve(progress=1.0, status=JobStatus.SUCCEEDED, tags=("new",))
        await taker.commit(Batch(slot=0, epoch=new_epoch, jobs=[newest]))
        stale.go.set()
        await pending  # its apply runs now, at its own (older) stamp
        assert await taker.get_job("acme", "j1") == newest
        assert await taker.list_jobs("acme", JobQuery()) == [newest]
        assert await taker.load_shard(0) == []
    finally:
        await asyncio.gather(taker.close(), stale.close())


async def test_a_finished_jobs_rows_carry_a_ttl_past_its_expiry(url: str) -> None:
    store = await opened(CassandraStore(url))
    try:
        expires = time.time() + 3600
        done = job("done", status=JobStatus.SUCCEEDED, completed_at=NOW, expires_at=expires)
        await store.commit(Batch(jobs=[done, job("running")]))
        keyspace = location(url).keyspace
        rows = (
            BACKENDS["cassandra"]
            .driver()
            .execute(
                f"SELECT job_id, TTL(record) FROM {keyspace}.jobs WHERE namespace = 'acme'"
                " AND job_id IN ('done', 'running')"
            )
        )
        ttls = dict(list(rows))
        assert ttls["running"] is None
        assert abs(ttls["done"] - (3600 + TTL_GRACE_S)) < 60
    finally:
        await store.close()


async def test_a_request_the_driver_refuses_as_busy_is_sent_again() -> None:
    """The driver refuses a request unsent while its socket is full (behind a large batch);
    `run` sends it again shortly, and raises any other failure at once."""

    class Answer:
        def __init__(self, outcome: Any) -> None:
            self.outcome = outcome

        def add_callbacks(self, ok: Any, failed: Any) -> None:
            (failed if isinstance(self.outcome, BaseException) else ok)(self.outcome)

    class Session:
        def __init__(self, failure: BaseException) -> None:
            self.failure, self.calls = failure, 0

        def execute_async(self, statement: Any, params: Any) -> Answer:
            self.calls += 1
            return Answer(self.failure if self.calls < 3 else [(1,)])

    busy = Session(NoHostAvailable("busy", {"h": ConnectionBusy("overloaded")}))
    assert await run(busy, "SELECT") == [(1,)]
    assert busy.calls == 3
    down = Session(NoHostAvailable("down", {"h": OSError("refused")}))
    with pytest.raises(NoHostAvailable):
        await run(down, "SELECT")
    assert down.calls == 1
