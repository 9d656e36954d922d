"""The DynamoDB store beyond the contract: its URL, its tables and durability check, bounded
timeouts, chunks cut to items, and the staged commit (storage/staged.py) for group commits
past one transaction: whole or absent after a crash at any step, fenced when stale."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import dynamodb_tables as tables
from storage.dynamodb import DynamoStore, parse_url
from storage.dynamodb_items import TTL_GRACE_S
from storage.errors import Fenced, StoreUnavailable
from storage.records import Batch, Chunk, Delivery, Job, JobQuery, JobStatus
from storage.staged import encode
from tests.backends import BACKENDS
from tests.backends.dynamodb import dynamodb_client, scan_table

NOW = 1_700_000_000.25
MiB = 1024 * 1024


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A table prefix nobody has opened yet on the test server."""
    backend = BACKENDS["dynamodb"]
    backend.need()
    with backend.fresh(tmp_path) as fresh:
        yield fresh


@pytest.fixture
async def store(url: str) -> AsyncIterator[DynamoStore]:
    store = DynamoStore(url)
    await store.open()
    yield store
    await store.close()


def job(job_id: str, slot: int = 0, **changes: Any) -> Job:
    fields: dict[str, Any] = {"created_at": NOW, "updated_at": NOW, **changes}
    return Job("acme", job_id, slot, **fields)


async def raw(url: str, table: tables.Table) -> list[dict[str, Any]]:
    """Every item of one of the store's tables, as DynamoDB holds it."""
    name = f"{parse_url(url)[1]}-{table.name}"
    async with dynamodb_client(url) as client:
        return await scan_table(client, name, None)


# -- URL, tables, durability ------------------------------------------------------------------


def test_the_url_names_endpoint_table_prefix_and_region() -> None:
    assert parse_url("dynamodb://127.0.0.1:4566/aos-test?region=eu-west-1") == (
        "http://127.0.0.1:4566",
        "aos-test",
        "eu-west-1",
    )
    assert parse_url("dynamodb:///prod") == (None, "prod", None)  # AWS's own endpoint
    assert parse_url("dynamodb://localhost:8000") == ("http://localhost:8000", "aos", None)
    with pytest.raises(ValueError, match="no credentials"):
        parse_url("dynamodb://key:secret@localhost:8000/aos")
    with pytest.raises(ValueError, match="prefix"):
        parse_url("dynamodb://localhost:8000/no spaces")


