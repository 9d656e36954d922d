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
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from actors import metrics
from actors.appends import Appends
from actors.commands import Completion, JobSpec, ProgressUpdate
from actors.committer import GroupCommitter, durable
from actors.job_table import JobTable, Key, LiveJob
from actors.limits import OUTPUT_PAGE_BYTES
from actors.namespace_settings import NamespaceChanges
from actors.namespaces import NamespaceBook, audit_entry
from actors.outage import StoreOutage
from actors.purger import Purger
from actors.retention import RETENTION_ACTOR, Sweeper, expires_at
from actors.sealing import Sealer, needs_json_check
from actors.shard_types import (
    AppendAck,
    AppendManyResult,
    ShardConfig,
    SubmitItem,
    SubmitResult,
    Update,
)
from actors.submits import Submits, job_of
from actors.tail import OutputTail
from actors.timestamps import iso
from actors.versions import next_version, open_and_empty
from actors.webhooks.delivery import SendMany
from actors.webhooks.shard_webhooks import ShardWebhooks
from storage.base import Store
from storage.errors import (
    AosError,
    Conflict,
    Fenced,
    Invalid,
    NotFound,
    Overloaded,
    StoreUnavailable,
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
    OutputVersion,
)

T = TypeVar("T")

#: How long a submit waits for a job of the same id to finish being deleted, then 503 with
#: `Retry-After`: short, as a waiting submit holds the other writes coalesced with it.
MAX_DELETE_WAIT_S = 0.25


