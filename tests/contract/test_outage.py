"""A database that goes away mid-write, as its client sees it (a proxy cut between them):
writes and reads get `StoreUnavailable` within seconds, never an answer for a write not kept;
once it is back, the same store object works again without reopening."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.base import Store
from storage.errors import StoreUnavailable
from storage.records import Batch, Chunk, Job
from storage.registry import open_store
from tests.backends import BACKENDS, WITH_A_SERVER, TestBackend
from tests.proxy import proxy_to

#: A dead server must be noticed within this (the backends' timeouts are bounded).
NOTICED_S = 30.0
#: ...and a live one again within this.
RECOVERED_S = 30.0


@pytest.fixture(params=WITH_A_SERVER)
def backend(request: pytest.FixtureRequest) -> TestBackend:
    chosen = BACKENDS[request.param]
    chosen.need()
    return chosen


@pytest.fixture
def url(backend: TestBackend, tmp_path: Path) -> Iterator[str]:
    with backend.fresh(tmp_path) as url:
        yield url


def job(job_id: str) -> Job:
    return Job("acme", job_id, 0, 1.0, 1.0)


async def test_a_database_that_goes_away_is_unavailable_then_used_again(
    backend: TestBackend, url: str
) -> None:
    with proxy_to(*backend.server(url)) as proxy:
        store = open_store(backend.via(url, proxy.port))
        await store.open()
        try:
            epoch = await store.acquire_shard(0, "test")
            kept = Batch(slot=0, epoch=epoch, jobs=[job("before")])
            kept.chunks.append(Chunk("acme", "before", 1, 0, b"kept"))
            await store.commit(kept)

            proxy.cut()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.commit(Batch(slot=0, epoch=epoch, jobs=[job("during")]))
            with pytest.raises(StoreUnavailable):
                await store.get_job("acme", "before")
            assert time.monotonic() - started < NOTICED_S

            proxy.restore()
            await _eventually(store, Batch(slot=0, epoch=epoch, jobs=[job("after")]))
            assert await store.get_job("acme", "before") == job("before")
            assert await store.get_job("acme", "after") == job("after")
            assert [c.data for c in await store.read_output("acme", "before")] == [b"kept"]
        finally:
            await store.close()


async def _eventually(store: Store, batch: Batch) -> None:
    """Commit `batch` once the store takes it again, as a client retries a 503."""
    deadline = time.monotonic() + RECOVERED_S
    while True:
        try:
            await store.commit(batch)
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
