"""The Ray edge of a shard: a named, restartable async actor around `actors.shard.Shard`.

Its methods are `actors.shard_client.ShardApi`, each handed to the shard as is; callers
reach them through `ShardClient`, never by name.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Sequence
from typing import Any

import ray

from actors import metrics
from actors.commands import Completion, JobSpec, ProgressUpdate
from actors.limits import OUTPUT_PAGE_BYTES
from actors.namespace_settings import NamespaceChanges
from actors.routing import RAY_NAMESPACE, shard_name
from actors.shard import Shard
from actors.shard_client import COALESCED
from actors.shard_types import (
    AppendAck,
    AppendManyResult,
    ShardConfig,
    SubmitItem,
    SubmitResult,
    Update,
)
from actors.webhooks.dispatcher import dispatcher_handle
from actors.webhooks.dispatcher_client import DispatcherClient
from storage.records import ApiKey, Chunk, Delivery, Job, Namespace, OutputVersion
from storage.registry import open_store

#: What a shard takes of its node's `ShardConfig.node_resource`: 1 of it holds 1,000 shards.
RESOURCE_PER_SHARD = 0.001
#: Async actor concurrency: every long-poll holds one slot while it waits, and each job's
#: SSE streams one per `Api` replica (`actors.watch_hub`).
MAX_CONCURRENCY = 10_000
#: How often a shard samples its gauges (write buffer, outbox) for the metrics export.
GAUGES_INTERVAL_S = 2.0


@ray.remote(  # type: ignore[call-overload]  # Ray's stubs lack max_concurrency
    num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=MAX_CONCURRENCY
)
class ShardActor:
    """One slot's owner. After a restart the constructor runs again and wakes the actor, which
    takes the slot's lease and reloads its running jobs (`Shard.start`)."""

    def __init__(self, config: ShardConfig, store_url: str) -> None:
        self._config = config
        self._store_url = store_url
        self._shard: Shard | None = None
        self._starting: asyncio.Lock | None = None
        self._gauges: asyncio.Task[None] | None = None
        # Wake at once, restarted or not: reads go to the store and may never call a shard,
        # yet its pending webhook deliveries must go on. The call runs after this returns.
        self._woken = ray.get_runtime_context().current_actor.ping.remote()

    async def _ready(self) -> Shard:
        if self._shard is not None:
            return self._shard
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self._shard is None:
                store = open_store(self._store_url)
                await store.open()
                owner = f"{os.getpid()}@{ray.util.get_node_ip_address()}"  # type: ignore[no-untyped-call]
                dispatcher = DispatcherClient(_cached(dispatcher_handle))
                shard = Shard(store, self._config, owner=owner, send=dispatcher.send_many)
                # No collection while the slot's Running jobs load: they all live on, and
                # the collections their objects set off only walked them again, ~40% of
                # the reload's CPU at 200,000 jobs (DESIGN-NOTES "A million live jobs").
                gc.disable()
                try:
                    await shard.start()
                finally:
                    gc.enable()
                # What the process holds by now (Ray's, Serve's and our modules, the jobs
                # just reloaded) lives as long as it does: keep it out of every later full
                # collection, which otherwise walked it all: ~90 ms each, 0.47 s of the
                # shard's CPU for 20,000 batch-submitted jobs with webhooks, 0.15 s after.
                gc.freeze()
                self._shard = shard
                self._gauges = asyncio.get_running_loop().create_task(_sample_gauges(shard))
        return self._shard

    async def ping(self) -> None:
        """Readiness: the shard is started and its store answers."""
        await (await self._ready()).ping()

    async def stats(self) -> dict[str, Any]:
        """The shard's figures (`Shard.stats`) and the Ray node it runs on, at once: a shard
        still starting (taking its lease, reloading its jobs) says so instead of waiting."""
        node = ray.get_runtime_context().get_node_id()
        if self._shard is None:
            return {
                "slot": self._config.slot,
                "node": node,
                "state": "starting",
                "maxChunkBytes": self._config.max_chunk_bytes,
            }
        return {**await self._shard.stats(), "node": node}

    async def many(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Writes coalesced by one caller (`actors.shard_client.COALESCED`): `(method, args,
        kwargs)` each, started in order and so committed together; each one's result, or
        the error it raised, in the same order."""
        shard = await self._ready()
        for name, _, _ in calls:
            if name not in COALESCED:
                raise ValueError(f"{name!r} is not a coalesced write")
        return await asyncio.gather(
            *(getattr(shard, name)(*args, **kwargs) for name, args, kwargs in calls),
            return_exceptions=True,
        )

    async def submit(
        self, namespace: str, *, job_id: str, spec: JobSpec, actor: str = ""
    ) -> tuple[Job, bool]:
        return await (await self._ready()).submit(namespace, job_id=job_id, spec=spec, actor=actor)

    async def submit_many(self, items: Sequence[SubmitItem]) -> list[SubmitResult]:
        return await (await self._ready()).submit_many(items)

    async def append(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        seq: int | None = None,
        version: int | None = None,
    ) -> AppendAck:
        shard = await self._ready()
        return await shard.append(namespace, job_id=job_id, chunks=chunks, seq=seq, version=version)

    async def append_many(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        first_seq: int | None = None,
        version: int | None = None,
    ) -> AppendManyResult:
        shard = await self._ready()
        return await shard.append_many(
            namespace, job_id=job_id, chunks=chunks, first_seq=first_seq, version=version
        )

    async def set_progress(self, namespace: str, *, job_id: str, update: ProgressUpdate) -> Job:
        return await (await self._ready()).set_progress(namespace, job_id=job_id, update=update)

    async def complete(self, namespace: str, *, job_id: str, completion: Completion) -> Job:
        shard = await self._ready()
        return await shard.complete(namespace, job_id=job_id, completion=completion)

    async def cancel(self, namespace: str, *, job_id: str, actor: str = "") -> Job:
        return await (await self._ready()).cancel(namespace, job_id=job_id, actor=actor)

    async def delete(self, namespace: str, *, job_id: str, actor: str = "") -> None:
        await (await self._ready()).delete(namespace, job_id=job_id, actor=actor)

    async def start_version(
        self, namespace: str, *, job_id: str, actor: str = ""
    ) -> tuple[Job, bool]:
        return await (await self._ready()).start_version(namespace, job_id=job_id, actor=actor)

    async def list_versions(self, namespace: str, *, job_id: str) -> list[OutputVersion]:
        return await (await self._ready()).list_versions(namespace, job_id=job_id)

    async def get(self, namespace: str, *, job_id: str) -> Job:
        return await (await self._ready()).get(namespace, job_id=job_id)

    async def watch(
        self,
        namespace: str,
        *,
        job_id: str,
        revision: int | None = None,
        after_seq: int | None = None,
        timeout_s: float = 0.0,
    ) -> Update:
        shard = await self._ready()
        return await shard.watch(
            namespace, job_id=job_id, revision=revision, after_seq=after_seq, timeout_s=timeout_s
        )

    async def read_output(
        self,
        namespace: str,
        *,
        job_id: str,
        version: int,
        after_seq: int = 0,
        limit: int = 256,
        max_bytes: int = OUTPUT_PAGE_BYTES,
    ) -> list[Chunk]:
        shard = await self._ready()
        return await shard.read_output(
            namespace,
            job_id=job_id,
            version=version,
            after_seq=after_seq,
            limit=limit,
            max_bytes=max_bytes,
        )

    async def read_output_at(
        self,
        namespace: str,
        *,
        job_id: str,
        version: int,
        offset: int,
        limit: int = 256,
        max_bytes: int = OUTPUT_PAGE_BYTES,
    ) -> list[Chunk]:
        shard = await self._ready()
        return await shard.read_output_at(
            namespace,
            job_id=job_id,
            version=version,
            offset=offset,
            limit=limit,
            max_bytes=max_bytes,
        )

    async def create_namespace(
        self, namespace: str, *, changes: NamespaceChanges, actor: str = ""
    ) -> Namespace:
        shard = await self._ready()
        return await shard.create_namespace(namespace, changes=changes, actor=actor)

    async def get_namespace(self, namespace: str) -> Namespace:
        return await (await self._ready()).get_namespace(namespace)

    async def update_namespace(
        self, namespace: str, *, changes: NamespaceChanges, actor: str = ""
    ) -> Namespace:
        shard = await self._ready()
        return await shard.update_namespace(namespace, changes=changes, actor=actor)

    async def rotate_webhook_secret(
        self, namespace: str, *, grace_s: float, actor: str = ""
    ) -> Namespace:
        shard = await self._ready()
        return await shard.rotate_webhook_secret(namespace, grace_s=grace_s, actor=actor)

    async def put_api_key(self, namespace: str, *, key: ApiKey, actor: str = "") -> None:
        await (await self._ready()).put_api_key(namespace, key=key, actor=actor)

    async def retry_delivery(
        self, namespace: str, *, delivery_id: str, actor: str = ""
    ) -> Delivery:
        shard = await self._ready()
        return await shard.retry_delivery(namespace, delivery_id=delivery_id, actor=actor)


def create_shards(
    *, num_shards: int, store_url: str, config: dict[str, Any] | None = None
) -> list[Any]:
    """Create (or find) the named shard actors; await `ping` on each before use.

    They are spread over the cluster's nodes (`placement`); a copy Ray restarts after its
    node died is placed the same way, on the nodes alive then.
    """
    handles = []
    for slot in range(num_shards):
        shard_config = ShardConfig(slot=slot, num_shards=num_shards, **(config or {}))
        handle = ShardActor.options(  # type: ignore[attr-defined]
            name=shard_name(slot),
            namespace=RAY_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            **placement(shard_config.node_resource),
        ).remote(shard_config, store_url)
        handles.append(handle)
    return handles


async def _sample_gauges(shard: Shard) -> None:
    """Keep the shard's gauges current while the actor lives (Ray exports the last value)."""
    while True:
        stats = await shard.stats()
        metrics.record_shard_gauges(
            stats["slot"],
            pending_writes=stats["pendingWrites"],
            outbox_depth=stats["pendingDeliveries"],
        )
        await asyncio.sleep(GAUGES_INTERVAL_S)


def placement(node_resource: str = "") -> dict[str, Any]:
    """Where shard actors run: spread over the nodes (Ray's `SPREAD`: round robin over the
    nodes that can take one), so losing one of N nodes loses about 1/N of the shards;
    only on nodes offering `node_resource`, when named (`RESOURCE_PER_SHARD` each: any
    number of shards fit; it marks nodes, it does not count them). Still `num_cpus=0`."""
    options: dict[str, Any] = {"scheduling_strategy": "SPREAD"}
    if node_resource:
        options["resources"] = {node_resource: RESOURCE_PER_SHARD}
    return options


def _cached(factory: Callable[[], Any]) -> Callable[[], Any]:
    """A getter that calls `factory` once it succeeds (the dispatcher may deploy later)."""
    value: list[Any] = []

    def get() -> Any:
        if not value:
            value.append(factory())
        return value[0]

    return get