class Shard:
    """Owns the jobs and namespaces of one slot."""

    def __init__(
        self,
        store: Store,
        config: ShardConfig,
        *,
        owner: str = "",
        clock: Callable[[], float] = time.time,
        send: SendMany | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._owner = owner or uuid.uuid4().hex
        self._clock = clock
        self._tail = OutputTail(
            per_job_bytes=config.tail_bytes_per_job, total_bytes=config.tail_bytes_total
        )
        self._jobs = JobTable(
            store, tail=self._tail, terminal_cache_jobs=config.terminal_cache_jobs
        )
        self._fenced = False
        self._outage = StoreOutage(store.ping)
        #: Jobs made durable, by event (`metrics.JOBS`): created, and how each finished.
        self._job_events = metrics.Tally(metrics.JOBS, ("slot", "event"))
        #: `watch` calls waiting now: SSE streams share one per job per replica, long-polls
        #: hold one each (`actors.watch_hub`).
        self._watches = 0
        self._committer: GroupCommitter | None = None
        self._allowed = config.allowed_networks
        self.namespaces = NamespaceBook(
            store,
            self._require_committer,
            slot=config.slot,
            num_shards=config.num_shards,
            allowed_networks=self._allowed,
            clock=clock,
        )
        self._webhooks = ShardWebhooks(store, config, clock=clock, send=send)
        self._purger = Purger(store, config.slot, self._jobs.deleting)
        self._appends = Appends(
            store=store,
            tail=self._tail,
            clock=clock,
            load=self._load,
            change=self._change,
            durable=self._durable,
            committer=self._require_committer,
        )
        self._submits = Submits(
            jobs=self._jobs,
            namespaces=self.namespaces,
            webhooks=self._webhooks,
            config=config,
            clock=clock,
            committer=self._require_committer,
            check_writable=self._check_writable,
            until_deleted=self._until_deleted,
        )
        self._sealer = Sealer(
            store,
            barrier=lambda: self._require_committer().barrier(),
            load=self._load,
        )
        self.sweeper = Sweeper(
            store,
            slot=config.slot,
            expire=self._expire,
            clock=clock,
            interval_s=config.retention_sweep_interval_s,
            batch_size=config.retention_sweep_batch,
        )
        self.epoch = 0

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the slot's lease (fencing any older owner) and reload its running jobs."""
        self.epoch = await self._store.acquire_shard(self._config.slot, self._owner)
        for job in await self._store.load_shard(self._config.slot):
            self._jobs.add(job, committed=True)
        self._committer = GroupCommitter(
            self._store,
            slot=self._config.slot,
            epoch=self.epoch,
            on_committed=self._on_committed,
            on_failed=self._on_failed,
            linger_s=self._config.linger_s,
            max_pending_items=self._config.max_pending_items,
            max_pending_bytes=self._config.max_pending_bytes,
            max_commit_wait_s=self._config.max_commit_wait_s,
        )
        self._committer.start()
        self._purger.start(self.epoch, await self._store.load_purges(self._config.slot))
        await self._webhooks.start(self._committer, hooks_for=self.namespaces.hooks)
        self.sweeper.start()

    async def stop(self) -> None:
        await self._outage.stop()
        await self._purger.stop()
        await self.sweeper.stop()
        await self._webhooks.stop()
        if self._committer is not None:
            await self._committer.stop()

    async def ping(self) -> None:
        """Readiness: raise unless the store answers."""
        await self._store.ping()

    @property
    def store_down(self) -> bool:
        """Whether new writes are refused because the store is down (`actors.outage`)."""
        return self._outage.down

    async def stats(self) -> dict[str, Any]:
        """Figures for operators (`GET /api/v1/admin/shards`): `state` is "serving", or
        "fenced" once a newer owner took the slot's lease (this copy writes nothing more);
        `liveJobs` the Running jobs it holds; `pendingWrites` the writes awaiting a commit."""
        committer = self._require_committer()
        return {
            "slot": self._config.slot,
            "state": "fenced" if self._fenced else "serving",
            "epoch": self.epoch,
            "maxChunkBytes": self._config.max_chunk_bytes,
            "jobsLoaded": len(self._jobs),
            "liveJobs": self._jobs.running,
            "tailBytes": self._tail.bytes,
            "pendingWrites": committer.pending_items,
            "batchSizes": dict(sorted(committer.batch_sizes.items())),
            "fenced": self._fenced,
            "pendingDeliveries": self._webhooks.pending_count,
            "watches": self._watches,
        }

    # -- jobs: writes -------------------------------------------------------------------------

    async def submit(
        self, namespace: str, *, job_id: str, spec: JobSpec, actor: str = ""
    ) -> tuple[Job, bool]:
        """Create a job; `(job, False)` when the same request was already accepted."""
        [result] = await self.submit_many([SubmitItem(namespace, job_id, spec, actor)])
        if result.error is not None:
            raise result.error
        return job_of(result), result.created

    async def submit_many(self, items: Sequence[SubmitItem]) -> list[SubmitResult]:
        """Create jobs, each as `submit` would; one result per item, in order
        (`actors.submits.Submits.submit_many`)."""
        try:
            self._admit()
        except StoreUnavailable as exc:
            return [SubmitResult(error=exc) for _ in items]
        results = await self._submits.submit_many(items)
        for result in results:
            if result.created:
                self._job_events.add(str(self._config.slot), "created")
        return results

    async def append(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        seq: int | None = None,
        version: int | None = None,
    ) -> AppendAck:
        """Add one append of output, all of its chunks or none (`actors.appends`)."""
        self._admit()
        return await self._appends.append(
            namespace, job_id=job_id, chunks=chunks, seq=seq, version=version
        )

    async def append_many(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        first_seq: int | None = None,
        version: int | None = None,
    ) -> AppendManyResult:
        """Append `chunks` in order, up to the first one refused (`actors.appends`)."""
        try:
            self._admit()
        except StoreUnavailable as exc:
            return AppendManyResult((), exc)
        return await self._appends.append_many(
            namespace, job_id=job_id, chunks=chunks, first_seq=first_seq, version=version
        )

    async def set_progress(self, namespace: str, *, job_id: str, update: ProgressUpdate) -> Job:
        self._admit()
        live = await self._load(namespace, job_id)
        self._check_running(live.current, "update")
        job = live.current.evolve(updated_at=self._clock(), **update.changes())
        return await self._change(live, job)

    async def complete(self, namespace: str, *, job_id: str, completion: Completion) -> Job:
        """The producer finishes the job. Repeating the same completion is acknowledged."""
        self._admit()
        live = await self._load(namespace, job_id)
        job = live.current
        if job.status is completion.status and job.error == completion.error:
            return await self._durable(live)
        return await self._finish(live, completion.status, completion.error, action="job.complete")

    async def cancel(self, namespace: str, *, job_id: str, actor: str = "") -> Job:
        self._admit()
        live = await self._load(namespace, job_id)
        return await self._finish(live, JobStatus.CANCELLED, None, action="job.cancel", actor=actor)

    async def delete(self, namespace: str, *, job_id: str, actor: str = "") -> None:
        """Delete a terminal job and all its output: gone to every reader once this returns;
        the output's bytes leave the store afterwards, in steps (`actors.purger`)."""
        self._admit()
        live = await self._load(namespace, job_id)
        await self._delete(live, audit_entry(self._clock(), namespace, actor, "job.delete", job_id))

    async def start_version(
        self, namespace: str, *, job_id: str, actor: str = ""
    ) -> tuple[Job, bool]:
        """Start the job's next output version (a re-run): `(job, True)`. The latest version
        is completed first (its SHA-256, its `completed_at`: the job's completion, or now);
        a finished job runs again (Running, no expiry, progress 0); appends go to the new,
        empty version from now on. When the latest version is still empty and open, it is
        the one a re-run writes to, and none is started: `(job, False)` (a retried request
        lands here). `Conflict` past `MAX_OUTPUT_VERSIONS`."""
        self._admit()
        live = await self._load(namespace, job_id)
        if not open_and_empty(live.current):
            live, sha256 = await self._sealer.seal(live)
            if not open_and_empty(live.current):  # another request started one meanwhile
                return await self._rerun(live, sha256, actor), True
        await self._require_committer().barrier()
        return await self.get(namespace, job_id=job_id), False

    async def _rerun(self, live: LiveJob, sha256: str, actor: str) -> Job:
        """Complete the latest version (of SHA-256 `sha256`) and start the next one."""
        job = live.current
        now = self._clock()
        done, rerun = next_version(job, sha256=sha256, now=now)
        detail = {"version": rerun.output_version}
        audit = audit_entry(now, job.namespace, actor, "job.version", job.job_id, detail)
        return await self._change(live, rerun, versions=[done], audit=[audit])

    async def _expire(self, found: Job) -> bool:
        """Delete a job the retention sweeper found expired, as `delete` does, audited as the
        sweeper's; False when, as this shard sees it now, the job is not expired."""
        live = await self._load(found.namespace, found.job_id)
        job, now = live.current, self._clock()
        if job.expires_at is None or job.expires_at > now:
            return False
        detail = {"expiresAt": iso(job.expires_at)}
        audit = audit_entry(now, job.namespace, RETENTION_ACTOR, "job.delete", job.job_id, detail)
        await self._delete(live, audit)
        return True

    async def _delete(self, live: LiveJob, audit: AuditEntry) -> None:
        """Delete a terminal job with its output, versions and deliveries, and record `audit`,
        in one commit: a crash leaves the job whole or gone (its output's bytes leave the
        store afterwards, in steps: `actors.purger`)."""
        if not live.current.status.terminal:
            raise Conflict(f"job {live.current.job_id!r} is Running; cancel or complete it first")
        key = live.current.key
        future = self._require_committer().add(deleted=[key], audit=[audit])
        self._jobs.forget(key)
        self._webhooks.forget_job(*key)
        self._jobs.deleting.add(key)
        live.wake()
        try:
            await durable(future)
        except BaseException:
            self._jobs.deleting.discard(key)
            raise
        self._purger.add(key)

    async def _until_deleted(self, keys: Sequence[Key]) -> None:
        """Wait while any of `keys` is being deleted (its delete committing, or its output
        being purged), for at most `MAX_DELETE_WAIT_S`: then `Overloaded` (503)."""
        deadline = time.monotonic() + MAX_DELETE_WAIT_S
        for key in keys:
            while key in self._jobs.deleting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Overloaded(
                        f"job {key[1]!r} is still being deleted; retry shortly",
                        retry_after_s=1.0,
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._require_committer().barrier()  # the delete commits
                        await self._purger.wait(key)  # then its output goes

    # -- jobs: reads --------------------------------------------------------------------------

    async def get(self, namespace: str, *, job_id: str) -> Job:
        return await self._durable(await self._load(namespace, job_id))

    async def watch(
        self,
        namespace: str,
        *,
        job_id: str,
        revision: int | None = None,
        after_seq: int | None = None,
        timeout_s: float = 0.0,
    ) -> Update:
        """Wait (at most `timeout_s`, capped) until the job's revision differs from `revision`
        or its output passes `after_seq`; return the committed job either way."""
        self._watches += 1
        try:
            return await self._watch(namespace, job_id, revision, after_seq, timeout_s)
        finally:
            self._watches -= 1

    async def _watch(
        self,
        namespace: str,
        job_id: str,
        revision: int | None,
        after_seq: int | None,
        timeout_s: float,
    ) -> Update:
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
        return Update(job, self._tail.after(job.key, after_seq, version=job.output_version))

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
        """Committed output of `version` after `after_seq`, from the store (the one source for
        replay): a page of at most `limit` chunks and about `max_bytes` (`Store.read_output`)."""
        await self.get(namespace, job_id=job_id)
        return await self._store.read_output(
            namespace,
            job_id,
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
        """Committed output of `version` from the chunk holding byte `offset`
        (`Store.read_output_at`)."""
        await self.get(namespace, job_id=job_id)
        return await self._store.read_output_at(
            namespace, job_id, version=version, offset=offset, limit=limit, max_bytes=max_bytes
        )

    async def list_versions(self, namespace: str, *, job_id: str) -> list[OutputVersion]:
        """The job's completed earlier output versions (`Store.list_versions`)."""
        await self.get(namespace, job_id=job_id)
        return await self._store.list_versions(namespace, job_id)

    # -- namespaces and webhooks --------------------------------------------------------------

    async def create_namespace(
        self, namespace: str, *, changes: NamespaceChanges, actor: str = ""
    ) -> Namespace:
        self._admit()
        return await self.namespaces.create(namespace, changes, actor=actor)

    async def get_namespace(self, namespace: str) -> Namespace:
        return await self.namespaces.get(namespace)

    async def update_namespace(
        self, namespace: str, *, changes: NamespaceChanges, actor: str = ""
    ) -> Namespace:
        self._admit()
        return await self.namespaces.update(namespace, changes, actor=actor)

    async def rotate_webhook_secret(
        self, namespace: str, *, grace_s: float, actor: str = ""
    ) -> Namespace:
        self._admit()
        return await self.namespaces.rotate_secret(namespace, grace_s=grace_s, actor=actor)

    async def put_api_key(self, namespace: str, *, key: ApiKey, actor: str = "") -> None:
        self._admit()
        if namespace not in key.namespaces:
            raise Invalid(f"key {key.key_id!r} is not a key of namespace {namespace!r}")
        await self.namespaces.put_api_key(key, actor=actor)

    async def retry_delivery(
        self, namespace: str, *, delivery_id: str, actor: str = ""
    ) -> Delivery:
        """Send a delivery again now, with the same id (receivers dedupe on webhook-id)."""
        self._admit()
        await self.namespaces.get(namespace)
        again = await self._webhooks.retry_now(namespace, delivery_id)
        audit = audit_entry(self._clock(), namespace, actor, "webhook.retry", delivery_id)
        await durable(self._require_committer().add(deliveries=[again], audit=[audit]))
        return again

    # -- internals ----------------------------------------------------------------------------

    async def _finish(
        self, live: LiveJob, status: JobStatus, error: str | None, *, action: str, actor: str = ""
    ) -> Job:
        """Finish the job and complete its latest output version: its SHA-256, and for a json
        job completed as Succeeded, the check that it is one JSON document (`Invalid`, the
        job left Running)."""
        self._check_running(live.current, "finish")
        check_json = needs_json_check(live.current, succeeded=status is JobStatus.SUCCEEDED)
        live, sha256 = await self._sealer.seal(live, check_json=check_json)
        job = live.current
        self._check_running(job, "finish")
        now = self._clock()
        default_ttl_s = self.namespaces.cached_settings(job.namespace).retention_ttl_s
        expiry = expires_at(now, ttl_s=job.ttl_s, default_ttl_s=default_ttl_s)
        finished = job.evolve(
            status=status,
            error=error,
            completed_at=now,
            updated_at=now,
            expires_at=expiry,
            output_sha256=sha256,
        )
        detail = {"status": status.value}
        audit = audit_entry(now, job.namespace, actor, action, job.job_id, detail)
        finished = await self._change(live, finished, audit=[audit])
        self._job_events.add(str(self._config.slot), status.value.lower())
        return finished

    async def _change(
        self,
        live: LiveJob,
        job: Job,
        *,
        chunks: list[Chunk] | None = None,
        versions: list[OutputVersion] | None = None,
        audit: list[AuditEntry] | None = None,
    ) -> Job:
        self._check_writable()
        hooks = self.namespaces.cached_hooks(job.namespace)
        deliveries = self._webhooks.on_change(live.current, job, chunks or (), hooks)
        # add() may refuse (Overloaded): it runs before any state changes.
        try:
            future = self._require_committer().add(
                jobs=[job],
                chunks=chunks or (),
                versions=versions or (),
                deliveries=deliveries,
                audit=audit or (),
            )
        except Overloaded:
            self._webhooks.failed(deliveries)
            raise
        live.apply(job, chunks or ())
        await durable(future)
        return job

    async def _load(self, namespace: str, job_id: str) -> LiveJob:
        await self.namespaces.get(namespace)  # also caches it: writes read its webhook settings
        return await self._jobs.load(namespace, job_id)

    async def _durable(self, live: LiveJob) -> Job:
        """The committed view; waits for an in-flight first commit of a new job. When that
        commit failed, the job is the one another submit made since, if any: a reader holds
        `live` across the wait, and the table may hold a newer one by then."""
        while live.committed is None:
            await self._require_committer().barrier()
            newer = self._jobs.get(live.current.key)
            if newer is None or newer is live:
                break
            live = newer
        if live.committed is None:
            raise NotFound(f"job {live.current.job_id!r} not found")
        return live.committed

    def _on_committed(self, batch: Batch) -> None:
        self._jobs.on_committed(batch)
        self._webhooks.committed(batch.deliveries)

    def _on_failed(self, batch: Batch, exc: AosError) -> None:
        """Forget what did not commit: the next access reloads the store's truth."""
        if isinstance(exc, Fenced):
            self._fenced = True
        elif isinstance(exc, StoreUnavailable):
            self._outage.begin()
        self._webhooks.failed(batch.deliveries)
        self._jobs.on_failed(batch)
        self.namespaces.forget(batch.namespaces)

    def _admit(self) -> None:
        """A new write: refused at once while the store is down (`actors.outage`). Writes
        admitted before it went down go on: they commit, or fail with the store."""
        self._outage.check()

    def _check_running(self, job: Job, verb: str) -> None:
        if job.status.terminal:
            raise Conflict(f"cannot {verb} job {job.job_id!r}: it is {job.status.value}")

    def _check_writable(self) -> None:
        if self._fenced:
            raise Fenced("this shard lost its lease to a newer owner", retry_after_s=1.0)

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
