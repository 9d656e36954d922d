"""The Store contract: one behaviour suite, run unchanged against every backend."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from storage.base import Store
from storage.errors import Fenced, StoreUnavailable
from storage.postgres import PostgresStore
from storage.records import (
    ApiKey,
    Attempt,
    AuditEntry,
    Batch,
    Chunk,
    Delivery,
    DeliveryStatus,
    Job,
    JobQuery,
    JobStatus,
    Namespace,
    OutputFormat,
    OutputVersion,
)
from storage.registry import open_store
from storage.sql import SQLITE, pending_migrations
from storage.sqlite import SqliteStore, path_of

NOW = 1_700_000_000.125
#: Every schema version, as a database opened by this code holds them.
ALL_VERSIONS = [number for number, _ in pending_migrations(SQLITE, 0)]
MiB = 1024 * 1024
#: Every migration's number: a new database has them all.
SCHEMA_VERSIONS = [number for number, _ in pending_migrations(SQLITE, 0)]


def make_job(job_id: str = "j1", namespace: str = "acme", **changes: object) -> Job:
    fields: dict[str, object] = {"slot": 0, "created_at": NOW, "updated_at": NOW, **changes}
    return Job(namespace=namespace, job_id=job_id, **fields)  # type: ignore[arg-type]


def full_job() -> Job:
    """A job with every field away from its default."""
    return Job(
        namespace="acme",
        job_id="job-ünïcode-1",
        slot=7,
        created_at=NOW,
        updated_at=NOW + 1.5,
        status=JobStatus.FAILED,
        progress=0.375,
        estimated_completion=NOW + 60.25,
        completed_at=NOW + 2.0000001,
        error="boom: 'quoted' \"double\" \n newline",
        title="Nightly export ✓",
        description="a long description " * 20,
        tags=("b", "a", "with space"),
        webhook_url="https://hooks.example.com/x?y=1",
        webhook_events=("job.completed", "job.output"),
        ttl_s=86_400,
        expires_at=NOW + 86_402.0000001,
        output_format=OutputFormat.BINARY,
        revision=42,
        output_seq=9,
        output_size=123_456_789_012,
        request_hash="sha256:abc",
        output_version=7,
        output_version_at=NOW + 1.0000001,
        output_sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    )


def make_delivery(delivery_id: str = "d1", job_id: str = "j1", **changes: object) -> Delivery:
    fields: dict[str, object] = {
        "namespace": "acme",
        "slot": 0,
        "event_type": "job.completed",
        "url": "https://hooks.example.com/",
        "payload": b'{"seq": 1}',
        "created_at": NOW,
        **changes,
    }
    return Delivery(delivery_id=delivery_id, job_id=job_id, **fields)  # type: ignore[arg-type]


def chunk(seq: int, data: bytes = b"x", *, job_id: str = "j1", version: int = 1) -> Chunk:
    return Chunk("acme", job_id, seq, (seq - 1) * len(data), data, version)


async def commit(store: Store, **parts: object) -> None:
    await store.commit(Batch(**parts))  # type: ignore[arg-type]


# -- round trips -------------------------------------------------------------------------


async def test_a_job_with_every_field_set_round_trips(store: Store) -> None:
    job = full_job()
    await commit(store, jobs=[job])
    assert await store.get_job(job.namespace, job.job_id) == job


async def test_a_job_with_defaults_round_trips_and_keeps_none_apart_from_empty(
    store: Store,
) -> None:
    plain, no_events = make_job("plain"), make_job("no-events", webhook_events=())
    await commit(store, jobs=[plain, no_events])
    loaded = await store.get_job("acme", "plain")
    assert loaded == plain
    assert loaded is not None and loaded.webhook_events is None and loaded.tags == ()
    assert await store.get_job("acme", "no-events") == no_events


async def test_get_jobs_finds_the_ids_that_exist_in_that_namespace_only(store: Store) -> None:
    # Over 1,000 ids: more than one statement's worth in the SQL backends (IDS_PER_QUERY).
    ids = [f"j{i}" for i in range(1200)]
    kept = [make_job(ids[i], title=f"t{i}") for i in (0, 499, 500, 1199)]
    await commit(store, jobs=[*kept, make_job("j1", namespace="globex")])
    found = await store.get_jobs("acme", [*ids, "j0", "missing"])
    assert sorted(found, key=lambda job: job.job_id) == sorted(kept, key=lambda job: job.job_id)
    assert await store.get_jobs("acme", []) == []
    assert await store.get_jobs("globex", ["j0", "j1"]) == [make_job("j1", namespace="globex")]


async def test_namespace_and_api_key_round_trip(store: Store) -> None:
    config = {"retention": {"ttl_s": 3600}, "secrets": ["whsec_a"], "on": True, "rate": 2.5}
    namespace = Namespace("acme", NOW, {**config, "note": None, "ünï": "cödé"})
    key = ApiKey("k1", "f" * 64, ("acme", "globex"), NOW, admin=True, revoked_at=NOW + 9)
    await commit(store, namespaces=[namespace], api_keys=[key])
    assert await store.get_namespace("acme") == namespace
    assert await store.get_api_key("k1") == key
    assert await store.get_namespace("nope") is None
    assert await store.get_api_key("nope") is None


async def test_a_delivery_with_attempts_round_trips(store: Store) -> None:
    attempts = (
        Attempt(NOW + 1, 12.5, status_code=503, error=None, retry_after_s=3.0),
        Attempt(NOW + 2, 3001.0, error="timeout"),
        Attempt(NOW + 3, 8.25, status_code=204),
    )
    delivery = make_delivery(
        payload=bytes(range(256)),
        status=DeliveryStatus.FAILED,
        attempts=attempts,
        next_attempt_at=NOW + 30,
    )
    await commit(store, jobs=[make_job()], deliveries=[delivery])
    assert await store.get_delivery("acme", "d1") == delivery
    assert await store.list_deliveries("acme", "j1") == [delivery]


async def test_audit_entries_are_appended_in_order(
    store: Store, read_audit: Callable[[], Awaitable[list[AuditEntry]]]
) -> None:
    first = AuditEntry(NOW, "acme", "admin:k1", "namespace.create", "acme", {"quota": 10})
    second = AuditEntry(NOW + 1, None, "system", "key.revoke", "k2")
    await commit(store, audit=[first])
    await commit(store, audit=[second, first])
    assert await read_audit() == [first, second, first]


async def test_a_large_chunk_round_trips(store: Store) -> None:
    data = os.urandom(5 * MiB)
    await commit(store, jobs=[make_job()], chunks=[Chunk("acme", "j1", 1, 0, data)])
    assert await store.read_output("acme", "j1") == [Chunk("acme", "j1", 1, 0, data)]
    assert store.max_chunk_bytes == 16 * MiB


async def test_ping_answers_while_open_and_is_unavailable_once_closed(store: Store) -> None:
    await store.ping()  # an open store answers: no exception
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()


# -- writes --------------------------------------------------------------------------------


async def test_a_job_upsert_replaces_the_whole_row(store: Store) -> None:
    await commit(store, jobs=[full_job()])
    cleared = make_job(full_job().job_id, slot=1, created_at=NOW - 5, revision=43)
    await commit(store, jobs=[cleared])
    assert await store.get_job("acme", cleared.job_id) == cleared


async def test_the_last_record_of_a_job_in_a_batch_wins(store: Store) -> None:
    first = make_job()
    last = first.evolve(progress=0.5).evolve(status=JobStatus.SUCCEEDED, completed_at=NOW + 1)
    await commit(store, jobs=[first, first.evolve(progress=0.5), last])
    assert await store.get_job("acme", "j1") == last


async def test_deliveries_namespaces_and_keys_are_upserts(store: Store) -> None:
    await commit(
        store,
        deliveries=[make_delivery()],
        namespaces=[Namespace("acme", NOW, {"v": 1})],
        api_keys=[ApiKey("k1", "a" * 64, ("acme",), NOW)],
    )
    retried = make_delivery(attempts=(Attempt(NOW + 1, 5.0, status_code=200),))
    delivered = make_delivery(status=DeliveryStatus.DELIVERED, attempts=retried.attempts)
    revoked = ApiKey("k1", "a" * 64, ("acme",), NOW, revoked_at=NOW + 2)
    await commit(store, deliveries=[retried, delivered], namespaces=[Namespace("acme", NOW, {})])
    await commit(store, api_keys=[revoked])
    assert await store.list_deliveries("acme", "j1") == [delivered]
    assert await store.get_namespace("acme") == Namespace("acme", NOW, {})
    assert await store.get_api_key("k1") == revoked


async def test_a_retried_chunk_insert_is_a_no_op(store: Store) -> None:
    await commit(store, jobs=[make_job()], chunks=[chunk(1, b"first"), chunk(2, b"second")])
    await commit(store, chunks=[chunk(2, b"again"), chunk(3, b"third")])
    await commit(store, chunks=[chunk(2, b"again"), chunk(3, b"third")])
    stored = await store.read_output("acme", "j1")
    assert [(c.seq, c.data) for c in stored] == [(1, b"first"), (2, b"second"), (3, b"third")]


async def test_read_output_pages_by_seq_and_keeps_versions_apart(store: Store) -> None:
    v1 = [chunk(seq, bytes([seq])) for seq in range(1, 11)]
    v2 = [chunk(seq, b"v2", version=2) for seq in (1, 2)]
    await commit(store, jobs=[make_job()], chunks=list(reversed(v1)) + v2)
    assert await store.read_output("acme", "j1") == v1
    assert await store.read_output("acme", "j1", after_seq=3, limit=4) == v1[3:7]
    assert await store.read_output("acme", "j1", after_seq=10) == []
    assert await store.read_output("acme", "j1", version=2) == v2
    assert await store.read_output("acme", "j1", version=3) == []


async def test_read_output_with_max_bytes_takes_the_chunks_that_start_within_it(
    store: Store,
) -> None:
    sizes = [1000, 1000, 3000, 10, 10, 5000]
    chunks, offset = [], 0
    for seq, size in enumerate(sizes, start=1):
        chunks.append(Chunk("acme", "j1", seq, offset, bytes([seq]) * size))
        offset += size
    await commit(store, jobs=[make_job()], chunks=chunks)

    async def page(after_seq: int, max_bytes: int, limit: int = 256) -> list[int]:
        found = await store.read_output(
            "acme", "j1", after_seq=after_seq, limit=limit, max_bytes=max_bytes
        )
        return [c.seq for c in found]

    assert await page(0, 2000) == [1, 2]  # chunk 3 starts 2,000 bytes past chunk 1
    assert await page(0, 2001) == [1, 2, 3]  # it starts within: a page may pass max_bytes
    assert await page(2, 1) == [3]  # never fewer than one chunk
    assert await page(2, 3021) == [3, 4, 5, 6]
    assert await page(2, 10**9, limit=2) == [3, 4]
    assert await page(6, 10**9) == []
    assert await page(0, 1, limit=0) == []


async def test_read_output_at_starts_at_the_chunk_holding_the_byte(store: Store) -> None:
    sizes = [3, 1, 5, 2, 4]  # chunks of several sizes: offsets 0, 3, 4, 9, 11; 15 bytes
    chunks, offset = [], 0
    for seq, size in enumerate(sizes, start=1):
        chunks.append(Chunk("acme", "j1", seq, offset, bytes([seq]) * size))
        offset += size
    other = Chunk("acme", "j1", 1, 0, b"v2" * 10, version=2)
    await commit(store, jobs=[make_job()], chunks=[*reversed(chunks), other])
    expected_first = {0: 1, 2: 1, 3: 2, 4: 3, 8: 3, 9: 4, 10: 4, 11: 5, 14: 5}
    for at, seq in expected_first.items():
        assert await store.read_output_at("acme", "j1", offset=at) == chunks[seq - 1 :], at
    assert await store.read_output_at("acme", "j1", offset=4, limit=2) == chunks[2:4]
    assert await store.read_output_at("acme", "j1", offset=15) == []
    assert await store.read_output_at("acme", "j1", offset=2**62) == []
    assert await store.read_output_at("acme", "j1", offset=12, version=2) == [other]
    assert await store.read_output_at("acme", "j1", offset=0, version=3) == []
    assert await store.read_output_at("acme", "nobody", offset=0) == []


def done_version(version: int, job_id: str = "j1", namespace: str = "acme") -> OutputVersion:
    """Output `version` of a job, completed by a later one."""
    return OutputVersion(
        namespace,
        job_id,
        version,
        last_seq=version * 10,
        size=2**40 + version,
        created_at=NOW + version,
        completed_at=NOW + version + 0.5000001,
        sha256=f"{version:064x}",
    )


async def test_completed_versions_are_listed_in_order_per_job(store: Store) -> None:
    mine = [done_version(v) for v in (3, 1, 2)]
    theirs = [done_version(1, "j2"), done_version(1, namespace="globex")]
    await commit(store, jobs=[make_job(output_version=4)], versions=mine[:2] + theirs)
    await commit(store, versions=[mine[2]])
    assert await store.list_versions("acme", "j1") == sorted(mine, key=lambda v: v.version)
    assert await store.list_versions("acme", "j2") == [theirs[0]]
    assert await store.list_versions("globex", "j1") == [theirs[1]]
    assert await store.list_versions("acme", "nobody") == []


async def test_a_completed_version_is_written_once(store: Store) -> None:
    """A retried commit writes it again as it was: the first stays."""
    first = done_version(1)
    await commit(store, jobs=[make_job(output_version=2)], versions=[first])
    await commit(store, versions=[first])
    await commit(store, versions=[replace(first, sha256="0" * 64)])
    assert await store.list_versions("acme", "j1") == [first]


async def test_delete_removes_the_job_its_output_and_its_deliveries(store: Store) -> None:
    keep = make_job("keep")
    await commit(
        store,
        jobs=[make_job(), keep],
        chunks=[chunk(1), chunk(2, version=2), chunk(1, job_id="keep")],
        versions=[done_version(1), done_version(1, job_id="keep")],
        deliveries=[make_delivery("d1"), make_delivery("d2", job_id="keep")],
    )
    await commit(store, deleted=[("acme", "j1")])
    assert await store.get_job("acme", "j1") is None
    assert await store.list_versions("acme", "j1") == []
    assert await store.list_versions("acme", "keep") == [done_version(1, job_id="keep")]
    assert await store.read_output("acme", "j1") == []
    assert await store.read_output("acme", "j1", version=2) == []
    assert await store.list_deliveries("acme", "j1") == []
    assert await store.get_delivery("acme", "d1") is None
    assert await store.get_job("acme", "keep") == keep
    assert await store.read_output("acme", "keep") == [chunk(1, job_id="keep")]
    assert await store.get_delivery("acme", "d2") == make_delivery("d2", job_id="keep")


async def test_deletes_apply_after_the_upserts_of_their_batch(store: Store) -> None:
    await commit(store, jobs=[make_job()], chunks=[chunk(1)], deleted=[("acme", "j1")])
    assert await store.get_job("acme", "j1") is None
    assert await store.read_output("acme", "j1") == []


async def test_a_deleted_job_id_can_be_used_again_once_its_output_is_purged(store: Store) -> None:
    fence = (0, await store.acquire_shard(0, "me"))
    await commit(store, jobs=[make_job()], chunks=[chunk(1, b"old"), chunk(2, b"old")])
    await commit(store, slot=0, epoch=fence[1], deleted=[("acme", "j1")])
    assert await store.load_purges(0) == [("acme", "j1")]
    while not await store.purge_output("acme", "j1", fence=fence, max_bytes=1):
        pass
    assert await store.load_purges(0) == []
    await commit(store, jobs=[make_job(revision=1)], chunks=[chunk(1, b"new")])
    assert await store.read_output("acme", "j1") == [chunk(1, b"new")]


async def test_a_purge_removes_output_in_steps_of_about_max_bytes_and_is_fenced(
    store: Store,
) -> None:
    fence = (0, await store.acquire_shard(0, "me"))
    v1 = [chunk(seq, b"x" * 100) for seq in range(1, 11)]  # offsets 0, 100, ..., 900
    await commit(store, jobs=[make_job()], chunks=[*v1, chunk(1, b"v2", version=2)])
    await commit(store, slot=0, epoch=fence[1], deleted=[("acme", "j1")])
    assert await store.read_output("acme", "j1") == []  # gone to readers at once
    with pytest.raises(Fenced):
        await store.purge_output("acme", "j1", fence=(0, fence[1] - 1), max_bytes=10**9)
    steps = 0
    while not await store.purge_output("acme", "j1", fence=fence, max_bytes=450):
        steps += 1
    assert steps == 3  # version 1 in two steps of 5 chunks (starting within 450), then v2
    assert await store.load_purges(0) == []
    await commit(store, jobs=[make_job()])  # the id again: none of the old output shows
    assert await store.read_output("acme", "j1") == []
    assert await store.read_output("acme", "j1", version=2) == []


# -- shard leases and fencing --------------------------------------------------------------


async def test_each_acquire_bumps_the_epoch_from_1(store: Store) -> None:
    assert [await store.acquire_shard(3, f"owner-{i}") for i in range(3)] == [1, 2, 3]
    assert await store.acquire_shard(4, "other") == 1


async def test_a_commit_at_the_current_epoch_is_written(store: Store) -> None:
    epoch = await store.acquire_shard(0, "me")
    await commit(store, slot=0, epoch=epoch, jobs=[make_job()])
    assert await store.get_job("acme", "j1") == make_job()


async def test_a_stale_epoch_is_fenced_and_writes_nothing(
    store: Store, read_audit: Callable[[], Awaitable[list[AuditEntry]]]
) -> None:
    stale = await store.acquire_shard(0, "old-owner")
    before = chunk(1, job_id="before")
    await commit(store, slot=0, epoch=stale, jobs=[make_job("before")], chunks=[before])
    await store.acquire_shard(0, "new-owner")
    batch = Batch(
        slot=0,
        epoch=stale,
        jobs=[make_job(), make_job("before", progress=0.9)],
        chunks=[chunk(2, job_id="before"), chunk(1)],
        deleted=[("acme", "before")],
        deliveries=[make_delivery()],
        namespaces=[Namespace("acme", NOW)],
        api_keys=[ApiKey("k1", "a" * 64, ("acme",), NOW)],
        audit=[AuditEntry(NOW, "acme", "shard-0", "job.submit", "j1")],
    )
    with pytest.raises(Fenced):
        await store.commit(batch)
    assert await store.get_job("acme", "j1") is None
    assert await store.get_job("acme", "before") == make_job("before")
    assert await store.read_output("acme", "before") == [before]
    assert await store.read_output("acme", "j1") == []
    assert await store.get_delivery("acme", "d1") is None
    assert await store.get_namespace("acme") is None
    assert await store.get_api_key("k1") is None
    assert await read_audit() == []


async def test_a_commit_for_a_slot_nobody_leased_is_fenced(store: Store) -> None:
    with pytest.raises(Fenced):
        await commit(store, slot=5, epoch=1, jobs=[make_job()])
    await store.acquire_shard(5, "me")
    with pytest.raises(Fenced):
        await commit(store, slot=5, epoch=None, jobs=[make_job()])
    assert await store.get_job("acme", "j1") is None


async def test_fenced_is_a_store_unavailable(store: Store) -> None:
    with pytest.raises(StoreUnavailable):
        await commit(store, slot=5, epoch=1)


# -- reads -------------------------------------------------------------------------------------


async def test_load_shard_returns_only_the_running_jobs_of_its_slot(store: Store) -> None:
    running = [make_job("r1", slot=2), make_job("r2", namespace="globex", slot=2)]
    others = [
        make_job("other-slot", slot=3),
        *(make_job(f"done-{s}", slot=2, status=s) for s in JobStatus if s.terminal),
    ]
    await commit(store, jobs=running + others)
    loaded = await store.load_shard(2)
    assert sorted(loaded, key=lambda job: job.key) == sorted(running, key=lambda job: job.key)
    assert await store.load_shard(9) == []


async def test_list_jobs_filters_by_status_tag_and_time_range(store: Store) -> None:
    jobs = [
        make_job("a", created_at=NOW + 1, tags=("red", "blue")),
        make_job("b", created_at=NOW + 2, tags=("reddish",), status=JobStatus.SUCCEEDED),
        make_job("c", created_at=NOW + 3, tags=("red",), status=JobStatus.SUCCEEDED),
        make_job("d", created_at=NOW + 4),
        make_job("e", namespace="globex", created_at=NOW + 2, tags=("red",)),
    ]
    await commit(store, jobs=jobs)

    async def ids(**query: object) -> list[str]:
        found = await store.list_jobs("acme", JobQuery(**query))  # type: ignore[arg-type]
        return [job.job_id for job in found]

    assert await ids() == ["d", "c", "b", "a"]
    assert await ids(status=JobStatus.SUCCEEDED) == ["c", "b"]
    assert await ids(tag="red") == ["c", "a"]
    assert await ids(tag="re") == []
    assert await ids(created_from=NOW + 2, created_to=NOW + 4) == ["c", "b"]
    assert await ids(status=JobStatus.SUCCEEDED, tag="red", created_from=NOW + 3) == ["c"]
    assert await ids(limit=2) == ["d", "c"]
    assert await ids(limit=0) == []


async def test_list_jobs_pages_newest_first_with_no_gap_or_duplicate(store: Store) -> None:
    # Many jobs share a created_at, so the cursor must break ties on job_id.
    jobs = [make_job(f"job-{i:02}", created_at=NOW + i // 4) for i in range(30)]
    await commit(store, jobs=jobs)
    expected = sorted(jobs, key=lambda job: (job.created_at, job.job_id), reverse=True)
    pages: list[list[Job]] = []
    before: tuple[float, str] | None = None
    while True:
        page = await store.list_jobs("acme", JobQuery(before=before, limit=7))
        if not page:
            break
        pages.append(page)
        before = (page[-1].created_at, page[-1].job_id)
    assert [len(page) for page in pages] == [7, 7, 7, 7, 2]
    assert [job for page in pages for job in page] == expected


async def test_pending_deliveries_are_those_of_the_slot_still_pending(store: Store) -> None:
    pending = [
        make_delivery("d2", created_at=NOW + 1, slot=1),
        make_delivery("d1", created_at=NOW + 1, slot=1, namespace="globex"),
        make_delivery("d0", created_at=NOW, slot=1),
    ]
    await commit(
        store,
        deliveries=[
            *pending,
            make_delivery("done", slot=1, status=DeliveryStatus.DELIVERED),
            make_delivery("gave-up", slot=1, status=DeliveryStatus.FAILED),
            make_delivery("elsewhere", slot=2),
        ],
    )
    assert await store.load_pending_deliveries(1) == [pending[2], pending[1], pending[0]]


async def test_list_deliveries_orders_by_creation_then_id(store: Store) -> None:
    later, first, second = (
        make_delivery("a", created_at=NOW + 5),
        make_delivery("c", created_at=NOW),
        make_delivery("d", created_at=NOW),
    )
    await commit(store, deliveries=[later, second, first, make_delivery("x", job_id="other")])
    assert await store.list_deliveries("acme", "j1") == [first, second, later]


async def test_namespaces_are_isolated(store: Store) -> None:
    theirs = make_job(namespace="globex", title="theirs")
    await commit(
        store,
        jobs=[make_job(title="ours"), theirs],
        chunks=[chunk(1, b"ours")],
        deliveries=[make_delivery("d-ours")],
    )
    assert await store.get_job("globex", "j1") == theirs
    assert await store.read_output("globex", "j1") == []
    assert await store.get_delivery("globex", "d-ours") is None
    assert await store.list_deliveries("globex", "j1") == []
    assert [job.title for job in await store.list_jobs("globex", JobQuery())] == ["theirs"]
    await commit(store, deleted=[("globex", "j1")])
    assert await store.get_job("acme", "j1") == make_job(title="ours")
    assert await store.read_output("acme", "j1") == [chunk(1, b"ours")]


# -- persistent backends: schema, sharing, durability ------------------------------------------


async def test_opening_again_keeps_the_data(fresh_url: str) -> None:
    first = open_store(fresh_url)
    await first.open()
    await commit(first, jobs=[full_job()])
    await first.close()
    again = open_store(fresh_url)
    await again.open()
    try:
        assert await again.get_job("acme", full_job().job_id) == full_job()
    finally:
        await again.close()


async def test_concurrent_opens_of_a_new_database_all_succeed(fresh_url: str) -> None:
    stores = [open_store(fresh_url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        await asyncio.gather(*(commit(s, jobs=[make_job(f"j{n}")]) for n, s in enumerate(stores)))
        assert len(await stores[0].list_jobs("acme", JobQuery())) == 4
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_the_sql_schema_is_made_once_and_kept(fresh_sql_url: str) -> None:
    stores = [open_store(fresh_sql_url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    await asyncio.gather(*(store.close() for store in stores))
    again = open_store(fresh_sql_url)
    await again.open()
    try:
        assert await _schema_versions(fresh_sql_url) == SCHEMA_VERSIONS
    finally:
        await again.close()


async def test_two_stores_on_one_database_both_commit(fresh_url: str) -> None:
    stores = [open_store(fresh_url), open_store(fresh_url)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        await asyncio.gather(
            *(
                commit(store, jobs=[make_job(f"s{n}-{i}")], chunks=[chunk(1, job_id=f"s{n}-{i}")])
                for n, store in enumerate(stores)
                for i in range(25)
            )
        )
        listed = await stores[0].list_jobs("acme", JobQuery(limit=100))
        assert len(listed) == 50
        assert await stores[1].read_output("acme", "s0-7") == [chunk(1, job_id="s0-7")]
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_new_owner_on_another_store_fences_the_old_one(fresh_url: str) -> None:
    old, new = open_store(fresh_url), open_store(fresh_url)
    await asyncio.gather(old.open(), new.open())
    try:
        old_epoch = await old.acquire_shard(0, "old")
        new_epoch = await new.acquire_shard(0, "new")
        with pytest.raises(Fenced):
            await commit(old, slot=0, epoch=old_epoch, jobs=[make_job()])
        await commit(new, slot=0, epoch=new_epoch, jobs=[make_job("mine")])
        assert await old.get_job("acme", "j1") is None
        assert await old.get_job("acme", "mine") == make_job("mine")
    finally:
        await asyncio.gather(old.close(), new.close())


async def test_a_closed_store_is_unavailable(fresh_url: str) -> None:
    store = open_store(fresh_url)
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_sqlite_runs_wal_with_synchronous_full(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/new/dir/aos.db")
    await store.open()
    try:
        assert (tmp_path / "new" / "dir" / "aos.db").is_file()
        # Read back on the store's own connection: synchronous is per connection.
        assert await store._fetch("PRAGMA journal_mode") == [("wal",)]
        assert await store._fetch("PRAGMA synchronous") == [(2,)]
        assert await store._fetch("PRAGMA busy_timeout") == [(30_000,)]
    finally:
        await store.close()


async def test_sqlite_on_an_unusable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreUnavailable) as raised:
        await open_store(f"sqlite:///{tmp_path}/file/aos.db").open()
    assert not isinstance(raised.value.__cause__, StoreUnavailable)  # translated, cause kept
    # The driver's text may quote another request's data: it is logged, not sent.
    assert raised.value.message == "the store (sqlite) is unavailable; retry shortly"


def test_sqlite_urls_name_relative_and_absolute_paths() -> None:
    assert path_of("sqlite:///data/aos.db") == "data/aos.db"
    assert path_of("sqlite:////var/lib/aos.db") == "/var/lib/aos.db"
    with pytest.raises(ValueError):
        path_of("sqlite://")


async def test_postgres_refuses_synchronous_commit_off(pg_database: str) -> None:
    store = open_store(pg_database + "?options=-c%20synchronous_commit%3Doff")
    with pytest.raises(StoreUnavailable, match="synchronous_commit=off"):
        await store.open()


async def test_postgres_unreachable_is_unavailable(unused_tcp_port: int) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{unused_tcp_port}/test"
    with pytest.raises(StoreUnavailable) as raised:
        await PostgresStore(url, timeout_s=1).open()
    assert isinstance(raised.value.__cause__, psycopg.Error)
    # Which store, never its password nor the driver's text (logged, not sent).
    where = f"postgresql 127.0.0.1:{unused_tcp_port}/test"
    assert raised.value.message == f"the store ({where}) is unavailable; retry shortly"


async def _schema_versions(url: str) -> list[int]:
    query = "SELECT version FROM schema_version ORDER BY version"
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(path_of(url))) as conn:
            return [row[0] for row in conn.execute(query)]
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return [row[0] for row in await (await conn.execute(query)).fetchall()]
