"""Shared fixtures: servers the tests need (reachable, or a loud skip / a CI failure), and a
shard over whichever `store` the test's folder provides."""

from __future__ import annotations

import os
import random
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


#: Where `free_port` looks: below Serve's replica ports (30000-31000), above the replicas'
#: stream ports (22000-23000) and Ray's worker ports (10002-19999), and outside Linux's
#: ephemeral range (32768-60999), whose ports Ray's own processes take as they start: a
#: port the kernel handed out free was taken by a Ray process of the very service started
#: on it before that service bound it ("port ... already in use").
FREE_PORTS = range(23100, 30000)
_handed_out: set[int] = set()
#: Its own generator: Hypothesis seeds the `random` module's for each example it runs.
_random = random.SystemRandom()


def free_port() -> int:
    """A port of `FREE_PORTS` free now on 127.0.0.1 and not handed out before in this run."""
    for _ in range(1000):
        port = _random.choice(FREE_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {FREE_PORTS}")


@pytest.fixture
async def shard(store: Store) -> AsyncIterator[Shard]:
    """A started shard of `store` (the folder's fixture) holding namespaces acme and globex."""
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    await shard.namespaces.create("acme", NamespaceChanges(), actor="test")
    await shard.namespaces.create("globex", NamespaceChanges(), actor="test")
    yield shard
    await shard.stop()
