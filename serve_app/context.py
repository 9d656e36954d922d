"""What every request handler of a replica shares: config, the store, shard handles, key cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from actors.routing import RAY_NAMESPACE, shard_for, shard_name
from serve_app.keys import KeyCache
from storage.base import Store, open_store


@dataclass(frozen=True)
class ApiConfig:
    store_url: str
    num_shards: int
    admin_key_sha256: str
    max_chunk_bytes: int = 4 * 1024 * 1024
    max_wait_s: float = 60.0
    heartbeat_s: float = 15.0
    key_cache_s: float = 1.0
    max_inline_output_bytes: int = 16 * 1024 * 1024
    sse_retry_ms: int = 3000


class Context:
    """Opened once per replica; handlers reach it through `get()`."""

    def __init__(self, config: ApiConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.keys = KeyCache(
            store, admin_key_sha256=config.admin_key_sha256, ttl_s=config.key_cache_s
        )
        self._shards: dict[int, Any] = {}

    def shard(self, namespace: str) -> Any:
        """The handle of the shard actor that owns `namespace`."""
        return self._handle(shard_for(namespace, self.config.num_shards))

    def _handle(self, slot: int) -> Any:
        handle = self._shards.get(slot)
        if handle is None:
            handle = self._shards[slot] = ray.get_actor(shard_name(slot), namespace=RAY_NAMESPACE)
        return handle

    async def call(self, namespace: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a shard method; errors arrive as our own (unwrapped by serve_app.errors)."""
        return await getattr(self.shard(namespace), method).remote(namespace, *args, **kwargs)

    async def ping_shards(self) -> None:
        refs = [self._handle(slot).ping.remote() for slot in range(self.config.num_shards)]
        for ref in refs:
            await ref


_CONTEXT: Context | None = None


async def open_context(config: ApiConfig) -> Context:
    global _CONTEXT
    store = open_store(config.store_url)
    await store.open()
    _CONTEXT = Context(config, store)
    return _CONTEXT


def get() -> Context:
    if _CONTEXT is None:
        raise RuntimeError("the API context is not open")
    return _CONTEXT
