"""The one typed way to reach the shards: commands checked, routed, Ray's errors unwrapped.

The HTTP ingress, the Python client and the CLI call shards only through `ShardClient`.
Its methods mirror the shard's operations (`ShardApi`), with keyword-only options;
they check what the caller passed (namespace, job id, chunk size) before the hop, route
by namespace (`actors.routing`), and raise our own errors (`storage.errors`): a shard
actor that is restarting becomes `ShardUnavailable`. `events` is the replay-then-watch
iterator over one job, the same for SSE and the Python client; the iterators of one job
share one watch on its shard (`actors.watch_hub`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import pickle
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, cast

from actors.commands import (
    Completion,
    JobSpec,
    ProgressUpdate,
    check_grace_s,
    check_id,
    check_job_id,
    check_namespace,
    check_seq,
    check_version,
    new_job_id,
)
from actors.feed import Event, job_events, replay
from actors.limits import (
    MAX_APPEND_MANY_BYTES,
    MAX_APPEND_MANY_CHUNKS,
    MAX_CHUNK_BYTES,
    OUTPUT_PAGE_BYTES,
    check_chunk,
    check_size,
)
from actors.namespace_settings import NamespaceChanges
from actors.pieces import Pieces
from actors.resume import ResumePoint, resume_after
from actors.routing import RAY_NAMESPACE, shard_for, shard_name
from actors.shard_types import AppendAck, AppendManyResult, SubmitItem, SubmitResult, Update
from actors.watch_hub import WatchHub
from storage.base import Store
from storage.errors import AosError, NotFound, ShardUnavailable
from storage.records import ApiKey, Chunk, Delivery, Job, Namespace, OutputVersion

SHARD_RESTART_RETRY_AFTER_S = 1.0
#: The longest a call to a shard actor may take (a `watch`: this beyond its own wait) before
#: the caller gets `ShardUnavailable`: calls to an actor whose node died, or that Ray is
#: restarting, wait in the caller until it is back (DESIGN-NOTES.md, "Shards over many nodes").
CALL_TIMEOUT_S = 30.0
#: The bound while a service starts (`discover`): a shard's first call waits for its start,
#: which reloads its Running jobs (seconds for hundreds of thousands).
START_TIMEOUT_S = 300.0


class ShardApi(Protocol):
    """A shard's operations: `actors.shard.Shard` in process, `ShardActor` through Ray."""

    async def submit(
        self, namespace: str, *, job_id: str, spec: JobSpec, actor: str = ""
    ) -> tuple[Job, bool]: ...
    async def submit_many(self, items: Sequence[SubmitItem]) -> list[SubmitResult]: ...
    async def append(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        seq: int | None = None,
        version: int | None = None,
    ) -> AppendAck: ...
    async def append_many(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        first_seq: int | None = None,
        version: int | None = None,
    ) -> AppendManyResult: ...
    async def set_progress(self, namespace: str, *, job_id: str, update: ProgressUpdate) -> Job: ...
    async def complete(self, namespace: str, *, job_id: str, completion: Completion) -> Job: ...
    async def cancel(self, namespace: str, *, job_id: str, actor: str = "") -> Job: ...
    async def delete(self, namespace: str, *, job_id: str, actor: str = "") -> None: ...
    async def start_version(
        self, namespace: str, *, job_id: str, actor: str = ""
    ) -> tuple[Job, bool]: ...
    async def list_versions(self, namespace: str, *, job_id: str) -> list[OutputVersion]: ...
    async def get(self, namespace: str, *, job_id: str) -> Job: ...
    async def watch(
        self,
        namespace: str,
        *,
        job_id: str,
        revision: int | None = None,
        after_seq: int | None = None,
        timeout_s: float = 0.0,
    ) -> Update: ...
    async def read_output(
        self,
        namespace: str,
        *,
        job_id: str,
        version: int,
        after_seq: int = 0,
        limit: int = 256,
        max_bytes: int = OUTPUT_PAGE_BYTES,
    ) -> list[Chunk]: ...
    async def read_output_at(
        self,
        namespace: str,
        *,
        job_id: str,
        version: int,
        offset: int,
        limit: int = 256,
        max_bytes: int = OUTPUT_PAGE_BYTES,
    ) -> list[Chunk]: ...
    async def create_namespace(
        self, namespace: str, *, changes: NamespaceChanges, actor: str = ""
    ) -> Namespace: ...
    async def get_namespace(self, namespace: str) -> Namespace: ...
    async def update_namespace(
        self, namespace: str, *, changes: NamespaceChanges, actor: str = ""
    ) -> Namespace: ...
    async def rotate_webhook_secret(
        self, namespace: str, *, grace_s: float, actor: str = ""
    ) -> Namespace: ...
    async def put_api_key(self, namespace: str, *, key: ApiKey, actor: str = "") -> None: ...
    async def retry_delivery(
        self, namespace: str, *, delivery_id: str, actor: str = ""
    ) -> Delivery: ...
    async def ping(self) -> None: ...
    async def stats(self) -> dict[str, Any]: ...


