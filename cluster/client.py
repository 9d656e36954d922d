"""The direct Python client: code inside the Ray cluster calls the shard actors, no HTTP.

    from cluster.client import Client
    c = Client.connect("10.0.0.5:6379")       # as `aos serve` prints it, or RAY_ADDRESS
    c.submit("default", "job-1", metadata={"title": "export"})
    c.append("default", "job-1", b"hello ")
    c.complete("default", "job-1")
    async for event in c.events("default", "job-1"): ...

Same validation and durability as HTTP: every call returns once its write is durable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ray

from actors.feed import Event, job_events
from actors.routing import RAY_NAMESPACE, shard_for, shard_name
from actors.shard import AppendAck, Update
from actors.validation import JobSpec
from cluster import ray_connect
from cluster.settings import Settings
from storage.records import Chunk, Job, JobStatus, OutputFormat


class Client:
    def __init__(self, num_shards: int) -> None:
        self._num_shards = num_shards
        self._shards: dict[int, Any] = {}

    @classmethod
    def connect(cls, address: str | None = None) -> Client:
        """Find the service's shard actors; join its Ray cluster first if this process has not.

        Inside the cluster (a Ray task, actor or job) the process is already connected and
        `address` is not needed. Elsewhere it is the address `aos serve` prints
        (`host:port` or `ray://host:port`), or `RAY_ADDRESS`; never a guess, which could
        land in another service's cluster. Raises `ValueError` without an address,
        `RayUnreachable` when nothing answers there, `RuntimeError` when the cluster runs
        no Async Output Service.
        """
        if not ray.is_initialized():
            address = address or Settings().ray_address
            if address is None:
                raise ValueError(
                    "Client.connect needs the service's Ray address: pass it or set "
                    "RAY_ADDRESS (`aos serve` prints it as 'Ray address: ...')"
                )
            ray_connect.connect(address)
        names = {
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == RAY_NAMESPACE
        }
        num_shards = 0
        while shard_name(num_shards) in names:
            num_shards += 1
        if not num_shards:
            raise RuntimeError("no Async Output Service shards in this Ray cluster")
        return cls(num_shards)

    def shard(self, namespace: str) -> Any:
        """The actor owning `namespace`, for async code: `await c.shard(ns).get.remote(...)`."""
        slot = shard_for(namespace, self._num_shards)
        if slot not in self._shards:
            self._shards[slot] = ray.get_actor(shard_name(slot), namespace=RAY_NAMESPACE)
        return self._shards[slot]

    def submit(
        self,
        namespace: str,
        job_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        output_format: str = "text",
        webhook_url: str | None = None,
        webhook_events: list[str] | None = None,
        ttl_s: int | None = None,
    ) -> Job:
        spec = JobSpec.from_metadata(
            metadata,
            output_format=OutputFormat(output_format),
            webhook_url=webhook_url,
            webhook_events=tuple(webhook_events) if webhook_events is not None else None,
            ttl_s=ttl_s,
        )
        job, _ = self._call(namespace, "submit", job_id, spec, "python-client")
        return job

    def append(
        self, namespace: str, job_id: str, data: bytes | str, *, seq: int | None = None
    ) -> AppendAck:
        payload = data.encode() if isinstance(data, str) else data
        ack: AppendAck = self._call(namespace, "append", job_id, payload, seq)
        return ack

    def progress(
        self,
        namespace: str,
        job_id: str,
        percent: float | None = None,
        *,
        estimated_completion: float | None = None,
    ) -> Job:
        return self._job(namespace, "set_progress", job_id, percent, estimated_completion)

    def complete(
        self, namespace: str, job_id: str, status: str = "Succeeded", *, error: str | None = None
    ) -> Job:
        return self._job(namespace, "complete", job_id, JobStatus(status), error)

    def cancel(self, namespace: str, job_id: str) -> Job:
        return self._job(namespace, "cancel", job_id, "python-client")

    def status(self, namespace: str, job_id: str) -> Job:
        return self._job(namespace, "get", job_id)

    def output(self, namespace: str, job_id: str) -> bytes:
        """The whole output written so far (mind the size: use `events` for big outputs)."""
        job = self.status(namespace, job_id)
        parts, pos = [], 0
        while pos < job.output_seq:
            chunks: list[Chunk] = self._call(namespace, "read_output", job_id, pos, 256)
            if not chunks:
                break
            parts.extend(c.data for c in chunks if c.seq <= job.output_seq)
            pos = chunks[-1].seq
        return b"".join(parts)

    async def events(
        self, namespace: str, job_id: str, *, after_seq: int = 0, heartbeat_s: float = 15.0
    ) -> AsyncIterator[Event]:
        """The job's events (output, status, progress, end), resumable from `after_seq`."""
        shard = self.shard(namespace)
        job: Job = await shard.get.remote(namespace, job_id)

        async def watch(revision: int, pos: int, timeout_s: float) -> Update:
            update: Update = await shard.watch.remote(namespace, job_id, revision, pos, timeout_s)
            return update

        async def read(pos: int, limit: int) -> list[Chunk]:
            chunks: list[Chunk] = await shard.read_output.remote(namespace, job_id, pos, limit)
            return chunks

        async for event in job_events(
            job, watch=watch, read=read, after_seq=after_seq, heartbeat_s=heartbeat_s
        ):
            yield event

    def _job(self, namespace: str, method: str, *args: Any) -> Job:
        job: Job = self._call(namespace, method, *args)
        return job

    def _call(self, namespace: str, method: str, *args: Any) -> Any:
        return ray.get(getattr(self.shard(namespace), method).remote(namespace, *args))


__all__ = ["Client", "Event"]
