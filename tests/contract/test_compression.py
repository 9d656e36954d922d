"""Output chunks at rest (storage/codec.py): compressed when that saves space, flagged per
chunk, read back exactly by every SQL backend, rows of either kind side by side."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from storage import codec
from storage.base import Store
from storage.errors import StoreUnavailable
from storage.records import Batch, Chunk, Job
from storage.registry import open_store
from storage.sql import SQLITE, pending_migrations
from storage.sqlite import path_of

LOG_LINE = b"2026-11-30T01:02:03.456Z INFO worker-7 step=%d loss=0.%04d elapsed_ms=%d status=ok\n"


def log_text(size: int) -> bytes:
    lines = b"".join(LOG_LINE % (i, i % 9973, i % 997) for i in range(size // 60 + 1))
    return lines[:size]


@pytest.fixture
async def sql_store(fresh_sql_url: str) -> AsyncIterator[tuple[Store, str]]:
    store = open_store(fresh_sql_url)
    await store.open()
    yield store, fresh_sql_url
    await store.close()


async def stored_encodings(url: str) -> dict[int, str | None]:
    query = "SELECT seq, encoding FROM output_chunks WHERE job_id = 'j1' ORDER BY seq"
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(path_of(url))) as conn:
            return dict(conn.execute(query).fetchall())
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return dict(await (await conn.execute(query)).fetchall())  # type: ignore[arg-type]


def job() -> Job:
    return Job("acme", "j1", 0, 1.0, 1.0)


async def test_each_chunk_is_stored_compressed_only_when_that_saves_space(
    sql_store: tuple[Store, str],
) -> None:
    store, url = sql_store
    text, noise, tiny = log_text(100_000), os.urandom(100_000), b"short line\n"
    chunks = [
        Chunk("acme", "j1", 1, 0, text),
        Chunk("acme", "j1", 2, len(text), noise),
        Chunk("acme", "j1", 3, len(text) + len(noise), tiny),
    ]
    await store.commit(Batch(jobs=[job()], chunks=chunks))
    assert await stored_encodings(url) == {1: codec.ZSTD, 2: None, 3: None}
    assert await store.read_output("acme", "j1") == chunks


async def test_rows_written_before_compression_read_back_beside_new_ones(tmp_path: Path) -> None:
    """A database from schema 1 (no encoding column) migrates; its chunks read as before."""
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn:
        for ddl in pending_migrations(SQLITE, 0)[0][1]:
            conn.execute(ddl)
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        conn.execute(
            "INSERT INTO output_chunks VALUES ('acme', 'j1', 1, 1, 0, ?)", (log_text(5000),)
        )
        conn.commit()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        await store.commit(Batch(chunks=[Chunk("acme", "j1", 2, 5000, log_text(5000))]))
        chunks = await store.read_output("acme", "j1")
        assert [c.data for c in chunks] == [log_text(5000), log_text(5000)]
        assert await stored_encodings(f"sqlite:///{path}") == {1: None, 2: codec.ZSTD}
    finally:
        await store.close()


async def change_stored(url: str, query: str, value: object) -> None:
    """Run `query` (one `%s` parameter) on the store's database behind its back."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(path_of(url))) as conn:
            conn.execute(query.replace("%s", "?"), (value,))
            conn.commit()
        return
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(query, (value,))  # type: ignore[arg-type]


async def test_a_corrupt_or_unknown_stored_chunk_is_a_store_fault_never_wrong_output(
    sql_store: tuple[Store, str],
) -> None:
    store, url = sql_store
    await store.commit(Batch(jobs=[job()], chunks=[Chunk("acme", "j1", 1, 0, log_text(9000))]))
    # A zstd frame header, then nothing: what a torn or bit-rotted frame looks like.
    await change_stored(
        url, "UPDATE output_chunks SET data = %s WHERE seq = 1", b"(\xb5/\xfd\x00\xff"
    )
    with pytest.raises(StoreUnavailable, match="corrupt"):
        await store.read_output("acme", "j1")
    await change_stored(url, "UPDATE output_chunks SET encoding = %s WHERE seq = 1", "lzma")
    with pytest.raises(StoreUnavailable, match="unknown encoding"):
        await store.read_output("acme", "j1")


async def test_log_text_takes_under_a_quarter_of_its_size_on_disk(tmp_path: Path) -> None:
    """The issue's bar (200 MB of log text in under 25% on disk; bench/output.py measures
    that) on 24 MiB here: chunks of 4 MiB, the WAL checkpointed into the file."""
    url = f"sqlite:///{tmp_path}/aos.db"
    store = open_store(url)
    await store.open()
    size, chunk_bytes = 24 * 1024 * 1024, 4 * 1024 * 1024
    text = log_text(size)
    chunks = [
        Chunk("acme", "j1", i + 1, offset, text[offset : offset + chunk_bytes])
        for i, offset in enumerate(range(0, size, chunk_bytes))
    ]
    try:
        await store.commit(Batch(jobs=[job()], chunks=chunks))
        assert b"".join(c.data for c in await store.read_output("acme", "j1")) == text
    finally:
        await store.close()
    with closing(sqlite3.connect(path_of(url))) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk < size / 4, f"{on_disk} bytes on disk for {size} of log text"


async def test_sqlite_gives_a_purged_jobs_space_back_to_the_file_system(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/aos.db"
    store = open_store(url)
    await store.open()
    fence = (0, await store.acquire_shard(0, "me"))
    noise = os.urandom(4 * 1024 * 1024)  # incompressible: 32 MiB stored as they are
    chunks = [Chunk("acme", "j1", i + 1, i * len(noise), noise) for i in range(8)]
    try:
        await store.commit(Batch(jobs=[job()], chunks=chunks))
        full = _disk_bytes(tmp_path)
        await store.commit(Batch(slot=0, epoch=fence[1], deleted=[("acme", "j1")]))
        steps = 0
        while not await store.purge_output("acme", "j1", fence=fence, max_bytes=8 * 1024 * 1024):
            steps += 1
    finally:
        await store.close()
    assert steps == 4  # 8 chunks of 4 MiB, two a step
    assert full > 32 * 1024 * 1024 and _disk_bytes(tmp_path) < 4 * 1024 * 1024


def _disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())
