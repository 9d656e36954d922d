"""A shard copy that is cut off but still alive (its node lost to Ray, not to the network
it writes over) acknowledges no write once a newer copy took the slot's lease: two real
shard actors of one slot on one store, as Ray leaves them when it restarts a shard
elsewhere while the old process still runs."""

from __future__ import annotations

import pytest
import ray
from ray.exceptions import RayTaskError

from actors.commands import JobSpec
from actors.namespace_settings import NamespaceChanges
from actors.shard_actor import ShardActor, placement
from actors.shard_types import ShardConfig
from storage.errors import Fenced
from storage.registry import open_store

pytestmark = pytest.mark.e2e


async def test_a_cut_off_copy_acknowledges_no_write_once_a_newer_copy_took_the_lease(
    service, tmp_path
):
    url = f"sqlite:///{tmp_path}/fenced.db"
    config = ShardConfig(slot=0, num_shards=1)
    old = ShardActor.options(**placement()).remote(config, url)  # type: ignore[attr-defined]
    new = None
    try:
        await old.create_namespace.remote("acme", changes=NamespaceChanges())
        await old.submit.remote("acme", job_id="j", spec=JobSpec())
        await old.append.remote("acme", job_id="j", chunks=[b"1,"], seq=1)
        new = ShardActor.options(**placement()).remote(config, url)  # type: ignore[attr-defined]
        await new.ping.remote()  # started: it holds the lease now

        for _ in range(2):  # refused, and refused again: a fenced copy stays fenced
            with pytest.raises(RayTaskError) as refused:
                await old.append.remote("acme", job_id="j", chunks=[b"stale,"], seq=2)
            assert isinstance(refused.value.cause, Fenced)
        with pytest.raises(RayTaskError) as refused:
            await old.submit.remote("acme", job_id="k", spec=JobSpec())
        assert isinstance(refused.value.cause, Fenced)
        old_stats, new_stats = await old.stats.remote(), await new.stats.remote()
        assert old_stats["state"] == "fenced" and new_stats["state"] == "serving"
        assert new_stats["epoch"] > old_stats["epoch"]

        ack = await new.append.remote("acme", job_id="j", chunks=[b"2,"], seq=2)
        assert ack.seq == 2
        store = open_store(url)
        await store.open()
        try:
            chunks = await store.read_output("acme", "j", version=1)
            assert [chunk.data for chunk in chunks] == [b"1,", b"2,"]
            assert await store.get_job("acme", "k") is None
        finally:
            await store.close()
    finally:
        for actor in (old, new):
            if actor is not None:
                ray.kill(actor, no_restart=True)
