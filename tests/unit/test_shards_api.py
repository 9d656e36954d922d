"""`GET /api/v1/admin/shards` and a namespace's `shard`, without Ray: two in-process shards,
one of which may stop answering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from actors.routing import shard_for
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from storage.memory import MemoryStore
from tests.unit.test_api import ADMIN, error_of, http, make_app, new_tenant

SHARDS = "/api/v1/admin/shards"


class Silent:
    """A shard that never answers (restarting, or on a node just lost)."""

    def __getattr__(self, name: str) -> Any:
        async def hang(*args: Any, **kwargs: Any) -> Any:
            await asyncio.Event().wait()

        return hang


@pytest.fixture
async def two_shards(store: MemoryStore) -> AsyncIterator[list[Any]]:
    shards: list[Any] = [Shard(store, ShardConfig(slot=s, num_shards=2)) for s in range(2)]
    for shard in shards:
        await shard.start()
    yield shards
    for shard in shards:
        await shard.stop()


def client(store: MemoryStore, shards: list[Any]) -> httpx.AsyncClient:
    return http(make_app(store, ShardClient.in_process(shards, store=store)))


async def test_the_listing_gives_every_shard_with_its_figures(store, two_shards):
    async with client(store, two_shards) as api:
        acme = await new_tenant(api, "acme")
        for job_id in ("j1", "j2"):
            assert (await api.post("/api/v1/jobs", json={"jobId": job_id}, headers=acme)).is_success
        listing = await api.get(SHARDS, headers=ADMIN)
    assert listing.status_code == 200
    rows = listing.json()
    assert [row["slot"] for row in rows] == [0, 1]
    assert {tuple(row) for row in rows} == {
        ("slot", "node", "epoch", "liveJobs", "pendingWrites", "state")
    }
    assert all(row["state"] == "serving" and row["epoch"] >= 1 for row in rows)
    assert all(row["pendingWrites"] == 0 and row["node"] is None for row in rows)  # no Ray here
    owner = shard_for("acme", 2)
    assert rows[owner]["liveJobs"] == 2 and rows[1 - owner]["liveJobs"] == 0


async def test_a_shard_that_does_not_answer_is_unavailable_and_the_listing_answers_at_once(
    store, two_shards
):
    async with client(store, [two_shards[0], Silent()]) as api:
        started = time.monotonic()
        rows = (await api.get(SHARDS, headers=ADMIN)).json()
        took_s = time.monotonic() - started
    assert rows[0]["state"] == "serving"
    assert rows[1] == {
        "slot": 1,
        "node": None,
        "epoch": None,
        "liveJobs": None,
        "pendingWrites": None,
        "state": "unavailable",
    }
    assert took_s < 30  # bounded (about 2 s), not waiting for the silent shard


async def test_a_fenced_shard_says_so(store, two_shards):
    async with client(store, two_shards) as api:
        acme = await new_tenant(api, "acme")
        owner = shard_for("acme", 2)
        usurper = Shard(store, ShardConfig(slot=owner, num_shards=2))
        await usurper.start()  # a newer copy takes the slot's lease
        append = await api.post("/api/v1/jobs", json={"jobId": "j"}, headers=acme)
        assert error_of(append, 503)["code"] == "shard_fenced"
        rows = (await api.get(SHARDS, headers=ADMIN)).json()
        await usurper.stop()
    assert rows[owner]["state"] == "fenced" and rows[owner]["epoch"] < usurper.epoch
    assert rows[1 - owner]["state"] == "serving"


async def test_the_listing_needs_the_admin_key(store, two_shards):
    async with client(store, two_shards) as api:
        acme = await new_tenant(api, "acme")
        assert error_of(await api.get(SHARDS), 401)["code"] == "unauthorized"
        assert error_of(await api.get(SHARDS, headers=acme), 403)["code"] == "forbidden"


async def test_a_namespace_shows_the_slot_of_its_shard(store, two_shards):
    async with client(store, two_shards) as api:
        acme = await new_tenant(api, "acme")
        for headers in (ADMIN, acme):
            got = await api.get("/api/v1/namespaces/acme", headers=headers)
            assert got.json()["shard"] == shard_for("acme", 2)
        patched = await api.patch("/api/v1/namespaces/acme", json={}, headers=ADMIN)
        assert patched.json()["shard"] == shard_for("acme", 2)
