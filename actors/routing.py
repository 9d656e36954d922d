"""Which shard owns a namespace: rendezvous hashing over the shard count."""

from __future__ import annotations

import hashlib

#: The Ray namespace that holds our named actors.
RAY_NAMESPACE = "aos"


def shard_for(namespace: str, num_shards: int) -> int:
    """The slot that owns `namespace`. Adding a shard moves only ~1/N of namespaces."""
    if num_shards < 1:
        raise ValueError("num_shards must be >= 1")
    return max(range(num_shards), key=lambda slot: _weight(namespace, slot))


def shard_name(slot: int) -> str:
    return f"aos-shard-{slot}"


def _weight(namespace: str, slot: int) -> int:
    digest = hashlib.blake2b(f"{slot}\x00{namespace}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
