"""Shared fixtures: servers the tests need (reachable, or a loud skip / a CI failure), and a
shard over whichever `store` the test's folder provides."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

import pytest

from actors.namespace_settings import NamespaceChanges
from actors.shard import Shard, ShardConfig
from storage.base import Store

IN_CI = os.environ.get("CI") == "true"
POSTGRES_URL = os.environ.get("AOS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def need_server(host: str, port: int, what: str) -> None:
    """Fail in CI, skip loudly elsewhere, when a server a test needs is not listening."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        message = f"{what} is not reachable at {host}:{port} ({exc}); `make services` starts it"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(f"SKIPPED LOUDLY: {message}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def shard(store: Store) -> AsyncIterator[Shard]:
    """A started shard of `store` (the folder's fixture) holding namespaces acme and globex."""
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    await shard.namespaces.create("acme", NamespaceChanges(), actor="test")
    await shard.namespaces.create("globex", NamespaceChanges(), actor="test")
    yield shard
    await shard.stop()
