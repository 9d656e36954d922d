"""The MongoDB store beyond the shared contract: its durable setting, an unreachable server,
and the staged commit (storage/staged.py) on a real MongoDB-protocol server (FerretDB in
`make services`): interrupted before or after its record, larger than any one write, and
a stale owner's late apply."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, WriteConcern

from storage.errors import StoreUnavailable, Unstorable
from storage.mongodb import MongoStore
from storage.mongodb_docs import JOBS, LEASES, STAGED, Doc, chunk_docs, chunks_of
from storage.records import Batch, Chunk, Delivery, DeliveryStatus, Job, JobQuery
from tests.backends import BACKENDS

NOW = 1_700_000_000.25
MiB = 1024 * 1024


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A database of the test server nobody has opened yet."""
    backend = BACKENDS["mongodb"]
    backend.need()
    with backend.fresh(tmp_path) as fresh:
        yield fresh


@pytest.fixture
async def raw(url: str) -> AsyncIterator[Any]:
    """The database behind the store's back."""
    async with AsyncMongoClient(url) as client:
        yield client.get_default_database()


async def opened(url: str, cls: type[MongoStore] = MongoStore) -> MongoStore:
    store = cls(url)
    await store.open()
    return store


def job(job_id: str, **changes: Any) -> Job:
    return Job("acme", job_id, 0, NOW, NOW, **changes)


def delivery(delivery_id: str, job_id: str, **changes: Any) -> Delivery:
    fields = {"slot": 0, "event_type": "job.completed", "url": "https://h.example/", **changes}
    return Delivery(delivery_id, "acme", job_id, payload=b"{}", created_at=NOW, **fields)