async def test_open_makes_on_demand_tables_with_ttl_and_warns_without_recovery(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = DynamoStore(url)
    with caplog.at_level(logging.WARNING):
        await store.open()
    await store.close()
    warned = [r for r in caplog.records if "point-in-time recovery off" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    prefix = parse_url(url)[1]
    async with dynamodb_client(url) as client:
        for table in tables.TABLES:
            described = (await client.describe_table(TableName=f"{prefix}-{table.name}"))["Table"]
            assert described["TableStatus"] == "ACTIVE"
            assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
            await client.update_continuous_backups(
                TableName=f"{prefix}-{table.name}",
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )
        ttl = await client.describe_time_to_live(TableName=f"{prefix}-jobs")
        assert ttl["TimeToLiveDescription"]["AttributeName"] == "ttl"
    caplog.clear()
    again = DynamoStore(url)
    with caplog.at_level(logging.WARNING):
        await again.open()  # the tables are there: opened as they are, and no warning now
    await again.close()
    assert not [r for r in caplog.records if "point-in-time" in r.getMessage()]


async def test_a_finished_job_carries_a_ttl_past_its_expiry_a_running_one_none(
    store: DynamoStore, url: str
) -> None:
    done = job("done", status=JobStatus.SUCCEEDED, completed_at=NOW, expires_at=NOW + 60.5)
    await store.commit(Batch(jobs=[done, job("running"), job("kept", status=JobStatus.FAILED)]))
    ttls = {item["id"]["S"]: item.get("ttl") for item in await raw(url, tables.JOBS)}
    assert ttls == {
        "done": {"N": str(int(NOW + 60.5) + TTL_GRACE_S)},
        "running": None,
        "kept": None,
    }


async def test_an_unreachable_endpoint_is_unavailable_without_the_drivers_text(
    unused_tcp_port: int,
) -> None:
    store = DynamoStore(f"dynamodb://127.0.0.1:{unused_tcp_port}/aos")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(StoreUnavailable) as raised:
        await store.open()
    where = f"dynamodb 127.0.0.1:{unused_tcp_port}/aos"
    assert raised.value.message == f"the store ({where}) is unavailable; retry shortly"


async def test_an_endpoint_that_never_answers_is_unavailable_within_ten_seconds() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        store = DynamoStore(f"dynamodb://127.0.0.1:{silent.getsockname()[1]}/aos")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.open()
        assert time.monotonic() - started < 10.5


# -- items -------------------------------------------------------------------------------------


async def test_a_chunk_past_one_item_is_cut_in_parts_read_whole_and_purged_whole(
    store: DynamoStore, url: str
) -> None:
    big = os.urandom(MiB + 5)  # random: stored as it is, in 3 items of at most 350,000 bytes
    chunks = [Chunk("acme", "j1", 1, 0, b"head"), Chunk("acme", "j1", 2, 4, big)]
    chunks.append(Chunk("acme", "j1", 3, 4 + len(big), b"tail"))
    await store.commit(Batch(jobs=[job("j1")], chunks=chunks))
    assert len(await raw(url, tables.CHUNKS)) == 1 + 3 + 1
    assert await store.read_output("acme", "j1") == chunks
    assert await store.read_output_at("acme", "j1", offset=MiB) == chunks[1:]
    assert await store.read_output("acme", "j1", after_seq=1, limit=1) == [chunks[1]]
    epoch = await store.acquire_shard(0, "me")
    await store.commit(Batch(slot=0, epoch=epoch, deleted=[("acme", "j1")]))
    while not await store.purge_output("acme", "j1", fence=(0, epoch), max_bytes=10):
        pass
    assert await raw(url, tables.CHUNKS) == []
    assert await raw(url, tables.PURGES) == []


async def test_a_filtered_listing_reads_on_until_it_has_its_page(store: DynamoStore) -> None:
    jobs = [
        job(f"j{i:03}", created_at=NOW + i, tags=("rare",) if i % 97 == 0 else ())
        for i in range(300)
    ]
    for start in range(0, 300, 90):
        await store.commit(Batch(jobs=jobs[start : start + 90]))
    found = await store.list_jobs("acme", JobQuery(tag="rare", limit=3))
    assert [j.job_id for j in found] == ["j291", "j194", "j097"]
    rest = await store.list_jobs("acme", JobQuery(tag="rare", before=(NOW + 97, "j097")))
    assert [j.job_id for j in rest] == ["j000"]


# -- the staged commit ---------------------------------------------------------------------------


def big_batch(slot: int, epoch: int | None, *, jobs: int = 150) -> Batch:
    """Past one transaction: more items than its 100."""
    return Batch(
        slot=slot,
        epoch=epoch,
        jobs=[job(f"j{i:03}", slot=slot, output_seq=1, output_size=3) for i in range(jobs)],
        chunks=[Chunk("acme", f"j{i:03}", 1, 0, b"out") for i in range(jobs)],
        deliveries=[
            Delivery("d1", "acme", "j000", slot, "job.completed", "https://h.example/", b"{}", NOW)
        ],
    )


async def holds(store: DynamoStore, batch: Batch) -> bool:
    """Whether `store` holds every job and chunk of `batch`; asserts it holds all or none."""
    found = await store.get_jobs("acme", [j.job_id for j in batch.jobs])
    outputs = [await store.read_output("acme", j.job_id) for j in batch.jobs[:10]]
    if not found:
        return False
    assert sorted(found, key=lambda j: j.job_id) == batch.jobs
    assert outputs == [[c] for c in batch.chunks[:10]]
    return True


class CrashesWhileApplying(DynamoStore):
    """Fails (as an outage would) after `writes` of a staged commit's item writes."""

    def __init__(self, url: str, writes: int) -> None:
        super().__init__(url)
        self.writes_left = writes

    async def _apply_one(self, write: Any) -> None:
        if write.op != "Delete" and self.writes_left <= 0:
            raise StoreUnavailable("crashed")
        self.writes_left -= 1
        await super()._apply_one(write)


class CrashesBeforeRecording(DynamoStore):
    async def _record(self, slot: int | None, epoch: int | None, commit_id: str) -> None:
        raise StoreUnavailable("crashed after staging")


async def test_a_commit_cut_after_its_record_is_whole_once_the_shard_is_taken_again(
    url: str,
) -> None:
    crashing = CrashesWhileApplying(url, writes=120)  # its chunks are in, its jobs are not
    await crashing.open()
    batch = big_batch(0, await crashing.acquire_shard(0, "old"))
    with pytest.raises(StoreUnavailable):
        await crashing.commit(batch)
    reader = DynamoStore(url)
    await reader.open()
    try:
        assert not await holds(reader, batch)  # no job yet: readers see none of it
        await reader.acquire_shard(0, "new")  # finishes what is recorded on the lease
        assert await holds(reader, batch)
        assert await reader.list_deliveries("acme", "j000") == batch.deliveries
        assert await raw(url, tables.STAGED) == []
    finally:
        await asyncio.gather(reader.close(), crashing.close())


async def test_an_unfenced_commit_cut_after_its_record_is_whole_once_a_store_opens(
    url: str,
) -> None:
    crashing = CrashesWhileApplying(url, writes=120)
    await crashing.open()
    batch = big_batch(0, None)
    batch.slot = None  # admin and unfenced commits record on a lease of their own
    with pytest.raises(StoreUnavailable):
        await crashing.commit(batch)
    await crashing.close()
    opened = DynamoStore(url)
    await opened.open()
    try:
        assert await holds(opened, batch)
        assert await raw(url, tables.STAGED) == []
    finally:
        await opened.close()


async def test_a_commit_cut_before_its_record_is_absent_and_its_parts_dropped(url: str) -> None:
    crashing = CrashesBeforeRecording(url)
    await crashing.open()
    batch = big_batch(0, await crashing.acquire_shard(0, "old"))
    with pytest.raises(StoreUnavailable):
        await crashing.commit(batch)
    assert await raw(url, tables.STAGED) != []  # staged, never recorded
    await crashing.close()
    taker = DynamoStore(url)
    await taker.open()
    try:
        await taker.acquire_shard(0, "new")
        assert not await holds(taker, batch)
        assert await raw(url, tables.STAGED) == []
    finally:
        await taker.close()


async def test_a_batch_of_many_jobs_and_64_mib_of_chunks_commits_all_or_nothing(
    url: str,
) -> None:
    crashing = CrashesWhileApplying(url, writes=100)
    await crashing.open()
    epoch = await crashing.acquire_shard(1, "old")
    data = [os.urandom(4 * MiB) for _ in range(16)]
    batch = big_batch(1, epoch, jobs=300)
    offsets = [i * 4 * MiB for i in range(16)]
    batch.chunks = [Chunk("acme", "big", i + 1, offsets[i], d) for i, d in enumerate(data)]
    batch.jobs.append(job("big", slot=1, output_seq=16, output_size=64 * MiB))
    assert len(encode(batch)) > 64 * MiB
    with pytest.raises(StoreUnavailable):
        await crashing.commit(batch)
    with pytest.raises(StoreUnavailable):  # this store finishes the commit before it reads
        await crashing.get_job("acme", "big")
    await crashing.close()
    reader = DynamoStore(url)
    await reader.open()
    assert await reader.get_job("acme", "big") is None  # jobs come last: none is visible
    await reader.close()
    taker = DynamoStore(url)
    await taker.open()
    try:
        await taker.acquire_shard(1, "new")
        assert len(await taker.get_jobs("acme", [j.job_id for j in batch.jobs])) == 301
        read = await taker.read_output("acme", "big", limit=100)
        assert [c.data for c in read] == data
    finally:
        await taker.close()


async def test_a_stale_owners_late_apply_leaves_what_a_newer_epoch_wrote(url: str) -> None:
    old, new = DynamoStore(url), DynamoStore(url)
    await asyncio.gather(old.open(), new.open())
    try:
        stale = big_batch(0, await old.acquire_shard(0, "old"))
        commit_id = "00000000000000000001-stale"
        await old._stage(commit_id, 0, [encode(stale)])
        await old._record(0, stale.epoch, commit_id)  # recorded, the old owner stalls
        epoch = await new.acquire_shard(0, "new")  # applies it, then fences the old owner
        newer = job("j000", progress=0.9, revision=2, output_seq=1, output_size=3)
        await new.commit(Batch(slot=0, epoch=epoch, jobs=[newer], deleted=[("acme", "j001")]))
        await old._apply(stale, commit_id)  # late: its writes of j000 and j001 stay out
        assert await new.get_job("acme", "j000") == newer
        assert await new.get_job("acme", "j001") is None
        with pytest.raises(Fenced):
            await old.commit(Batch(slot=0, epoch=stale.epoch, jobs=[job("late")]))
    finally:
        await asyncio.gather(old.close(), new.close())
