"""The direct Python client: code inside the Ray cluster calls the shard actors, no HTTP.

    from cluster.client import Client
    c = Client.connect("10.0.0.5:6379")       # as `aos serve` prints it, or RAY_ADDRESS
    c.submit("default", "job-1", metadata={"title": "export"})
    c.submit_many("default", [{"jobId": "job-2"}, {"jobId": "job-3"}])  # a result per job
    c.append("default", "job-1", b"hello ")
    with c.producer("default", "job-1", seq=2) as p:   # pipelined: many chunks in flight
        p.write(b"world")
    c.complete("default", "job-1")
    async for event in c.events("default", "job-1"): ...
    await c.shards.get("default", "job-1")    # the async API (`actors.shard_client`)

Same validation and durability as HTTP, through the same `ShardClient`: every call
returns once its write is durable, and raises the errors of `storage.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import ray

from actors.commands import (
    Completion,
    JobSpec,
    ProgressUpdate,
    check_version,
    parse_output_format,
)
from actors.feed import Event
from actors.limits import check_batch
from actors.shard_client import ShardClient
from actors.shard_types import AppendAck, SubmitItem, SubmitResult
from cluster import ray_connect
from cluster.blocking import run as _run
from cluster.producer import PipelineLimits, Producer
from cluster.settings import Settings
from serve_app.batch import submit_checked
from serve_app.models import SubmitRequest
from storage.errors import AosError, BadRequest
from storage.records import Job, OutputVersion

ACTOR = "python-client"


class Client:
    """Blocking calls for plain Python code; `shards` is the same API for async code."""

    def __init__(self, shards: ShardClient) -> None:
        self.shards = shards

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
        return cls(_run(ShardClient.discover()))

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
        """Create a job (`metadata`: title, description, tags); resubmitting is idempotent."""
        spec = JobSpec.from_metadata(
            metadata,
            output_format=parse_output_format(output_format),
            webhook_url=webhook_url,
            webhook_events=tuple(webhook_events) if webhook_events is not None else None,
            ttl_s=ttl_s,
        )
        job, _ = _run(self.shards.submit(namespace, spec, job_id=job_id, actor=ACTOR))
        return job

    def submit_many(
        self, namespace: str | None, jobs: Sequence[Mapping[str, Any]]
    ) -> list[SubmitResult]:
        """Create up to 1,000 jobs at once, each as `submit` would, with one call (and one
        group commit) per shard: what `POST /api/v1/jobs:batch` does.

        Each job is a dict shaped as the HTTP submit body: `{"jobId"?, "metadata"?: {title,
        description, tags}, "webhookUrl"?, "webhookEvents"?, "retentionPolicy"?: {"ttl"},
        "outputFormat"?, "namespace"?}`; `namespace` is the namespace of the jobs that name
        none (one that names another is refused). One `SubmitResult` per job, in order:
        `.job` with `.created` (False: the same request was accepted before), or `.error`,
        the `AosError` that job alone got: `Invalid` or `TooLarge` for a malformed job,
        `BadRequest` for a namespace missing or differing, `NotFound` for an unknown
        namespace, `Conflict` for an id taken by another request, `Unstorable`; and to retry
        later, `ShardUnavailable`, `StoreUnavailable` or `Overloaded`. More than 1,000 jobs
        raise `TooLarge`, and nothing is submitted.
        """
        check_batch(len(jobs))
        checked = [_item(job, namespace) for job in jobs]
        return _run(submit_checked(self.shards, checked))

    def append(
        self,
        namespace: str,
        job_id: str,
        data: bytes | str,
        *,
        seq: int | None = None,
        version: int | None = None,
    ) -> AppendAck:
        """Append a chunk (text is UTF-8 encoded); with `seq`, retrying is safe; to output
        `version` (default: the latest), which must be the latest and open (`Conflict`)."""
        payload = data.encode() if isinstance(data, str) else data
        return _run(self.shards.append(namespace, job_id, payload, seq=seq, version=version))

    def producer(
        self,
        namespace: str,
        job_id: str,
        *,
        seq: int | None = None,
        version: int | None = None,
        limits: PipelineLimits | None = None,
    ) -> Producer:
        """A pipelined producer of the job's output (`cluster.producer.Producer`): `write`
        queues a chunk, `flush` waits until all are durable; `seq` numbers the first chunk
        (resuming safely); every chunk goes to output `version` (default: the latest when
        the first chunk goes). Use it as a context manager, or `close()` it."""
        return Producer.open(
            self.shards, namespace, job_id, seq=seq, version=version, limits=limits
        )

    def start_version(self, namespace: str, job_id: str) -> Job:
        """Start the job's next output version, for a re-run (`ShardClient.start_version`);
        the job, running it. Retrying is safe: an empty, open latest version is kept."""
        job, _ = _run(self.shards.start_version(namespace, job_id, actor=ACTOR))
        return job

    def versions(self, namespace: str, job_id: str) -> list[OutputVersion]:
        """Every output version of the job, in order (size, SHA-256, times)."""

        async def read() -> list[OutputVersion]:
            return await self.shards.versions(await self.shards.get(namespace, job_id))

        return _run(read())

    def progress(
        self,
        namespace: str,
        job_id: str,
        percent: float | None = None,
        *,
        estimated_completion: float | None = None,
    ) -> Job:
        """Report progress (0..100) and/or an estimated completion (epoch seconds)."""
        update = ProgressUpdate(percent, estimated_completion)
        return _run(self.shards.set_progress(namespace, job_id, update))

    def complete(
        self, namespace: str, job_id: str, status: str = "Succeeded", *, error: str | None = None
    ) -> Job:
        completion = Completion.parse(status, error)
        return _run(self.shards.complete(namespace, job_id, completion))

    def cancel(self, namespace: str, job_id: str) -> Job:
        return _run(self.shards.cancel(namespace, job_id, actor=ACTOR))

    def status(self, namespace: str, job_id: str) -> Job:
        return _run(self.shards.get(namespace, job_id))

    def output(self, namespace: str, job_id: str, *, version: int | None = None) -> bytes:
        """The whole output of `version` (default: the latest) written so far (mind the
        size: use `events` for big outputs)."""

        async def read() -> bytes:
            job = await self.shards.get(namespace, job_id)
            view = await self.shards.version(job, check_version(version))
            return b"".join([chunk.data async for chunk in self.shards.output(view)])

        return _run(read())

    async def events(
        self,
        namespace: str,
        job_id: str,
        *,
        after_seq: int = 0,
        heartbeat_s: float = 15.0,
        version: int | None = None,
    ) -> AsyncIterator[Event]:
        """The job's events (output of `version`, default the latest; status, progress,
        end), resumable from `after_seq`; `event.data()` is the JSON an SSE client gets."""
        events = await self.shards.events(
            namespace, job_id, after_seq=after_seq, heartbeat_s=heartbeat_s, version=version
        )
        async for event in events:
            yield event


def _item(job: object, namespace: str | None) -> SubmitItem | AosError:
    """One job of `submit_many` checked as the HTTP batch checks it, or its error."""
    try:
        request = SubmitRequest.parse(job)
        given = request.namespace
        if given is not None and namespace is not None and given != namespace:
            raise BadRequest(f"the job's namespace {given!r} is not {namespace!r}")
        ns = given if given is not None else namespace
        if ns is None:
            raise BadRequest("say which namespace: submit_many(namespace, ...) or the job's own")
        return SubmitItem(ns, request.job_id, request.spec(), ACTOR)
    except AosError as exc:
        return exc


__all__ = ["Client", "Event", "PipelineLimits", "Producer", "SubmitResult"]
