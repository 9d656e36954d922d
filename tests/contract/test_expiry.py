"""The Store contract for retention: the expired-jobs query (every backend), its index,
a deletion that fails part-way and the migration that gave old jobs their expiry (SQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from storage.base import Store
from storage.errors import AosError
from storage.records import Batch, Chunk, Delivery, Job, JobStatus, OutputVersion
from storage.registry import open_store
from storage.sql import EXPIRED_AFTER, EXPIRED_JOBS, POSTGRES, SQLITE, pending_migrations
from storage.sqlite import path_of

NOW = 1_700_000_000.5
DONE = JobStatus.SUCCEEDED


def job(job_id: str, *, expires_at: float | None, slot: int = 0, **changes: Any) -> Job:
    fields: dict[str, Any] = {"status": DONE, "completed_at": NOW - 100, **changes}
    return Job("acme", job_id, slot, NOW - 200, NOW - 100, expires_at=expires_at, **fields)


async def expired(store: Store, **options: Any) -> list[str]:
    return [j.job_id for j in await store.expired_jobs(0, now=NOW, **options)]


async def test_expired_jobs_are_the_slots_finished_jobs_past_their_expiry(store: Store) -> None:
    await store.commit(
        Batch(
            jobs=[
                job("later", expires_at=NOW - 1),
                job("first", expires_at=NOW - 50),
                job("now", expires_at=NOW),  # at `now` is expired
                job("future", expires_at=NOW + 0.001),
                job("kept", expires_at=None),
                job("running", expires_at=NOW - 60, status=JobStatus.RUNNING, completed_at=None),
                job("other-slot", expires_at=NOW - 70, slot=1),
                job("cancelled", expires_at=NOW - 5, status=JobStatus.CANCELLED),
            ]
        )
    )
    assert await expired(store) == ["first", "cancelled", "later", "now"]
    found = await store.expired_jobs(1, now=NOW)
    assert [(j.job_id, j.expires_at) for j in found] == [("other-slot", NOW - 70)]


async def test_expired_jobs_stop_at_the_limit_and_go_on_after_the_cursor(store: Store) -> None:
    # Ties on expires_at are ordered by namespace, then job id.
    tied = [job(f"t{i}", expires_at=NOW - 10) for i in (3, 1, 2)]
    await store.commit(Batch(jobs=[job("a", expires_at=NOW - 20), *tied]))
    assert await expired(store, limit=2) == ["a", "t1"]
    assert await expired(store, after=(NOW - 10, "acme", "t1"), limit=2) == ["t2", "t3"]
    assert await expired(store, after=(NOW - 20, "acme", "a")) == ["t1", "t2", "t3"]
    assert await expired(store, after=(NOW - 10, "acme", "t3")) == []
    assert await expired(store, limit=0) == []


async def test_a_deleted_job_is_no_longer_expired(store: Store) -> None:
    await store.commit(Batch(jobs=[job("a", expires_at=NOW - 1), job("b", expires_at=NOW - 1)]))
    await store.commit(Batch(deleted=[("acme", "a")]))
    assert await expired(store) == ["b"]


# -- SQL backends ---------------------------------------------------------------------------


async def test_the_expired_jobs_query_is_served_by_its_index(fresh_sql_url: str) -> None:
    store = open_store(fresh_sql_url)
    await store.open()
    try:
        await store.commit(Batch(jobs=[job(f"j{i}", expires_at=NOW - i) for i in range(50)]))
    finally:
        await store.close()
    for after in ("", EXPIRED_AFTER):
        sql = EXPIRED_JOBS.format(after=after)
        params = (0, NOW, *((NOW - 9, "acme", "j9") if after else ()), 10)
        plan = _plan(fresh_sql_url, sql, params)
        assert "jobs_expiring_by_slot" in plan, plan


async def test_a_deletion_that_fails_part_way_leaves_the_job_whole(fresh_sql_url: str) -> None:
    """The job row, its chunks and its versions are deleted before its deliveries (one
    transaction): a failure at the deliveries must take none of them."""
    store = open_store(fresh_sql_url)
    await store.open()
    try:
        doomed = job("j1", expires_at=NOW - 1, output_seq=1, output_size=3, output_version=2)
        chunk = Chunk("acme", "j1", 1, 0, b"out")
        first = OutputVersion("acme", "j1", 1, 1, 3, created_at=NOW, completed_at=NOW, sha256="a")
        delivery = Delivery(
            "d1", "acme", "j1", 0, "job.completed", "https://h.example/", b"{}", NOW
        )
        await store.commit(
            Batch(jobs=[doomed], chunks=[chunk], versions=[first], deliveries=[delivery])
        )
        _run(fresh_sql_url, _FAIL_DELIVERY_DELETES[_dialect(fresh_sql_url)])
        with pytest.raises(AosError):
            await store.commit(Batch(deleted=[("acme", "j1")]))
        assert await store.get_job("acme", "j1") == doomed
        assert await store.read_output("acme", "j1") == [chunk]
        assert await store.list_deliveries("acme", "j1") == [delivery]
        assert await store.list_versions("acme", "j1") == [first]
        assert await expired(store) == ["j1"]
    finally:
        await store.close()


async def test_jobs_finished_before_migration_2_expire_by_their_own_ttl(
    fresh_sql_url: str,
) -> None:
    dialect = POSTGRES if _dialect(fresh_sql_url) == "postgres" else SQLITE
    [(_, version_1), *_] = pending_migrations(dialect, 0)
    columns = "namespace, job_id, slot, created_at, updated_at, status, progress, tags, ttl_s,"
    columns += " completed_at, output_format, revision, output_seq, output_size, request_hash"
    insert = f"INSERT INTO jobs ({columns}) VALUES (?, ?, 0, 1.0, 1.0, ?, 0, '[]', ?, ?,"
    insert += " 'text', 1, 0, 0, '')"
    _run(
        fresh_sql_url,
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at FLOAT)",
        *version_1,
        "INSERT INTO schema_version (version, applied_at) VALUES (1, 0)",
        (insert, ("acme", "ttl", "Succeeded", 60, NOW)),
        (insert, ("acme", "no-ttl", "Failed", None, NOW)),
        (insert, ("acme", "running", "Running", 60, None)),
    )
    store = open_store(fresh_sql_url)
    await store.open()
    try:
        expiries = {
            j.job_id: j.expires_at
            for j in await store.get_jobs("acme", ["ttl", "no-ttl", "running"])
        }
        assert expiries == {"ttl": NOW + 60, "no-ttl": None, "running": None}
    finally:
        await store.close()


_FAIL_DELIVERY_DELETES = {
    "sqlite": "CREATE TRIGGER crash AFTER DELETE ON webhook_deliveries"
    " BEGIN SELECT RAISE(ABORT, 'crash'); END",
    "postgres": "CREATE FUNCTION crash() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN RAISE EXCEPTION 'crash'; END $$;"
    " CREATE TRIGGER crash AFTER DELETE ON webhook_deliveries"
    " FOR EACH ROW EXECUTE FUNCTION crash()",
}

Statement = str | tuple[str, Sequence[Any]]


def _dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres"


def _run(url: str, *statements: Statement) -> list[tuple[Any, ...]]:
    """Run `statements` (`?` placeholders) in one transaction; the last one's rows."""
    rows: list[tuple[Any, ...]] = []
    if _dialect(url) == "sqlite":
        Path(path_of(url)).parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path_of(url))) as conn, conn:
            for sql, params in map(_split, statements):
                rows = conn.execute(sql, params or ()).fetchall()
        return rows
    with psycopg.connect(url) as conn:
        for sql, params in map(_split, statements):
            cur = conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
            rows = cur.fetchall() if cur.description else []
    return rows


def _split(statement: Statement) -> tuple[str, Sequence[Any] | None]:
    # No parameters: psycopg then runs it as a simple query, which may hold several.
    return (statement, None) if isinstance(statement, str) else statement


def _plan(url: str, sql: str, params: Sequence[Any]) -> str:
    """The query plan of `sql`, as text; PostgreSQL told to avoid a sequential scan if it
    can (its planner may prefer one on a table this small)."""
    if _dialect(url) == "sqlite":
        return str(_run(url, ("EXPLAIN QUERY PLAN " + sql, params)))
    with psycopg.connect(url) as conn, psycopg.ClientCursor(conn) as cur:
        cur.execute("SET enable_seqscan = off")
        cur.execute("EXPLAIN " + sql.replace("?", "%s"), params)
        return str(cur.fetchall())
