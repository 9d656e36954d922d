"""A store that goes down: the writes after its first failed commit are refused at once, never
reaching it, until a probe finds it answering; then the shard writes again by itself. The
ingress's key lookups likewise."""

from __future__ import annotations

import asyncio

import pytest

from actors.commands import Completion, JobSpec
from actors.outage import StoreOutage
from actors.shard_types import SubmitItem
from serve_app.keys import KeyCache, key_hash, mint
from storage.errors import StoreUnavailable
from storage.memory import MemoryStore
from storage.records import ApiKey, Batch, JobStatus
from tests.unit.fakes import until

#: "At once": far below any store timeout (PostgreSQL's is 10 s), whatever the machine.
AT_ONCE_S = 1.0


async def _down(store, shards) -> None:
    """The store goes away under a write, which fails with it."""
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.append("acme", "j1", b"kept")
    store.fail_commits = True
    with pytest.raises(StoreUnavailable):
        await shards.append("acme", "j1", b"lost")


async def test_writes_after_a_failed_commit_are_refused_at_once_without_reaching_the_store(
    shard, shards, store
):
    await _down(store, shards)
    assert shard.store_down
    store.gate = asyncio.Event()  # a commit would now hang, as one to a dead server does
    store.arrived.clear()
    attempts = store.attempts
    async with asyncio.timeout(AT_ONCE_S):
        with pytest.raises(StoreUnavailable) as refused:
            await shards.append("acme", "j1", b"new", seq=2)
        with pytest.raises(StoreUnavailable):
            await shards.complete("acme", "j1", Completion(JobStatus.SUCCEEDED))
        with pytest.raises(StoreUnavailable):
            await shards.cancel("acme", "j1")
        [submitted] = await shard.submit_many([SubmitItem("acme", "j2", JobSpec())])
        many = await shard.append_many("acme", job_id="j1", chunks=[b"x"])
    assert refused.value.retry_after_s and refused.value.retry_after_s >= 1
    assert isinstance(submitted.error, StoreUnavailable)
    assert many.acks == () and isinstance(many.error, StoreUnavailable)
    assert store.attempts == attempts and not store.arrived.is_set()


async def test_the_shard_writes_again_once_the_store_answers_a_probe(shard, shards, store):
    await _down(store, shards)
    await asyncio.sleep(0.8)  # probes fail meanwhile: still down
    assert shard.store_down
    store.fail_commits = False
    await until(lambda: not shard.store_down)
    assert (await shards.append("acme", "j1", b"next", seq=2)).seq == 2
    assert [c.data for c in await store.read_output("acme", "j1")] == [b"kept", b"next"]
    job, created = await shards.submit("acme", JobSpec(), job_id="j2")
    assert created and await store.get_job("acme", "j2") == job


async def test_reads_of_what_is_committed_go_on_while_the_store_is_down(shard, shards, store):
    await _down(store, shards)
    job = await shards.get("acme", "j1")
    assert job.output_seq == 1 and job.status is JobStatus.RUNNING


async def test_the_probe_pings_until_the_store_answers_then_stops():
    answers = [False, False, True]
    pings = 0

    async def ping() -> None:
        nonlocal pings
        pings += 1
        if not answers[pings - 1]:
            raise StoreUnavailable("down")

    outage = StoreOutage(ping, probe_interval_s=0.01, retry_after_s=3.0)
    outage.check()  # up: nothing raised
    outage.begin()
    outage.begin()  # a second failure meanwhile: still one probe
    with pytest.raises(StoreUnavailable) as refused:
        outage.check()
    assert refused.value.retry_after_s == 3.0
    await until(lambda: not outage.down)
    await asyncio.sleep(0.05)
    assert pings == 3
    outage.check()
    await outage.stop()


class _KeyStore(MemoryStore):
    """Keys from memory; down (every call `StoreUnavailable`) while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.lookups = 0

    async def ping(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        self.lookups += 1
        if self.down:
            raise StoreUnavailable("down")
        return await super().get_api_key(key_id)


async def test_key_lookups_fail_at_once_while_the_store_is_down_then_work_again():
    store = _KeyStore()
    await store.open()
    key, secret = mint(("acme",), now=0.0)
    await store.commit(Batch(api_keys=[key]))
    keys = KeyCache(store, admin_key_sha256=key_hash("admin"), ttl_s=0.0)
    bearer = f"Bearer {secret}"
    store.down = True
    with pytest.raises(StoreUnavailable):
        await keys.authenticate(bearer)  # found out: the store's own failure
    with pytest.raises(StoreUnavailable) as refused:
        await keys.authenticate(bearer)  # at once, without asking the store
    assert store.lookups == 1 and refused.value.retry_after_s
    assert (await keys.authenticate("Bearer admin")).admin  # the admin key needs no store
    store.down = False
    await until(lambda: keys_answer(keys, bearer), timeout_s=5)
    assert (await keys.authenticate(bearer)).namespaces == {"acme"}


async def keys_answer(keys: KeyCache, bearer: str) -> bool:
    try:
        await keys.authenticate(bearer)
    except StoreUnavailable:
        return False
    return True
