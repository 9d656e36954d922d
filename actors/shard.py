"""A shard's state machine: its namespaces' jobs, each change durable before it is acknowledged.

Plain asyncio, no Ray: `actors.shard_actor` wraps it in an actor, unit tests drive
it directly over `storage.memory.MemoryStore`.

Two views of every job: `current` (every change applied, used to validate the
next one) and `committed` (what the store holds, the only view readers see).
Waiters are woken when a change is committed, never before, so no client sees
output that a crash could still take back.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors import hooks as namespace_hooks
from actors.committer import GroupCommitter
from actors.delivery import DeliveryLoop, Send
from actors.outbox import Hooks, Outbox, check_events
from actors.routing import shard_for
from actors.validation import JobSpec, check_id, check_namespace, check_progress
from actors.webhooks.ssrf import Network, parse_allowed_networks
from storage.base import Store
from storage.errors import (
    AosError,
    BadRequest,
    Conflict,
    Fenced,
    Invalid,
    NotFound,
    Overloaded,
    TooLarge,
)
from storage.records import (
    ApiKey,
    AuditEntry,
    Batch,
    Chunk,
    Delivery,
    Job,
    JobStatus,
    Namespace,
    OutputFormat,
)

MAX_ERROR_CHARS = 8192


@dataclass(frozen=True, slots=True)
class ShardConfig:
    slot: int
    num_shards: int
    max_chunk_bytes: int = 4 * 1024 * 1024
    tail_bytes_per_job: int = 256 * 1024
    tail_bytes_total: int = 64 * 1024 * 1024
    terminal_cache_jobs: int = 10_000
    max_wait_s: float = 60.0
    linger_s: float = 0.0
    max_pending_items: int = 50_000
    max_pending_bytes: int = 256 * 1024 * 1024
    #: CIDRs webhook URLs may reach despite the SSRF guard (e.g. 127.0.0.0/8 in development).
    webhook_allowed_networks: str = ""
    webhook_coalesce_s: float = 0.5
    webhook_max_in_flight: int = 1000
    webhook_max_payload_bytes: int = 1024 * 1024

    @property
    def allowed_networks(self) -> tuple[Network, ...]:
        return parse_allowed_networks(self.webhook_allowed_networks)


@dataclass(frozen=True, slots=True)
class AppendAck:
    seq: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Update:
    """What `watch` returns: the committed job and the committed output after the caller's
    position that the in-memory tail still holds (empty when the caller must read the store)."""

    job: Job
    chunks: tuple[Chunk, ...] = ()


class _Live:
    """A loaded job. Slotted: a shard holds 100k+ of these."""

    __slots__ = ("changed", "committed", "current", "tail", "tail_bytes")

    def __init__(self, job: Job, *, committed: bool) -> None:
        self.current = job
        self.committed: Job | None = job if committed else None
        self.tail: collections.deque[Chunk] | None = None
        self.tail_bytes = 0
        self.changed: asyncio.Event | None = None

    def wake(self) -> None:
        if self.changed is not None:
            self.changed.set()
            self.changed = None


class Shard:
    """Owns the jobs and namespaces of one slot."""

    def __init__(
        self,
        store: Store,
        config: ShardConfig,
        *,
        owner: str = "",
        clock: Callable[[], float] = time.time,
        send: Send | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._owner = owner or uuid.uuid4().hex
        self._clock = clock
        self._jobs: dict[tuple[str, str], _Live] = {}
        self._terminal: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._tails: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._tail_bytes = 0
        self._deleting: set[tuple[str, str]] = set()
        self._namespaces: dict[str, Namespace] = {}
        self._fenced = False
        self._committer: GroupCommitter | None = None
        self._send = send
        self._allowed = config.allowed_networks
        self._outbox = Outbox(
            slot=config.slot,
            clock=clock,
            coalesce_s=config.webhook_coalesce_s,
            max_payload_bytes=config.webhook_max_payload_bytes,
        )
        self._delivery_loop: DeliveryLoop | None = None
        self.epoch = 0

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the slot's lease (fencing any older owner) and reload its running jobs."""
        self.epoch = await self._store.acquire_shard(self._config.slot, self._owner)
        for job in await self._store.load_shard(self._config.slot):
            self._jobs[job.key] = _Live(job, committed=True)
        self._committer = GroupCommitter(
            self._store,
            slot=self._config.slot,
            epoch=self.epoch,
            on_committed=self._on_committed,
            on_failed=self._on_failed,
            linger_s=self._config.linger_s,
            max_pending_items=self._config.max_pending_items,
            max_pending_bytes=self._config.max_pending_bytes,
        )
        self._committer.start()
        self._outbox.load(await self._store.load_pending_deliveries(self._config.slot))
        if self._send is not None:
            self._delivery_loop = DeliveryLoop(
                self._outbox,
                self._committer,
                send=self._send,
                hooks_for=self.hooks,
                clock=self._clock,
                max_in_flight=self._config.webhook_max_in_flight,
            )
            self._delivery_loop.start()

    async def stop(self) -> None:
        if self._delivery_loop is not None:
            await self._delivery_loop.stop()
        if self._committer is not None:
            await self._committer.stop()

    def stats(self) -> dict[str, Any]:
        committer = self._require_committer()
        return {
            "slot": self._config.slot,
            "epoch": self.epoch,
            "jobsLoaded": len(self._jobs),
            "tailBytes": self._tail_bytes,
            "pendingWrites": committer.pending_items,
            "batchSizes": dict(sorted(committer.batch_sizes.items())),
            "fenced": self._fenced,
            "pendingDeliveries": self._outbox.pending_count,
        }

    # -- namespaces and keys -----------------------------------------------------------------

    async def create_namespace(self, name: str, config: dict[str, Any], *, actor: str) -> Namespace:
        self._check_owned(check_namespace(name))
        config = await self._checked(config)
        if name in self._namespaces or await self._store.get_namespace(name) is not None:
            raise Conflict(f"namespace {name!r} already exists")
        config = namespace_hooks.with_new_secret(config)
        namespace = Namespace(name=name, created_at=self._clock(), config=config)
        await self._write_namespace(namespace, actor=actor, action="namespace.create")
        return namespace

    async def get_namespace(self, name: str) -> Namespace:
        self._check_owned(check_namespace(name))
        namespace = self._namespaces.get(name) or await self._store.get_namespace(name)
        if namespace is None:
            raise NotFound(f"namespace {name!r} does not exist")
        self._namespaces.setdefault(name, namespace)
        return self._namespaces[name]

    async def update_namespace(
        self, name: str, changes: dict[str, Any], *, actor: str
    ) -> Namespace:
        changes = await self._checked(changes)
        current = await self.get_namespace(name)
        namespace = Namespace(current.name, current.created_at, {**current.config, **changes})
        await self._write_namespace(namespace, actor=actor, action="namespace.update")
        return namespace

    async def rotate_webhook_secret(
        self, name: str, *, grace_s: float = namespace_hooks.DEFAULT_GRACE_S, actor: str
    ) -> Namespace:
        """A new signing secret; the old one keeps signing beside it for `grace_s`."""
        current = await self.get_namespace(name)
        config = namespace_hooks.rotated(current.config, now=self._clock(), grace_s=grace_s)
        namespace = Namespace(current.name, current.created_at, config)
        await self._write_namespace(namespace, actor=actor, action="namespace.rotate_secret")
        return namespace

    async def hooks(self, name: str) -> Hooks:
        """The namespace's webhook settings as of now (changes apply without a restart)."""
        namespace = await self.get_namespace(name)
        return namespace_hooks.hooks_from_config(namespace.config, now=self._clock())

    async def _checked(self, config: dict[str, Any]) -> dict[str, Any]:
        if "webhooks" not in config:
            return config
        webhooks = await namespace_hooks.check_webhooks(config["webhooks"], allowed=self._allowed)
        return {**config, "webhooks": webhooks}

    async def put_api_key(self, key: ApiKey, *, actor: str) -> None:
        """Create or revoke a key of a namespace this shard owns."""
        for name in key.namespaces:
            await self.get_namespace(name)
        action = "key.revoke" if key.revoked_at else "key.create"
        audit = self._audit(key.namespaces[0], actor, action, key.key_id)
        await self._wait(self._require_committer().add(api_keys=[key], audit=[audit]))

    async def _write_namespace(self, namespace: Namespace, *, actor: str, action: str) -> None:
        previous = self._namespaces.get(namespace.name)
        detail = namespace_hooks.public(namespace.config)
        audit = self._audit(namespace.name, actor, action, namespace.name, detail)
        future = self._require_committer().add(namespaces=[namespace], audit=[audit])
        self._namespaces[namespace.name] = namespace
        try:
            await self._wait(future)
        except AosError:
            if self._namespaces.get(namespace.name) is namespace:
                self._namespaces.pop(namespace.name)
                if previous is not None:
                    self._namespaces[namespace.name] = previous
            raise

    # -- jobs: writes -------------------------------------------------------------------------

    async def submit(
        self, namespace: str, job_id: str | None, spec: JobSpec, *, actor: str = ""
    ) -> tuple[Job, bool]:
        """Create a job; `(job, False)` when the same request was already accepted."""
        await self.get_namespace(namespace)
        job_id = check_id("jobId", job_id) if job_id is not None else uuid.uuid4().hex
        spec.validate()
        await self._check_job_webhook(spec)
        fingerprint = spec.fingerprint()
        key = (namespace, job_id)
        while key in self._deleting:
            await self._require_committer().barrier()
        try:
            live = await self._load(namespace, job_id)
        except NotFound:
            return await self._create(namespace, job_id, spec, fingerprint, actor), True
        if live.current.request_hash != fingerprint:
            raise Conflict(f"job {job_id!r} exists with a different request")
        return await self._durable(live), False

    async def append(
        self, namespace: str, job_id: str, data: bytes, *, seq: int | None = None
    ) -> AppendAck:
        """Add a chunk of output. With `seq`, a retried append is acknowledged, not repeated."""
        data = self._check_chunk(data)
        live = await self._load(namespace, job_id)
        job = live.current
        if seq is not None:
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
                raise Invalid("seq must be a positive integer")
            if seq <= job.output_seq:
                return await self._existing_append(live, seq, data)
            if seq != job.output_seq + 1:
                raise Conflict(f"seq {seq} would leave a gap: the next seq is {job.output_seq + 1}")
        self._check_running(job, "append output to")
        if job.output_format is not OutputFormat.BINARY:
            _check_utf8(data)
        chunk = Chunk(namespace, job_id, job.output_seq + 1, job.output_size, data)
        await self._change(
            live,
            job.evolve(output_seq=chunk.seq, output_size=chunk.end, updated_at=self._clock()),
            chunks=[chunk],
        )
        return AppendAck(chunk.seq, chunk.offset, len(data))

    async def set_progress(
        self,
        namespace: str,
        job_id: str,
        *,
        progress: float | None = None,
        estimated_completion: float | None = None,
    ) -> Job:
        changes: dict[str, Any] = {}
        if progress is not None:
            changes["progress"] = check_progress(progress)
        if estimated_completion is not None:
            if isinstance(estimated_completion, bool) or not isinstance(
                estimated_completion, int | float
            ):
                raise Invalid("estimatedCompletion must be a timestamp")
            changes["estimated_completion"] = float(estimated_completion)
        if not changes:
            raise Invalid("give progress and/or estimatedCompletion")
        live = await self._load(namespace, job_id)
        self._check_running(live.current, "update")
        return await self._change(live, live.current.evolve(updated_at=self._clock(), **changes))

    async def complete(
        self, namespace: str, job_id: str, status: JobStatus, *, error: str | None = None
    ) -> Job:
        """The producer finishes the job. Repeating the same completion is acknowledged."""
        status = JobStatus(status)
        if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise Invalid("status must be Succeeded or Failed")
        if error is not None and (not isinstance(error, str) or len(error) > MAX_ERROR_CHARS):
            raise Invalid(f"error must be a string of at most {MAX_ERROR_CHARS} characters")
        live = await self._load(namespace, job_id)
        job = live.current
        if job.status is status and job.error == error:
            return await self._durable(live)
        return await self._finish(live, status, error, action="job.complete")

    async def cancel(self, namespace: str, job_id: str, *, actor: str = "") -> Job:
        live = await self._load(namespace, job_id)
        return await self._finish(live, JobStatus.CANCELLED, None, action="job.cancel", actor=actor)

    async def delete(self, namespace: str, job_id: str, *, actor: str = "") -> None:
        """Delete a terminal job and all its output."""
        live = await self._load(namespace, job_id)
        if not live.current.status.terminal:
            raise Conflict(f"job {job_id!r} is Running; cancel or complete it first")
        key = live.current.key
        future = self._require_committer().add(
            deleted=[key], audit=[self._audit(namespace, actor, "job.delete", job_id)]
        )
        self._forget(key)
        self._outbox.forget_job(*key)
        self._deleting.add(key)
        live.wake()
        try:
            await self._wait(future)
        finally:
            self._deleting.discard(key)

    # -- jobs: reads --------------------------------------------------------------------------

    async def get(self, namespace: str, job_id: str) -> Job:
        return await self._durable(await self._load(namespace, job_id))

    async def watch(
        self,
        namespace: str,
        job_id: str,
        *,
        revision: int | None = None,
        after_seq: int | None = None,
        timeout_s: float = 0.0,
    ) -> Update:
        """Wait (at most `timeout_s`, capped) until the job's revision differs from `revision`
        or its output passes `after_seq`; return the committed job either way."""
        deadline = time.monotonic() + min(max(float(timeout_s), 0.0), self._config.max_wait_s)
        live = await self._load(namespace, job_id)
        while True:
            job = live.committed
            if job is not None and _changed(job, revision, after_seq):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            event = live.changed = live.changed or asyncio.Event()
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass
            if self._jobs.get(live.current.key) is not live:  # deleted or dropped after a failure
                live = await self._load(namespace, job_id)
        job = await self._durable(live)
        return Update(job, self._tail_after(live, after_seq))

    async def read_output(
        self, namespace: str, job_id: str, *, after_seq: int = 0, limit: int = 256
    ) -> list[Chunk]:
        """Committed output after `after_seq`, from the store (the one source for replay)."""
        await self.get(namespace, job_id)
        return await self._store.read_output(namespace, job_id, after_seq=after_seq, limit=limit)

    async def retry_delivery(
        self, namespace: str, delivery_id: str, *, actor: str = ""
    ) -> Delivery:
        """Send a delivery again now, with the same id (receivers dedupe on webhook-id)."""
        await self.get_namespace(namespace)
        delivery = self._outbox.pending(delivery_id) or await self._store.get_delivery(
            namespace, delivery_id
        )
        if delivery is None or delivery.namespace != namespace:
            raise NotFound(f"no webhook delivery {delivery_id!r} in namespace {namespace!r}")
        if self._outbox.is_in_flight(delivery_id):
            raise Conflict(f"delivery {delivery_id!r} is being sent right now")
        again = self._outbox.retry_now(delivery)
        audit = self._audit(namespace, actor, "webhook.retry", delivery_id)
        await self._wait(self._require_committer().add(deliveries=[again], audit=[audit]))
        return again

    # -- internals ----------------------------------------------------------------------------

    def _cached_hooks(self, namespace: str) -> Hooks:
        """Synchronous on purpose: read between a job's state and its commit, with no await."""
        config = self._namespaces[namespace].config
        return namespace_hooks.hooks_from_config(config, now=self._clock())

    async def _check_job_webhook(self, spec: JobSpec) -> None:
        if spec.webhook_url is not None:
            await namespace_hooks.check_url(spec.webhook_url, allowed=self._allowed)
        if spec.webhook_events is not None:
            check_events(spec.webhook_events)

    async def _create(
        self, namespace: str, job_id: str, spec: JobSpec, fingerprint: str, actor: str
    ) -> Job:
        now = self._clock()
        job = Job(
            namespace=namespace,
            job_id=job_id,
            slot=self._config.slot,
            created_at=now,
            updated_at=now,
            title=spec.title,
            description=spec.description,
            tags=spec.tags,
            webhook_url=spec.webhook_url,
            webhook_events=spec.webhook_events,
            ttl_s=spec.ttl_s,
            output_format=spec.output_format,
            request_hash=fingerprint,
        )
        self._check_writable()
        future = self._require_committer().add(
            jobs=[job],
            deliveries=self._outbox.on_change(None, job, (), self._cached_hooks(namespace)),
            audit=[self._audit(namespace, actor, "job.submit", job_id)],
        )
        self._jobs[job.key] = _Live(job, committed=False)
        await self._wait(future)
        return job

    async def _finish(
        self, live: _Live, status: JobStatus, error: str | None, *, action: str, actor: str = ""
    ) -> Job:
        job = live.current
        self._check_running(job, "finish")
        now = self._clock()
        finished = job.evolve(status=status, error=error, completed_at=now, updated_at=now)
        audit = self._audit(job.namespace, actor, action, job.job_id, {"status": status.value})
        return await self._change(live, finished, audit=[audit])

    async def _change(
        self,
        live: _Live,
        job: Job,
        *,
        chunks: list[Chunk] | None = None,
        audit: list[AuditEntry] | None = None,
    ) -> Job:
        self._check_writable()
        hooks = self._cached_hooks(job.namespace)
        deliveries = self._outbox.on_change(live.current, job, chunks or (), hooks)
        # add() may refuse (Overloaded): it runs before any state changes.
        try:
            future = self._require_committer().add(
                jobs=[job], chunks=chunks or (), deliveries=deliveries, audit=audit or ()
            )
        except Overloaded:
            self._outbox.failed(deliveries)
            raise
        live.current = job
        await self._wait(future)
        return job

    async def _existing_append(self, live: _Live, seq: int, data: bytes) -> AppendAck:
        await self._durable(live)
        chunk = next((c for c in live.tail or () if c.seq == seq), None)
        if chunk is None:
            job = live.current
            found = await self._store.read_output(
                job.namespace, job.job_id, after_seq=seq - 1, limit=1
            )
            chunk = found[0] if found else None
        if chunk is None or chunk.seq != seq or chunk.data != data:
            raise Conflict(f"seq {seq} was already written with different data")
        return AppendAck(chunk.seq, chunk.offset, len(chunk.data))

    async def _load(self, namespace: str, job_id: str) -> _Live:
        """The live job, loading a terminal one from the store on first access."""
        await self.get_namespace(namespace)  # also caches it: writes read its webhook settings
        check_id("jobId", job_id)
        key = (namespace, job_id)
        live = self._jobs.get(key)
        if live is None and key not in self._deleting:
            job = await self._store.get_job(namespace, job_id)
            live = self._jobs.get(key)  # another call may have loaded it meanwhile
            if live is None and job is not None and key not in self._deleting:
                live = self._jobs[key] = _Live(job, committed=True)
                if job.status.terminal:
                    self._remember_terminal(key)
        if live is None:
            raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
        return live

    async def _durable(self, live: _Live) -> Job:
        """The committed view; waits for an in-flight first commit of a new job."""
        if live.committed is None:
            await self._require_committer().barrier()
        if live.committed is None:
            raise NotFound(f"job {live.current.job_id!r} not found")
        return live.committed

    async def _wait(self, future: asyncio.Future[None]) -> None:
        # Shielded: the future is shared by the whole batch; a caller that goes away
        # (client disconnect) must not cancel it for everybody else.
        await asyncio.shield(future)

    def _on_committed(self, batch: Batch) -> None:
        for job in batch.jobs:
            live = self._jobs.get(job.key)
            if live is None:
                continue
            if live.committed is None or job.revision > live.committed.revision:
                live.committed = job
            if job.status.terminal:
                self._remember_terminal(job.key)
        for chunk in batch.chunks:
            self._add_to_tail(chunk)
        if batch.deliveries:
            self._outbox.committed(batch.deliveries)
            if self._delivery_loop is not None:
                self._delivery_loop.wake()
        for job in batch.jobs:
            live = self._jobs.get(job.key)
            if live is not None:
                live.wake()

    def _on_failed(self, batch: Batch, exc: AosError) -> None:
        """Forget what did not commit: the next access reloads the store's truth."""
        if isinstance(exc, Fenced):
            self._fenced = True
        self._outbox.failed(batch.deliveries)
        for job in batch.jobs:
            live = self._jobs.get(job.key)
            self._forget(job.key)
            if live is not None:
                live.wake()
        for namespace in batch.namespaces:
            self._namespaces.pop(namespace.name, None)

    def _forget(self, key: tuple[str, str]) -> None:
        live = self._jobs.pop(key, None)
        self._terminal.pop(key, None)
        if live is not None and key in self._tails:
            self._tails.pop(key)
            self._tail_bytes -= live.tail_bytes

    def _remember_terminal(self, key: tuple[str, str]) -> None:
        self._terminal[key] = None
        self._terminal.move_to_end(key)
        while len(self._terminal) > self._config.terminal_cache_jobs:
            old, _ = self._terminal.popitem(last=False)
            live = self._jobs.get(old)
            if live is not None and live.changed is None:
                self._forget(old)

    def _add_to_tail(self, chunk: Chunk) -> None:
        key = (chunk.namespace, chunk.job_id)
        live = self._jobs.get(key)
        if live is None:
            return
        if live.tail is None:
            live.tail = collections.deque()
        live.tail.append(chunk)
        live.tail_bytes += len(chunk.data)
        self._tail_bytes += len(chunk.data)
        self._tails[key] = None
        self._tails.move_to_end(key)
        while live.tail_bytes > self._config.tail_bytes_per_job and len(live.tail) > 1:
            self._drop_oldest(live)
        while self._tail_bytes > self._config.tail_bytes_total and self._tails:
            oldest = self._jobs.get(next(iter(self._tails)))
            if oldest is None or not oldest.tail:
                self._tails.popitem(last=False)
                continue
            self._drop_oldest(oldest)
            if not oldest.tail:
                self._tails.popitem(last=False)

    def _drop_oldest(self, live: _Live) -> None:
        assert live.tail
        dropped = live.tail.popleft()
        live.tail_bytes -= len(dropped.data)
        self._tail_bytes -= len(dropped.data)

    def _tail_after(self, live: _Live, after_seq: int | None) -> tuple[Chunk, ...]:
        """Committed chunks after `after_seq`, if the tail still holds all of them."""
        if after_seq is None or not live.tail or live.tail[0].seq > after_seq + 1:
            return ()
        return tuple(c for c in live.tail if c.seq > after_seq)

    def _check_chunk(self, data: object) -> bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise Invalid("output must be bytes")
        if not data:
            raise Invalid("output chunk is empty")
        if len(data) > self._config.max_chunk_bytes:
            raise TooLarge(f"output chunk is over {self._config.max_chunk_bytes} bytes; split it")
        return bytes(data)

    def _check_running(self, job: Job, verb: str) -> None:
        if job.status.terminal:
            raise Conflict(f"cannot {verb} job {job.job_id!r}: it is {job.status.value}")

    def _check_writable(self) -> None:
        if self._fenced:
            raise Fenced("this shard lost its lease to a newer owner", retry_after_s=1.0)

    def _check_owned(self, namespace: str) -> None:
        if shard_for(namespace, self._config.num_shards) != self._config.slot:
            raise BadRequest(f"namespace {namespace!r} is not owned by shard {self._config.slot}")

    def _audit(
        self,
        namespace: str | None,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        return AuditEntry(self._clock(), namespace, actor or "system", action, target, detail or {})

    def _require_committer(self) -> GroupCommitter:
        if self._committer is None:
            raise RuntimeError("Shard.start() was not awaited")
        return self._committer


def _changed(job: Job, revision: int | None, after_seq: int | None) -> bool:
    if revision is None and after_seq is None:
        return True
    if revision is not None and job.revision != revision:
        return True
    return after_seq is not None and job.output_seq > after_seq


def _check_utf8(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(
            "a text or json job's output must be UTF-8 in every chunk; use outputFormat binary"
        ) from exc
