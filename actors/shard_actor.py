"""The Ray edge of a shard: a named, restartable async actor around `actors.shard.Shard`."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from actors.routing import RAY_NAMESPACE, shard_name
from actors.shard import AppendAck, Shard, ShardConfig, Update
from actors.validation import JobSpec
from actors.webhooks.dispatcher import dispatcher_handle
from actors.webhooks.dispatcher_client import DispatcherClient
from storage.base import Store, open_store
from storage.errors import Invalid
from storage.records import ApiKey, Chunk, Delivery, Job, JobStatus, Namespace

#: Async actor concurrency: every open SSE stream and long-poll holds one slot while it waits.
MAX_CONCURRENCY = 10_000


@ray.remote(  # type: ignore[call-overload]  # Ray's stubs lack max_concurrency
    num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=MAX_CONCURRENCY
)
class ShardActor:
    """One slot's owner. After a restart the constructor runs again and state reloads lazily."""

    def __init__(self, config: ShardConfig, store_url: str) -> None:
        self._config = config
        self._store_url = store_url
        self._store: Store | None = None
        self._shard: Shard | None = None
        self._starting: asyncio.Lock | None = None

    async def _ready(self) -> Shard:
        if self._shard is not None:
            return self._shard
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self._shard is None:
                store = open_store(self._store_url)
                await store.open()
                owner = f"{os.getpid()}@{ray.util.get_node_ip_address()}"
                dispatcher = DispatcherClient(_cached(dispatcher_handle))
                shard = Shard(store, self._config, owner=owner, send=dispatcher.send)
                await shard.start()
                self._store, self._shard = store, shard
        return self._shard

    async def ready(self) -> dict[str, Any]:
        return (await self._ready()).stats()

    async def ping(self) -> None:
        """Readiness: the shard is started and its store answers."""
        await self._ready()
        assert self._store is not None
        await self._store.ping()

    async def stats(self) -> dict[str, Any]:
        return (await self._ready()).stats()

    async def create_namespace(self, name: str, config: dict[str, Any], actor: str) -> Namespace:
        return await (await self._ready()).namespaces.create(name, config, actor=actor)

    async def get_namespace(self, name: str) -> Namespace:
        return await (await self._ready()).namespaces.get(name)

    async def update_namespace(self, name: str, changes: dict[str, Any], actor: str) -> Namespace:
        return await (await self._ready()).namespaces.update(name, changes, actor=actor)

    async def rotate_webhook_secret(self, name: str, grace_s: float, actor: str) -> Namespace:
        return await (await self._ready()).namespaces.rotate_secret(
            name, grace_s=grace_s, actor=actor
        )

    async def retry_delivery(self, namespace: str, delivery_id: str, actor: str) -> Delivery:
        return await (await self._ready()).retry_delivery(namespace, delivery_id, actor=actor)

    async def put_api_key(self, namespace: str, key: ApiKey, actor: str) -> None:
        if namespace not in key.namespaces:
            raise Invalid(f"key {key.key_id!r} is not a key of namespace {namespace!r}")
        await (await self._ready()).namespaces.put_api_key(key, actor=actor)

    async def submit(
        self, namespace: str, job_id: str | None, spec: JobSpec, actor: str = ""
    ) -> tuple[Job, bool]:
        return await (await self._ready()).submit(namespace, job_id, spec, actor=actor)

    async def append(
        self, namespace: str, job_id: str, data: bytes, seq: int | None = None
    ) -> AppendAck:
        return await (await self._ready()).append(namespace, job_id, data, seq=seq)

    async def set_progress(
        self,
        namespace: str,
        job_id: str,
        progress: float | None = None,
        estimated_completion: float | None = None,
    ) -> Job:
        return await (await self._ready()).set_progress(
            namespace, job_id, progress=progress, estimated_completion=estimated_completion
        )

    async def complete(
        self, namespace: str, job_id: str, status: JobStatus, error: str | None = None
    ) -> Job:
        return await (await self._ready()).complete(namespace, job_id, status, error=error)

    async def cancel(self, namespace: str, job_id: str, actor: str = "") -> Job:
        return await (await self._ready()).cancel(namespace, job_id, actor=actor)

    async def delete(self, namespace: str, job_id: str, actor: str = "") -> None:
        await (await self._ready()).delete(namespace, job_id, actor=actor)

    async def get(self, namespace: str, job_id: str) -> Job:
        return await (await self._ready()).get(namespace, job_id)

    async def watch(
        self,
        namespace: str,
        job_id: str,
        revision: int | None = None,
        after_seq: int | None = None,
        timeout_s: float = 0.0,
    ) -> Update:
        return await (await self._ready()).watch(
            namespace, job_id, revision=revision, after_seq=after_seq, timeout_s=timeout_s
        )

    async def read_output(
        self, namespace: str, job_id: str, after_seq: int = 0, limit: int = 256
    ) -> list[Chunk]:
        return await (await self._ready()).read_output(
            namespace, job_id, after_seq=after_seq, limit=limit
        )


def create_shards(
    *, num_shards: int, store_url: str, config: dict[str, Any] | None = None
) -> list[Any]:
    """Create (or find) the named shard actors; await `ready` on each before use."""
    handles = []
    for slot in range(num_shards):
        shard_config = ShardConfig(slot=slot, num_shards=num_shards, **(config or {}))
        handle = ShardActor.options(  # type: ignore[attr-defined]
            name=shard_name(slot),
            namespace=RAY_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        ).remote(shard_config, store_url)
        handles.append(handle)
    return handles


def _cached(factory: Any) -> Any:
    """A getter that calls `factory` once it succeeds (the dispatcher may deploy later)."""
    value: list[Any] = []

    def get() -> Any:
        if not value:
            value.append(factory())
        return value[0]

    return get
