"""What the MySQL / MariaDB store adds to the contract: the settings it refuses to run on,
an unreachable server, chunks bigger than a packet, and ids compared byte by byte."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage.errors import StoreUnavailable
from storage.mysql import MysqlStore
from storage.mysql_sql import PART_BYTES
from storage.records import Batch, Chunk, Job
from tests.backends import BACKENDS
from tests.backends.mysql import mysql_run
from tests.conftest import IN_CI, free_port

MiB = 1024 * 1024
NOW = 1_700_000_000.0
PASSWORD = "s3cret-never-shown"


@pytest.fixture
def mysql_url(tmp_path: Path) -> Iterator[str]:
    """A database of its own on the test server."""
    BACKENDS["mysql"].need()
    with BACKENDS["mysql"].fresh(tmp_path) as url:
        yield url


@pytest.fixture
async def store(mysql_url: str) -> AsyncIterator[MysqlStore]:
    store = MysqlStore(mysql_url)
    await store.open()
    yield store
    await store.close()


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private mariadbd of our own (its globals are ours to change), started with
    innodb_flush_log_at_trx_commit=2; the URL of its database `aos`."""
    if shutil.which("mariadbd") is None or shutil.which("mariadb-install-db") is None:
        message = "mariadbd is not installed (apt-get install mariadb-server)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(f"SKIPPED LOUDLY: {message}")
    base = tmp_path_factory.mktemp("mariadb")
    subprocess.run(
        [
            *("mariadb-install-db", "--no-defaults", f"--datadir={base}/data", "--user=root"),
            *("--auth-root-authentication-method=normal", "--skip-test-db"),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [
            *("mariadbd", "--no-defaults", f"--datadir={base}/data", "--user=root"),
            *(f"--socket={base}/sock", f"--port={port}", "--bind-address=127.0.0.1"),
            *(f"--pid-file={base}/pid", f"--log-error={base}/err", "--skip-name-resolve"),
            *("--innodb-buffer-pool-size=16M", "--innodb-flush-log-at-trx-commit=2"),
        ],
    )
    try:
        url = f"mysql://root@127.0.0.1:{port}/aos"
        _wait_for(f"mysql://root@127.0.0.1:{port}/mysql", server)
        _blocking_run(f"mysql://root@127.0.0.1:{port}/mysql", "CREATE DATABASE aos")
        yield url
    finally:
        server.terminate()
        server.wait(30)


def _blocking_run(url: str, *statements: str) -> None:
    asyncio.run(mysql_run(url, *statements))


def _wait_for(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _blocking_run(url, "SELECT 1")
            return
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def test_a_server_that_does_not_flush_each_commit_is_refused(private_server: str) -> None:
    store = MysqlStore(private_server)
    with pytest.raises(StoreUnavailable) as refused:
        await store.open()
    assert "innodb_flush_log_at_trx_commit=2" in refused.value.message
    assert "must be 1" in refused.value.message


async def test_a_packet_limit_below_a_chunk_part_is_refused(private_server: str) -> None:
    await mysql_run(
        private_server,
        "SET GLOBAL innodb_flush_log_at_trx_commit = 1",
        "SET GLOBAL max_allowed_packet = 1048576",
    )
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await MysqlStore(private_server).open()
        assert "max_allowed_packet=1048576" in refused.value.message
        await mysql_run(private_server, "SET GLOBAL max_allowed_packet = 4194304")
        store = MysqlStore(private_server)  # at the settings it needs, it opens
        await store.open()
        await store.close()
    finally:
        await mysql_run(private_server, "SET GLOBAL innodb_flush_log_at_trx_commit = 2")


async def test_an_unreachable_server_is_unavailable_soon_and_never_shows_the_password() -> None:
    store = MysqlStore(f"mysql://aos:{PASSWORD}@127.0.0.1:{free_port()}/aos", timeout_s=2)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as refused:
        await store.open()
    assert time.monotonic() - started < 5
    assert PASSWORD not in refused.value.message
    assert f"127.0.0.1:{store._connect_args['port']}/aos" in refused.value.message


async def test_a_wrong_password_is_unavailable_and_never_shown(mysql_url: str) -> None:
    BACKENDS["mysql"].need()
    url = mysql_url.replace("://root@", f"://nobody:{PASSWORD}@")
    with pytest.raises(StoreUnavailable) as refused:
        await MysqlStore(url).open()
    assert PASSWORD not in refused.value.message
    assert PASSWORD not in str(refused.value)


async def test_a_16_mib_chunk_round_trips_in_rows_that_fit_a_packet(
    store: MysqlStore, mysql_url: str
) -> None:
    data = os.urandom(16 * MiB)  # incompressible: stored as is
    chunks = [Chunk("acme", "j", 1, 0, data), Chunk("acme", "j", 2, 16 * MiB, b"tail")]
    epoch = await store.acquire_shard(0, "test")
    job = Job("acme", "j", 0, NOW, NOW, output_seq=2, output_size=16 * MiB + 4)
    await store.commit(Batch(slot=0, epoch=epoch, jobs=[job], chunks=chunks))
    assert await store.read_output("acme", "j") == chunks
    assert await store.read_output_at("acme", "j", offset=15 * MiB) == chunks
    assert await store.read_output("acme", "j", after_seq=1) == chunks[1:]
    parts = await mysql_run(mysql_url, "SELECT COUNT(*), MAX(LENGTH(data)) FROM output_chunk_parts")
    assert parts == [(16 * MiB // PART_BYTES - 1, PART_BYTES)]


async def test_a_purge_removes_a_chunks_further_rows(store: MysqlStore, mysql_url: str) -> None:
    epoch = await store.acquire_shard(0, "test")
    chunk = Chunk("acme", "j", 1, 0, os.urandom(3 * MiB))
    await store.commit(Batch(slot=0, epoch=epoch, jobs=[Job("acme", "j", 0, NOW, NOW)]))
    await store.commit(Batch(slot=0, epoch=epoch, chunks=[chunk], deleted=[("acme", "j")]))
    assert await store.read_output("acme", "j") == []  # hidden at once
    while not await store.purge_output("acme", "j", fence=(0, epoch), max_bytes=MiB):
        pass
    left = await mysql_run(
        mysql_url,
        "SELECT (SELECT COUNT(*) FROM output_chunks) + (SELECT COUNT(*) FROM output_chunk_parts)",
    )
    assert left == [(0,)]


async def test_ids_differing_in_case_or_trailing_spaces_are_different_jobs(
    store: MysqlStore,
) -> None:
    jobs = [Job("acme", job_id, 0, NOW, NOW, title=job_id) for job_id in ("a", "A", "a ")]
    await store.commit(Batch(jobs=jobs))
    assert [await store.get_job("acme", j.job_id) for j in jobs] == jobs


async def test_every_table_is_innodb(store: MysqlStore, mysql_url: str) -> None:
    engines = await mysql_run(
        mysql_url,
        "SELECT DISTINCT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
    )
    assert engines == [("InnoDB",)]