def big_batch(epoch: int) -> Batch:
    """3,000 jobs and 64 MiB of chunks: far more than one document, one insert or one
    message (48 MB) holds. One chunk does not compress (stored as two documents); the
    others do, which spares the test server (FerretDB writes about 10 MB/s of blobs)."""
    text = b"2026-11-30T01:02:03Z INFO step=%08d loss=0.25\n"
    data = [
        os.urandom(16 * MiB),
        *(b"".join(text % n for n in range(16 * MiB // 41))[: 16 * MiB] for _ in range(3)),
    ]
    chunks = [Chunk("acme", "j0", n + 1, n * 16 * MiB, part) for n, part in enumerate(data)]
    jobs = [job(f"j{n}", output_seq=4 if n == 0 else 0) for n in range(3000)]
    return Batch(slot=0, epoch=epoch, jobs=jobs, chunks=chunks, deliveries=[delivery("d1", "j0")])


class Interrupted(Exception):
    """The process stops here (a crash, as the store sees it)."""


class DiesBeforeJobs(MongoStore):
    """Dies half-way through applying: after the chunks and deliveries, before the jobs."""

    async def _upsert(self, name: str, docs: list[Doc], fence: Any) -> None:
        if name == JOBS:
            raise Interrupted
        await super()._upsert(name, docs, fence)


class DiesBeforeRecord(MongoStore):
    """Dies after staging, before the commit record."""

    async def _record(self, slot: int | None, epoch: int | None, commit_id: str) -> None:
        raise Interrupted


async def leftovers(raw: Any) -> tuple[int, list[str]]:
    """Staged parts left, and the commit ids slot 0's lease still records."""
    lease = await raw[LEASES].find_one({"_id": 0})
    return await raw[STAGED].count_documents({}), [] if lease is None else lease.get("commits", [])


# -- durability and reachability ------------------------------------------------------------


@pytest.mark.parametrize("option", ["w=0", "w=1", "w=2", "journal=false"])
async def test_a_url_asking_for_less_than_majority_journaled_is_refused(option: str) -> None:
    store = MongoStore(f"mongodb://aos:s3cret@127.0.0.1:1/aos?{option}")
    with pytest.raises(StoreUnavailable, match=option) as raised:
        await store.open()
    assert "s3cret" not in raised.value.message


async def test_every_write_carries_w_majority_and_j_true(url: str) -> None:
    store = await opened(url + "?w=majority")
    try:
        assert store._client is not None
        majority = WriteConcern(w="majority", j=True)
        assert store._client.write_concern == majority
        assert store._col(JOBS).write_concern == majority
    finally:
        await store.close()


async def test_open_says_what_the_server_is(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "storage.mongodb")
    await (await opened(url)).close()
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "FerretDB" in said or "replica set" in said or "standalone" in said, said


async def test_an_unreachable_server_is_unavailable_within_10_s(unused_tcp_port: int) -> None:
    where = f"127.0.0.1:{unused_tcp_port}/aos"
    store = MongoStore(f"mongodb://aos:s3cret@{where}")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        await store.open()
    assert time.monotonic() - started < 10
    # Which store, never its password nor the driver's text (logged, not sent).
    assert raised.value.message == f"the store (mongodb {where}) is unavailable; retry shortly"
    with pytest.raises(StoreUnavailable):
        await store.ping()  # not open: still nothing else


async def test_data_bson_cannot_hold_is_refused_before_anything_is_staged(
    url: str, raw: Any
) -> None:
    store = await opened(url)
    try:
        epoch = await store.acquire_shard(0, "me")
        for bad in (
            job("j1", description="x" * (17 * MiB)),
            job("nul\0id"),
            job("j1", ttl_s=2**64),
        ):
            with pytest.raises(Unstorable) as refused:
                await store.commit(Batch(slot=0, epoch=epoch, jobs=[bad]))
            assert refused.value.message == "the store could not hold this write's data"
        assert await leftovers(raw) == (0, [])
        await store.commit(Batch(slot=0, epoch=epoch, jobs=[job("fine")]))
        assert await store.get_job("acme", "fine") == job("fine")
    finally:
        await store.close()


# -- the staged commit ----------------------------------------------------------------------


async def test_a_commit_interrupted_after_its_record_is_whole_once_the_shard_is_taken(
    url: str, raw: Any
) -> None:
    dying = await opened(url, DiesBeforeJobs)
    epoch = await dying.acquire_shard(0, "old")
    chunk = Chunk("acme", "j1", 1, 0, b"out")
    batch = Batch(
        slot=0,
        epoch=epoch,
        jobs=[job("j1", output_seq=1)],
        chunks=[chunk],
        deliveries=[delivery("d1", "j1")],
    )
    with pytest.raises(Interrupted):
        await dying.commit(batch)
    with pytest.raises(Interrupted):  # this store finishes the commit before it reads
        await dying.get_job("acme", "j1")
    await dying.close()
    reader = await opened(url)
    assert await reader.get_job("acme", "j1") is None  # half-way: chunks, but no job yet
    await reader.close()
    assert (await leftovers(raw))[1] != []  # recorded: it is committed
    new = await opened(url)
    try:
        assert await new.acquire_shard(0, "new") == epoch + 1
        assert await new.get_job("acme", "j1") == job("j1", output_seq=1)
        assert await new.read_output("acme", "j1") == [chunk]
        assert await new.list_deliveries("acme", "j1") == [delivery("d1", "j1")]
        assert await leftovers(raw) == (0, [])
    finally:
        await new.close()


async def test_a_commit_interrupted_before_its_record_is_absent_and_its_parts_dropped(
    url: str, raw: Any
) -> None:
    dying = await opened(url, DiesBeforeRecord)
    epoch = await dying.acquire_shard(0, "old")
    with pytest.raises(Interrupted):
        await dying.commit(Batch(slot=0, epoch=epoch, jobs=[job("j1")]))
    assert (await leftovers(raw))[0] > 0  # staged, not recorded
    await dying.close()
    new = await opened(url)
    try:
        await new.acquire_shard(0, "new")
        assert await new.get_job("acme", "j1") is None
        assert await leftovers(raw) == (0, [])
    finally:
        await new.close()


async def test_a_batch_larger_than_one_write_commits_all_or_nothing(url: str, raw: Any) -> None:
    dying = await opened(url, DiesBeforeJobs)
    epoch = await dying.acquire_shard(0, "old")
    batch = big_batch(epoch)
    with pytest.raises(Interrupted):
        await dying.commit(batch)
    await dying.close()
    new = await opened(url)
    try:
        await new.acquire_shard(0, "new")
        listed = await new.list_jobs("acme", JobQuery(limit=5000))
        assert sorted(listed, key=lambda j: j.job_id) == sorted(batch.jobs, key=lambda j: j.job_id)
        assert await new.read_output("acme", "j0") == batch.chunks  # 2 documents each
        assert await leftovers(raw) == (0, [])
    finally:
        await new.close()
    never = await opened(url, DiesBeforeRecord)
    try:
        again = await never.acquire_shard(0, "never")
        unrecorded = big_batch(again)
        unrecorded.jobs = [job(f"k{n}") for n in range(3000)]
        unrecorded.chunks = [replace(chunk, job_id="k0") for chunk in unrecorded.chunks[:1]]
        with pytest.raises(Interrupted):
            await never.commit(unrecorded)
        await never.acquire_shard(0, "after")  # takes over from the dead commit
        assert await never.get_jobs("acme", [f"k{n}" for n in range(3000)]) == []
        assert await never.read_output("acme", "k0") == []
        assert await leftovers(raw) == (0, [])
    finally:
        await never.close()


async def test_a_stale_owners_late_apply_leaves_what_a_newer_epoch_wrote(url: str) -> None:
    old, new = await opened(url), await opened(url)
    try:
        old_epoch = await old.acquire_shard(0, "old")
        await old.commit(Batch(slot=0, epoch=old_epoch, jobs=[job("j1"), job("gone")]))
        new_epoch = await new.acquire_shard(0, "new")
        newer = job("j1", progress=0.9, revision=3)
        sent = delivery("d1", "j1", status=DeliveryStatus.DELIVERED)
        await new.commit(Batch(slot=0, epoch=new_epoch, jobs=[newer], deliveries=[sent]))
        await new.commit(Batch(slot=0, epoch=new_epoch, jobs=[job("kept", revision=2)]))
        # The old owner's apply, late: after the new owner took the lease and wrote.
        late = Batch(
            slot=0,
            epoch=old_epoch,
            jobs=[job("j1", progress=0.5, revision=2)],
            deliveries=[delivery("d1", "j1")],
            deleted=[("acme", "kept")],
        )
        await old._apply(late, "00000000000000000000-late")
        assert await new.get_job("acme", "j1") == newer
        assert await new.get_delivery("acme", "d1") == sent
        assert await new.get_job("acme", "kept") == job("kept", revision=2)
        assert await new.load_purges(0) == []  # the stale delete left no purge record
    finally:
        await old.close()
        await new.close()


# -- documents ------------------------------------------------------------------------------


def test_a_chunk_over_one_document_reads_back_only_when_all_its_parts_are_there() -> None:
    data = os.urandom(9 * MiB)  # does not compress: two parts
    docs = chunk_docs(Chunk("acme", "j1", 1, 0, data)) + chunk_docs(
        Chunk("acme", "j1", 2, len(data), b"x")
    )
    assert [doc["part"] for doc in docs] == [0, 1, 0]
    assert [c.data for c in chunks_of(docs)] == [data, b"x"]
    assert chunks_of(docs[:1]) == []  # part 1 not written yet: nothing, never a torn chunk
    assert chunks_of([docs[0], docs[2]]) == []


async def test_a_batch_of_1000_new_jobs_commits_beside_500_others(url: str) -> None:
    """A tester's batch submit wedged a shard for good: 1,000 replacements of absent ids in
    one command took FerretDB past the socket timeout, and every retry did the same. New
    documents are inserted now, and replacements go 32 to a command."""
    store = await opened(url)
    try:
        epoch = await store.acquire_shard(0, "test")
        await store.commit(Batch(slot=0, epoch=epoch, jobs=[job(f"a{i}") for i in range(500)]))
        # Before: StoreUnavailable (a timed-out command) here, and in every retry.
        await store.commit(Batch(slot=0, epoch=epoch, jobs=[job(f"k{i}") for i in range(1000)]))
        updated = [job(f"a{i}", progress=0.5) for i in range(64)]
        await store.commit(Batch(slot=0, epoch=epoch, jobs=updated))
        assert len(await store.list_jobs("acme", JobQuery(limit=2000))) == 1500
        assert await store.get_job("acme", "a63") == updated[-1]
    finally:
        await store.close()
