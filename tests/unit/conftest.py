"""Unit tests drive the plain-Python core over the in-memory store; Ray is off limits here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import ray

from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from tests.unit.fakes import GatedStore, Watched


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `ray.init` (and Ray's auto-init, which calls it) fail: unit tests run without Ray."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests run without Ray; put Ray tests under tests/e2e")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
async def store() -> GatedStore:
    store = GatedStore()
    await store.open()
    return store


@pytest.fixture
def shards(shard: Shard) -> ShardClient:
    """The shard as every caller reaches it: through a `ShardClient` (here without Ray)."""
    return ShardClient.in_process([shard])


@pytest.fixture
async def watched(store: GatedStore) -> AsyncIterator[Watched]:
    """A started shard over `store` whose watches tests can count (`Watched`)."""
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    yield Watched(shard)
    await shard.stop()