class ShardClient:
    """Typed calls to the shard that owns each namespace.

    `shards` finds the shard of a slot: by default the named Ray actors, found lazily
    (`ShardClient.in_process` takes plain `Shard` objects, for tests without Ray).
    `store`, when given, serves reads of committed jobs and output directly, sparing the
    shard; else they go through the shard. `max_chunk_bytes` is the deployment's
    largest append (`TooLarge` above it). `call_timeout_s` bounds each call to a shard actor
    (`CALL_TIMEOUT_S`).
    """

    def __init__(
        self,
        *,
        num_shards: int,
        shards: Callable[[int], ShardApi] | None = None,
        store: Store | None = None,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        if num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        self.num_shards = num_shards
        self.max_chunk_bytes = max_chunk_bytes
        #: The most bytes one `append_many` call carries (at least one chunk's worth).
        self.max_many_bytes = max(MAX_APPEND_MANY_BYTES, max_chunk_bytes)
        self._find = shards or functools.partial(_actor_shard, call_timeout_s=call_timeout_s)
        self.call_timeout_s = call_timeout_s
        self._shards: dict[int, ShardApi] = {}
        self._store = store
        #: The streams of one job in this process share one watch on its shard (`events`).
        self.hub = WatchHub(self._shared_watch)

    @classmethod
    def in_process(cls, shards: Sequence[ShardApi], *, store: Store | None = None) -> ShardClient:
        """A client over shard objects in this process (no Ray), e.g. `actors.shard.Shard`."""
        return cls(num_shards=len(shards), shards=shards.__getitem__, store=store)

    @classmethod
    async def discover(
        cls,
        *,
        num_shards: int | None = None,
        store: Store | None = None,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> ShardClient:
        """A client for the service running in this process's Ray cluster (Ray connected),
        once every shard answers; with the deployment's limits, which the shards hold.

        `num_shards` defaults to the number of shard actors found. Raises `RuntimeError`
        when the cluster runs no Async Output Service.
        """
        if num_shards is None:
            num_shards = _count_shard_actors()
        probe = cls(num_shards=num_shards, call_timeout_s=max(call_timeout_s, START_TIMEOUT_S))
        await probe.ping_all()
        stats = await probe.shard(0).stats()
        return cls(
            num_shards=num_shards,
            store=store,
            max_chunk_bytes=stats["maxChunkBytes"],
            call_timeout_s=call_timeout_s,
        )

    def shard(self, slot: int) -> ShardApi:
        found = self._shards.get(slot)
        if found is None:
            found = self._shards[slot] = self._find(slot)
        return found

    def owner(self, namespace: str) -> ShardApi:
        """The shard that owns `namespace` (checked: `Invalid`, `TooLarge`)."""
        return self.shard(shard_for(check_namespace(namespace), self.num_shards))

    # -- jobs -----------------------------------------------------------------------------

    async def submit(
        self, namespace: str, spec: JobSpec, *, job_id: str | None = None, actor: str = ""
    ) -> tuple[Job, bool]:
        """Create a job (a new id when `job_id` is None): `(job, created)`; resubmitting the
        same request with the same id gives `(job, False)`, a different one `Conflict`."""
        job_id = check_job_id(job_id) if job_id is not None else new_job_id()
        return await self.owner(namespace).submit(namespace, job_id=job_id, spec=spec, actor=actor)

    async def submit_many(self, items: Sequence[SubmitItem]) -> list[SubmitResult]:
        """Create jobs, each as `submit` would: one result per item, in the items' order.

        Items may name any namespaces, and any number of them; the items of each shard go
        to it in one call (one group commit there), the shards concurrently. An item with a
        malformed namespace or job id gets its error (`Invalid`, `TooLarge`) and reaches no
        shard; one without a job id gets a new one. Each of a shard's items gets the error
        of a call that failed as a whole (`ShardUnavailable` while it restarts).
        """
        results: list[SubmitResult | None] = [None] * len(items)
        groups: dict[int, tuple[list[int], list[SubmitItem]]] = {}
        slots: dict[str, int] = {}
        for index, item in enumerate(items):
            try:
                slot = slots.get(item.namespace)
                if slot is None:
                    slot = shard_for(check_namespace(item.namespace), self.num_shards)
                    slots[item.namespace] = slot
                checked = _with_job_id(item)
            except AosError as exc:
                results[index] = SubmitResult(error=exc)
                continue
            indexes, group = groups.setdefault(slot, ([], []))
            indexes.append(index)
            group.append(checked)
        calls = [self._submit_to(slot, group) for slot, (_, group) in groups.items()]
        replies = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
        for (indexes, _), reply in zip(groups.values(), replies, strict=True):
            for index, result in zip(indexes, reply, strict=True):
                results[index] = result
        return cast(list[SubmitResult], results)

    async def _submit_to(self, slot: int, items: list[SubmitItem]) -> list[SubmitResult]:
        try:
            return await self.shard(slot).submit_many(items)
        except AosError as exc:  # the call failed as a whole: each of its items did
            return [SubmitResult(error=exc)] * len(items)

    async def append(
        self,
        namespace: str,
        job_id: str,
        data: bytes | Pieces,
        *,
        seq: int | None = None,
        version: int | None = None,
    ) -> AppendAck:
        """Append `data` (1 byte .. `MAX_APPEND_BYTES`, or `Pieces` already cut), stored as
        chunks of at most `max_chunk_bytes` with consecutive seqs, all or none; with `seq`
        (the first chunk's) a retry is idempotent. The ack's `seq` is the last chunk's: a
        producer numbering its appends sends the next one with `seq=ack.seq + 1`. `version`
        (default: the latest) must be the latest output version, still open: `Conflict`
        when it is complete, `NotFound` when there is no such version."""
        shard = self.owner(namespace)
        if not isinstance(data, Pieces):
            data = Pieces.of(data, self.max_chunk_bytes)
        chunks = data.chunks()
        if seq is not None:
            check_seq(seq)
            check_seq(seq + len(chunks) - 1)
        return await shard.append(
            namespace,
            job_id=check_job_id(job_id),
            chunks=_out_of_band(chunks),
            seq=seq,
            version=check_version(version),
        )

    def pieces(self) -> Pieces:
        """An empty `Pieces` that cuts an append's bytes as they arrive, for `append`."""
        return Pieces(self.max_chunk_bytes)

    async def append_many(
        self,
        namespace: str,
        job_id: str,
        chunks: Sequence[bytes],
        *,
        first_seq: int | None = None,
        version: int | None = None,
    ) -> AppendManyResult:
        """Append `chunks` in order, the new ones in one group commit; with `first_seq`, chunk
        i has seq `first_seq + i` and a retry is idempotent; to output `version` (default:
        the latest), as `append` (`Shard.append_many`).

        At most `MAX_APPEND_MANY_CHUNKS` chunks and `max_many_bytes` bytes a call (`TooLarge`,
        nothing sent). A chunk this client refuses (empty, over `max_chunk_bytes`) ends the
        call there, as one the shard refuses: the chunks before it are sent and acknowledged,
        the result's error is its error. Raises only for bad arguments (nothing written) and
        `ShardUnavailable` (the call's outcome is unknown: retry with `first_seq`).
        """
        shard, job_id = self.owner(namespace), check_job_id(job_id)
        check_version(version)
        check_size("an append_many call", len(chunks), MAX_APPEND_MANY_CHUNKS, "chunks")
        if first_seq is not None:
            check_seq(first_seq)
            check_seq(first_seq + max(len(chunks) - 1, 0))
        checked: list[bytes] = []
        refused: AosError | None = None
        for data in chunks:
            try:
                checked.append(check_chunk(data, self.max_chunk_bytes))
            except AosError as exc:
                refused = exc
                break
        check_size("an append_many call", sum(map(len, checked)), self.max_many_bytes, "bytes")
        if not checked:
            return AppendManyResult((), refused)
        result = await shard.append_many(
            namespace, job_id=job_id, chunks=checked, first_seq=first_seq, version=version
        )
        if result.error is None and refused is not None:
            return AppendManyResult(result.acks, refused)
        return result

    async def set_progress(self, namespace: str, job_id: str, update: ProgressUpdate) -> Job:
        return await self.owner(namespace).set_progress(
            namespace, job_id=check_job_id(job_id), update=update
        )

    async def complete(self, namespace: str, job_id: str, completion: Completion) -> Job:
        return await self.owner(namespace).complete(
            namespace, job_id=check_job_id(job_id), completion=completion
        )

    async def cancel(self, namespace: str, job_id: str, *, actor: str = "") -> Job:
        return await self.owner(namespace).cancel(
            namespace, job_id=check_job_id(job_id), actor=actor
        )

    async def delete(self, namespace: str, job_id: str, *, actor: str = "") -> None:
        await self.owner(namespace).delete(namespace, job_id=check_job_id(job_id), actor=actor)

    async def start_version(
        self, namespace: str, job_id: str, *, actor: str = ""
    ) -> tuple[Job, bool]:
        """Start the job's next output version (a re-run; `Shard.start_version`): `(job,
        created)`; `created` False when the latest version was still empty and open, and
        is the one to write to (a retried request)."""
        return await self.owner(namespace).start_version(
            namespace, job_id=check_job_id(job_id), actor=actor
        )

    async def earlier_versions(self, job: Job) -> list[OutputVersion]:
        """The output versions of `job` (as fetched) before its latest, in order, complete;
        no read while it has one."""
        if job.output_version == 1:
            return []
        if self._store is not None:
            earlier = await self._store.list_versions(job.namespace, job.job_id)
        else:
            shard = self.owner(job.namespace)
            earlier = await shard.list_versions(job.namespace, job_id=job.job_id)
        return [version for version in earlier if version.version < job.output_version]

    async def versions(self, job: Job) -> list[OutputVersion]:
        """Every output version of `job` (as fetched), in order: the earlier ones, complete,
        then its latest (`Job.current_version`)."""
        return [*await self.earlier_versions(job), job.current_version]

    async def version(self, job: Job, number: int | None = None) -> OutputVersion:
        """Output version `number` of `job` (as fetched; None: its latest); `NotFound` when
        the job has no such version."""
        if number is None or number == job.output_version:
            return job.current_version
        if number < job.output_version:
            for version in await self.versions(job):
                if version.version == number:
                    return version
        raise NotFound(f"job {job.job_id!r} has no output version {number}")

    async def get(self, namespace: str, job_id: str) -> Job:
        """The job as committed. From the store when this client has one, sparing the shard
        a call: every acknowledged write is there, and nothing unacknowledged is."""
        shard, job_id = self.owner(namespace), check_job_id(job_id)
        if self._store is None:
            return await shard.get(namespace, job_id=job_id)
        job = await self._store.get_job(namespace, job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
        return job

    async def watch(
        self,
        namespace: str,
        job_id: str,
        *,
        revision: int | None = None,
        after_seq: int | None = None,
        timeout_s: float = 0.0,
    ) -> Update:
        """The committed job once its revision differs from `revision` or its output passes
        `after_seq`, or after `timeout_s` (capped by the shard) either way."""
        return await self.owner(namespace).watch(
            namespace,
            job_id=check_job_id(job_id),
            revision=revision,
            after_seq=after_seq,
            timeout_s=timeout_s,
        )

    async def read_output(
        self,
        namespace: str,
        job_id: str,
        *,
        version: int,
        after_seq: int = 0,
        limit: int = 256,
        max_bytes: int = OUTPUT_PAGE_BYTES,
    ) -> list[Chunk]:
        """A page of committed chunks of output `version` with seq > `after_seq`, in order:
        at most `limit`, and about `max_bytes` (`Store.read_output`). From the store when
        this client has one: the output is immutable once committed."""
        shard, job_id = self.owner(namespace), check_job_id(job_id)
        page = {"after_seq": after_seq, "limit": limit, "max_bytes": max_bytes}
        if self._store is not None:
            return await self._store.read_output(namespace, job_id, version=version, **page)
        return await shard.read_output(namespace, job_id=job_id, version=version, **page)

    async def read_output_at(
        self,
        namespace: str,
        job_id: str,
        *,
        version: int,
        offset: int,
        limit: int = 256,
        max_bytes: int = OUTPUT_PAGE_BYTES,
    ) -> list[Chunk]:
        """A page of committed chunks of output `version` from the one holding byte `offset`,
        in order, as `read_output` pages (an index look-up, not a scan:
        `Store.read_output_at`)."""
        shard, job_id = self.owner(namespace), check_job_id(job_id)
        page = {"offset": offset, "limit": limit, "max_bytes": max_bytes}
        if self._store is not None:
            return await self._store.read_output_at(namespace, job_id, version=version, **page)
        return await shard.read_output_at(namespace, job_id=job_id, version=version, **page)

    def output(
        self, version: OutputVersion, *, after_seq: int = 0, span: tuple[int, int] | None = None
    ) -> AsyncIterator[Chunk]:
        """The committed chunks of output `version` (as fetched: up to its `last_seq`) after
        `after_seq`, page by page; with `span` (its first byte, the byte past its last), from
        the chunk holding the first byte instead (an index look-up: a Range request), the
        first page no bigger than the span needs. Output that ends before `last_seq` was
        deleted while it was read: `NotFound` then, never a short answer that looks whole."""
        pending = span
        namespace, job_id, number = version.namespace, version.job_id, version.version

        async def read(pos: int, limit: int) -> list[Chunk]:
            nonlocal pending
            if pending is not None:
                (start, stop), pending = pending, None
                return await self.read_output_at(
                    namespace,
                    job_id,
                    version=number,
                    offset=start,
                    limit=limit,
                    max_bytes=min(OUTPUT_PAGE_BYTES, max(1, stop - start)),
                )
            return await self.read_output(
                namespace, job_id, version=number, after_seq=pos, limit=limit
            )

        chunks = replay(read, after_seq=after_seq, until_seq=version.last_seq)
        return _whole_or_raise(chunks, after_seq, version)

    async def events(
        self,
        namespace: str,
        job_id: str,
        *,
        after_seq: int | ResumePoint = 0,
        heartbeat_s: float = 15.0,
        version: int | None = None,
    ) -> AsyncIterator[Event]:
        """The job's events: output of `version` (default: the latest when called) after
        `after_seq` (replayed, then live), status and progress changes, `end` once that
        version is complete; a heartbeat after `heartbeat_s` of quiet. Raises here, before
        the first event: `NotFound` for a job or a version that is not, `Conflict` for a
        resume point outside that output (`actors.resume`: a seq past its end, an event id
        of another version or of an earlier job of this id)."""
        job = await self.get(namespace, job_id)
        view = await self.version(job, check_version(version))
        point = after_seq if isinstance(after_seq, ResumePoint) else ResumePoint(after_seq)
        after_seq, number = resume_after(job, view, point), view.version

        async def read(pos: int, limit: int) -> list[Chunk]:
            return await self.read_output(
                namespace, job_id, version=number, after_seq=pos, limit=limit
            )

        async def live() -> AsyncIterator[Event]:
            # Subscribed once iterated, not before: an iterator never started holds nothing.
            with self.hub.subscribe(job) as subscription:
                events = cast(  # an async generator: closed with this one
                    AsyncGenerator[Event, None],
                    job_events(
                        job,
                        watch=subscription.watch,
                        read=read,
                        after_seq=after_seq,
                        heartbeat_s=heartbeat_s,
                        version=number,
                    ),
                )
                async with contextlib.aclosing(events):
                    async for event in events:
                        yield event

        return live()

    async def _shared_watch(
        self, namespace: str, job_id: str, revision: int, after_seq: int, timeout_s: float
    ) -> Update:
        return await self.watch(
            namespace, job_id, revision=revision, after_seq=after_seq, timeout_s=timeout_s
        )

    # -- namespaces, keys, deliveries -------------------------------------------------------

    async def create_namespace(
        self, namespace: str, changes: NamespaceChanges, *, actor: str = ""
    ) -> Namespace:
        """A new namespace (its webhook secret is made now); `Conflict` if it exists."""
        return await self.owner(namespace).create_namespace(namespace, changes=changes, actor=actor)

    async def get_namespace(self, namespace: str) -> Namespace:
        return await self.owner(namespace).get_namespace(namespace)

    async def update_namespace(
        self, namespace: str, changes: NamespaceChanges, *, actor: str = ""
    ) -> Namespace:
        return await self.owner(namespace).update_namespace(namespace, changes=changes, actor=actor)

    async def rotate_webhook_secret(
        self, namespace: str, *, grace_s: float, actor: str = ""
    ) -> Namespace:
        """A new signing secret; the old one signs beside it for `grace_s` (0 s .. 30 days)."""
        return await self.owner(namespace).rotate_webhook_secret(
            namespace, grace_s=check_grace_s(grace_s), actor=actor
        )

    async def put_api_key(self, namespace: str, key: ApiKey, *, actor: str = "") -> None:
        """Store a new or revoked key of `namespace` (durable before it returns)."""
        await self.owner(namespace).put_api_key(namespace, key=key, actor=actor)

    async def retry_delivery(
        self, namespace: str, delivery_id: str, *, actor: str = ""
    ) -> Delivery:
        return await self.owner(namespace).retry_delivery(
            namespace, delivery_id=check_id("deliveryId", delivery_id), actor=actor
        )

    async def ping_all(self) -> None:
        """Raise unless every shard is started and its store answers (all asked at once: a
        readiness probe waits for the slowest, not for their sum)."""
        await asyncio.gather(*(self.shard(slot).ping() for slot in range(self.num_shards)))


def _with_job_id(item: SubmitItem) -> SubmitItem:
    """The item with its job id checked, or a new one when it has none."""
    if item.job_id is None:
        return replace(item, job_id=new_job_id())
    check_job_id(item.job_id)
    return item


def _count_shard_actors() -> int:
    import ray  # the Ray edge; everything else here runs without Ray

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
    return num_shards


def _actor_shard(slot: int, *, call_timeout_s: float = CALL_TIMEOUT_S) -> ShardApi:
    """The named shard actor of `slot`, as a `ShardApi`."""
    import ray

    handle = ray.get_actor(shard_name(slot), namespace=RAY_NAMESPACE)
    return cast(ShardApi, _ActorShard(handle, call_timeout_s=call_timeout_s))


#: The writes an `_ActorShard` coalesces: those made in one event-loop tick go to their shard
#: in one actor call (`ShardActor.many`), and so into one group commit. A submit with a
#: webhook URL (a DNS lookup first) and the slower calls go alone, keeping no one waiting.
#: Not `complete`: it may take seconds (a json job's document check, a version's SHA-256
#: read back after a restart), and a slow call holds every write coalesced with it.
COALESCED = frozenset({"submit", "append", "set_progress", "cancel"})
#: The reads whose actor call is cancelled with its caller: awaiting a call's result and
#: giving up leaves the call running in the actor (a `watch` held its slot, and counted as
#: held, for up to `max_wait_s` after the last stream of its job closed).
CANCELLED = frozenset({"watch"})
#: An append at least this big crosses Ray as out-of-band buffers (`_out_of_band`).
OUT_OF_BAND_BYTES = 1024 * 1024

#: Coalesced calls one replica has out to one shard at a time; more writes wait for one.
MAX_CALLS_IN_FLIGHT = 1

_Call = tuple[str, tuple[Any, ...], dict[str, Any]]


async def _whole_or_raise(
    chunks: AsyncIterator[Chunk], after_seq: int, version: OutputVersion
) -> AsyncIterator[Chunk]:
    """`chunks` (those after `after_seq`), up to the version's `last_seq`; `NotFound` if they
    end before it: committed output only goes away with its job, and a reader must not
    take a cut stream for the whole (a compressed download would end with a valid end)."""
    position = after_seq
    async for chunk in chunks:
        position = chunk.seq
        yield chunk
    if position < version.last_seq:
        raise NotFound(
            f"job {version.job_id!r} was deleted while its output was read"
            f" (it ended at seq {position} of {version.last_seq})"
        )


def _out_of_band(chunks: list[bytes]) -> list[bytes]:
    """A big append's chunks as buffers Ray sends out of band (pickle protocol 5): copied
    into its object store straight from these bytes, not through a pickled copy of them
    first (a 64 MiB append held 3 x 64 MiB in the `Api` replica at its peak). The shard
    turns them back into bytes (`Shard.append`); small appends go as they are."""
    if sum(len(chunk) for chunk in chunks) < OUT_OF_BAND_BYTES:
        return chunks
    return cast(list[bytes], [pickle.PickleBuffer(chunk) for chunk in chunks])


class _ActorShard:
    """A shard actor handle seen as a `ShardApi`: `await proxy.get(ns, job_id=...)` is
    `await handle.get.remote(ns, job_id=...)`, with Ray's errors translated. `ShardActor`
    has exactly `ShardApi`'s methods (tests/unit/test_shard_client.py checks it), and
    `many` for the coalesced writes.

    An actor call costs the caller far more than a write costs the shard (Ray's task
    submission holds the GIL), so the `COALESCED` writes share calls: those of one tick go
    together, and while `MAX_CALLS_IN_FLIGHT` calls are out the next ones wait to go
    together when one returns (self-clocked, as Nagle's algorithm). Each caller still gets
    its own result or error.

    No caller waits longer than `call_timeout_s` (a `watch`, that beyond its `timeout_s`):
    Ray holds calls to an actor that is restarting, or whose node died unnoticed yet, until
    it answers again. Past the bound the caller gets `ShardUnavailable`; the call itself may
    still run (a write then lands or not: the client retries it, idempotently).
    """

    def __init__(self, handle: Any, *, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._handle = handle
        self._timeout_s = call_timeout_s
        self._pending: list[tuple[_Call, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._scheduled = False

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._handle, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            timeout_s = self._timeout_s + float(kwargs.get("timeout_s", 0.0))
            return await _unwrapped(method.remote(*args, **kwargs), timeout_s)

        async def cancellable(*args: Any, **kwargs: Any) -> Any:
            timeout_s = self._timeout_s + float(kwargs.get("timeout_s", 0.0))
            return await _unwrapped(method.remote(*args, **kwargs), timeout_s, cancel=True)

        async def coalesced(*args: Any, **kwargs: Any) -> Any:
            spec = kwargs.get("spec")
            if spec is not None and spec.webhook_url is not None:
                return await call(*args, **kwargs)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieved)  # its caller may have stopped waiting
            self._pending.append(((name, args, kwargs), future))
            self._schedule()
            # Shielded: the shared call goes on for the other callers; waiting for a call
            # already out and then for its own, a write would wait twice the bound.
            return await _bounded(asyncio.shield(future), self._timeout_s)

        chosen = coalesced if name in COALESCED else cancellable if name in CANCELLED else call
        setattr(self, name, chosen)  # made once per method: __getattr__ runs on misses only
        return chosen

    def _schedule(self) -> None:
        """Send what is pending at the end of this tick, unless enough calls are out."""
        if self._pending and not self._scheduled and len(self._sending) < MAX_CALLS_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(pending))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._schedule()

    async def _send(self, pending: list[tuple[_Call, asyncio.Future[Any]]]) -> None:
        try:
            if len(pending) == 1:
                (name, args, kwargs), _ = pending[0]
                ref = getattr(self._handle, name).remote(*args, **kwargs)
                results = [await _unwrapped(ref, self._timeout_s)]
            else:
                ref = self._handle.many.remote([c for c, _ in pending])
                results = await _unwrapped(ref, self._timeout_s)
        except BaseException as exc:  # the call as a whole failed: each caller gets why
            results = [exc] * len(pending)
        for (_, future), result in zip(pending, results, strict=True):
            if future.done():  # its caller went away; the write stands, as it would alone
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


async def _unwrapped(
    ref: Awaitable[Any], timeout_s: float = CALL_TIMEOUT_S, *, cancel: bool = False
) -> Any:
    """`ref`'s result within `timeout_s` (`_bounded`), Ray's errors as ours; with `cancel`,
    the actor call is cancelled when the wait for it is."""
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    try:
        return await _bounded(ref, timeout_s)
    except asyncio.CancelledError:
        if cancel:
            ray.cancel(ref)
        raise
    except RayTaskError as exc:
        if isinstance(exc.cause, AosError):
            raise exc.cause from None
        raise
    except (ActorUnavailableError, RayActorError) as exc:
        raise ShardUnavailable(
            "the shard is restarting; retry shortly", retry_after_s=SHARD_RESTART_RETRY_AFTER_S
        ) from exc


async def _bounded(call: Awaitable[Any], timeout_s: float) -> Any:
    """`call`'s result, or `ShardUnavailable` once `timeout_s` passed without one (a timer on
    the hot path, no extra task: `asyncio.timeout`, not `wait_for`)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except TimeoutError:
        raise ShardUnavailable(
            f"the shard did not answer within {timeout_s:g} s (restarting, or its node was"
            " lost); retry shortly",
            retry_after_s=SHARD_RESTART_RETRY_AFTER_S,
        ) from None


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a coalesced write's error as seen when its caller no longer waits for it."""
    if not future.cancelled():
        future.exception()
