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
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from actors.commands import Completion, JobSpec, ProgressUpdate, check_encoding, new_job_id
from actors.committer import GroupCommitter, durable
from actors.job_table import JobTable, Key, LiveJob
from actors.limits import MAX_JSON_OUTPUT_BYTES, OUTPUT_PAGE_BYTES, check_size
from actors.namespace_settings import NamespaceChanges
from actors.namespaces import NamespaceBook, audit_entry
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
from actors.tail import OutputTail
from actors.timestamps import iso
from actors.versions import check_appendable, check_latest, next_version, open_and_empty
from actors.webhooks import ssrf
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
    OutputFormat,
    OutputVersion,
)

T = TypeVar("T")

#: How long a submit waits for a job of the same id to finish being deleted (503 after).
MAX_DELETE_WAIT_S = 10.0
#: Rounds of deciding a submit again after another request's creation of its job failed to
#: commit. Each round costs a failed commit; past them the store is failing: retry later.
MAX_SUBMIT_ROUNDS = 4
CREATION_RETRY_AFTER_S = 1.0


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
        )
        self._committer.start()
        self._purger.start(self.epoch, await self._store.load_purges(self._config.slot))
        await self._webhooks.start(self._committer, hooks_for=self.namespaces.hooks)
        self.sweeper.start()

    async def stop(self) -> None:
        await self._purger.stop()
        await self.sweeper.stop()
        await self._webhooks.stop()
        if self._committer is not None:
            await self._committer.stop()

    async def ping(self) -> None:
        """Readiness: raise unless the store answers."""
        await self._store.ping()

    async def stats(self) -> dict[str, Any]:
        committer = self._require_committer()
        return {
            "slot": self._config.slot,
            "epoch": self.epoch,
            "maxChunkBytes": self._config.max_chunk_bytes,
            "jobsLoaded": len(self._jobs),
            "tailBytes": self._tail.bytes,
            "pendingWrites": committer.pending_items,
            "batchSizes": dict(sorted(committer.batch_sizes.items())),
            "fenced": self._fenced,
            "pendingDeliveries": self._webhooks.pending_count,
        }

    # -- jobs: writes -------------------------------------------------------------------------

    async def submit(
        self, namespace: str, *, job_id: str, spec: JobSpec, actor: str = ""
    ) -> tuple[Job, bool]:
        """Create a job; `(job, False)` when the same request was already accepted."""
        [result] = await self.submit_many([SubmitItem(namespace, job_id, spec, actor)])
        if result.error is not None:
            raise result.error
        return _job_of(result), result.created

    async def submit_many(self, items: Sequence[SubmitItem]) -> list[SubmitResult]:
        """Create jobs, each as `submit` would; one result per item, in order.

        Every item gets `submit`'s checks (its namespace is this shard's and exists, its
        webhook host is public, the same id with the same request again is `created`
        False, with another request `Conflict`; an id twice in `items` is the same). All
        new jobs are handed to the group commit before any is awaited, so they share one
        commit. An item's error is its own (`Unstorable` for data the store refused); a
        shard-wide one (`Fenced`, `Overloaded`, `StoreUnavailable`) fails the items it
        reaches.

        An item whose job another request is creating right now is answered once that job
        is durable (200, or 409 for another request); when its commit fails the item is
        decided again (`_submit_round`), as if it had come just after: never 404 for a job
        it would create itself, never an answer that a failed commit takes back.
        """
        items = [_with_job_id(item) for item in items]  # the same ids in every round
        errors = await self._precheck(items)
        results = [None if error is None else SubmitResult(error=error) for error in errors]
        for _ in range(MAX_SUBMIT_ROUNDS):
            todo = [i for i, result in enumerate(results) if result is None]
            if not todo:
                break
            outcomes = await self._submit_round([items[i] for i in todo])
            for i, outcome in zip(todo, outcomes, strict=True):
                results[i] = outcome
        return [result or _creation_failing() for result in results]

    async def append(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        seq: int | None = None,
        version: int | None = None,
    ) -> AppendAck:
        """Add one append of output, stored as `chunks` (consecutive seqs, one commit): all of
        them or, on any error, none. With `seq` (the first chunk's), a retried append is
        acknowledged, not repeated. `version` (default: the latest) must be the latest
        output version, not yet complete (`Conflict`; `NotFound` when there is none such).
        A big append's chunks may come as Ray's zero-copy buffers (`ShardClient.append`):
        they are kept as bytes."""
        chunks = [chunk if type(chunk) is bytes else bytes(chunk) for chunk in chunks]
        acks: list[AppendAck] = []
        live = await self._load(namespace, job_id)
        if seq is not None:
            live = await self._acknowledge_written(live, chunks, seq, acks, version)
        refused = await self._append_new(live, chunks[len(acks) :], acks, version, whole=True)
        if refused is not None:
            raise refused
        size = sum(ack.size for ack in acks)
        last = acks[-1]
        return AppendAck(last.seq, acks[0].offset, size, chunks=len(acks), version=last.version)

    async def append_many(
        self,
        namespace: str,
        *,
        job_id: str,
        chunks: Sequence[bytes],
        first_seq: int | None = None,
        version: int | None = None,
    ) -> AppendManyResult:
        """Append `chunks` in order, the new ones in one group commit (one transaction).

        Without `first_seq` they go after the job's current end. With it, chunk i has seq
        `first_seq + i`, as `append(seq=...)`: a chunk already written is acknowledged again
        when its bytes are the same (`Conflict` when not), a seq past the next one is a gap
        (`Conflict`). Each new chunk is checked as `append` checks it (the job runs, the
        version is the latest, UTF-8 for text and json jobs). The first chunk that fails
        stops the call: the chunks before it are acknowledged (durable), it and the ones
        after it are not written, and its error is returned with the acks, never raised. A
        commit that fails fails all the new chunks alike: nothing of them is written.
        """
        acks: list[AppendAck] = []
        try:
            live = await self._load(namespace, job_id)
            if first_seq is not None:
                live = await self._acknowledge_written(live, chunks, first_seq, acks, version)
            refused = await self._append_new(live, chunks[len(acks) :], acks, version)
        except AosError as exc:
            return AppendManyResult(tuple(acks), exc)
        return AppendManyResult(tuple(acks), refused)

    async def set_progress(self, namespace: str, *, job_id: str, update: ProgressUpdate) -> Job:
        live = await self._load(namespace, job_id)
        self._check_running(live.current, "update")
        job = live.current.evolve(updated_at=self._clock(), **update.changes())
        return await self._change(live, job)

    async def complete(self, namespace: str, *, job_id: str, completion: Completion) -> Job:
        """The producer finishes the job. Repeating the same completion is acknowledged."""
        live = await self._load(namespace, job_id)
        job = live.current
        if job.status is completion.status and job.error == completion.error:
            return await self._durable(live)
        return await self._finish(live, completion.status, completion.error, action="job.complete")

    async def cancel(self, namespace: str, *, job_id: str, actor: str = "") -> Job:
        live = await self._load(namespace, job_id)
        return await self._finish(live, JobStatus.CANCELLED, None, action="job.cancel", actor=actor)

    async def delete(self, namespace: str, *, job_id: str, actor: str = "") -> None:
        """Delete a terminal job and all its output: gone to every reader once this returns;
        the output's bytes leave the store afterwards, in steps (`actors.purger`)."""
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
        return await self.namespaces.create(namespace, changes, actor=actor)

    async def get_namespace(self, namespace: str) -> Namespace:
        return await self.namespaces.get(namespace)

    async def update_namespace(
        self, namespace: str, *, changes: NamespaceChanges, actor: str = ""
    ) -> Namespace:
        return await self.namespaces.update(namespace, changes, actor=actor)

    async def rotate_webhook_secret(
        self, namespace: str, *, grace_s: float, actor: str = ""
    ) -> Namespace:
        return await self.namespaces.rotate_secret(namespace, grace_s=grace_s, actor=actor)

    async def put_api_key(self, namespace: str, *, key: ApiKey, actor: str = "") -> None:
        if namespace not in key.namespaces:
            raise Invalid(f"key {key.key_id!r} is not a key of namespace {namespace!r}")
        await self.namespaces.put_api_key(key, actor=actor)

    async def retry_delivery(
        self, namespace: str, *, delivery_id: str, actor: str = ""
    ) -> Delivery:
        """Send a delivery again now, with the same id (receivers dedupe on webhook-id)."""
        await self.namespaces.get(namespace)
        again = await self._webhooks.retry_now(namespace, delivery_id)
        audit = audit_entry(self._clock(), namespace, actor, "webhook.retry", delivery_id)
        await durable(self._require_committer().add(deliveries=[again], audit=[audit]))
        return again

    # -- internals ----------------------------------------------------------------------------

    async def _precheck(self, items: Sequence[SubmitItem]) -> list[AosError | None]:
        """What a submit checks before it looks at its job: the namespace is this shard's and
        exists, the webhook host resolves to public addresses. Each namespace and URL once;
        the URLs concurrently (DNS)."""
        refused: dict[str, AosError] = {}
        for namespace in {item.namespace for item in items}:
            try:
                await self.namespaces.get(namespace)
            except AosError as exc:
                refused[namespace] = exc
        urls = list(
            {
                item.spec.webhook_url
                for item in items
                if item.spec.webhook_url is not None and item.namespace not in refused
            }
        )
        checked = await _concurrently([self._check_webhook(url) for url in urls])
        url_refused = {url: error for url, error in zip(urls, checked, strict=True) if error}
        return [
            refused.get(item.namespace) or url_refused.get(item.spec.webhook_url or "")
            for item in items
        ]

    async def _check_webhook(self, url: str) -> AosError | None:
        try:
            await ssrf.resolve_and_check(url, allowed=self._allowed)
        except AosError as exc:
            return exc
        return None

    async def _load_many(self, keys: Sequence[Key]) -> dict[Key, LiveJob | AosError | None]:
        """Each job as it is now: loaded (from the store if need be: one read per namespace,
        the namespaces concurrently), None when there is none, or the error reading it."""
        ids: dict[str, list[str]] = {}
        for namespace, job_id in keys:
            ids.setdefault(namespace, []).append(job_id)
        found: dict[Key, LiveJob | AosError | None] = dict.fromkeys(keys)
        loads = await _concurrently([self._load_namespace(ns, some) for ns, some in ids.items()])
        for (namespace, some), loaded in zip(ids.items(), loads, strict=True):
            if isinstance(loaded, AosError):
                found.update(((namespace, job_id), loaded) for job_id in some)
            else:
                found.update(((namespace, job_id), live) for job_id, live in loaded.items())
        return found

    async def _load_namespace(
        self, namespace: str, job_ids: list[str]
    ) -> dict[str, LiveJob] | AosError:
        try:
            return await self._jobs.load_many(namespace, job_ids)
        except AosError as exc:
            return exc

    async def _submit_round(self, items: Sequence[SubmitItem]) -> list[SubmitResult | None]:
        """Each item's outcome, as its job is now; None to decide it again: it waited for
        another request's creation of its job, which did not commit."""
        keys = [(item.namespace, _id_of(item)) for item in items]
        await self._until_deleted(keys)
        loaded = await self._load_many(keys)
        # From here to the awaits below nothing yields: the jobs loaded stay as seen.
        waits = self._decide(items, keys, loaded)
        return [await self._outcome(wait) for wait in waits]

    def _decide(
        self,
        items: Sequence[SubmitItem],
        keys: list[Key],
        loaded: dict[Key, LiveJob | AosError | None],
    ) -> list[_Wait]:
        """Each item's outcome, or what to wait for: a new job's add (every add is made
        here, before any is awaited: one group commit), or an existing job's first commit
        (then 200, or 409 for another request)."""
        waits: list[_Wait] = []
        created: dict[Key, _Wait] = {}
        for item, key in zip(items, keys, strict=True):
            found = self._jobs.get(key) or loaded[key]
            if isinstance(found, AosError):
                waits.append(_Wait(error=found))
            elif found is None:
                wait = created[key] = self._create(item, key)
                waits.append(wait)
            elif key in created and found.current.request_hash == item.spec.fingerprint():
                waits.append(replace(created[key], created=False))  # the first creates it
            else:
                same = found.current.request_hash == item.spec.fingerprint()
                waits.append(_Wait(live=found, conflict=not same))
        return waits

    def _create(self, item: SubmitItem, key: Key) -> _Wait:
        """Hand a new job to the group commit (not awaited) and hold it in memory."""
        try:
            self._check_writable()
        except Fenced as exc:
            return _Wait(error=exc)
        namespace, job_id = key
        now = self._clock()
        job = item.spec.new_job(namespace, job_id, slot=self._config.slot, now=now)
        hooks = self.namespaces.cached_hooks(namespace)
        deliveries = self._webhooks.on_change(None, job, (), hooks)
        audit = audit_entry(now, namespace, item.actor, "job.submit", job_id)
        try:
            future = self._require_committer().add(jobs=[job], deliveries=deliveries, audit=[audit])
        except Overloaded as exc:
            self._webhooks.failed(deliveries)
            return _Wait(error=exc)
        self._jobs.add(job, committed=False)
        return _Wait(job=job, future=future, created=True)

    async def _outcome(self, wait: _Wait) -> SubmitResult | None:
        try:
            if wait.future is not None:
                await durable(wait.future)
                return SubmitResult(wait.job, wait.created)
            if wait.live is not None:
                return await self._existing(wait.live, conflict=wait.conflict)
        except AosError as exc:
            return SubmitResult(error=exc)
        return SubmitResult(error=wait.error)

    async def _existing(self, live: LiveJob, *, conflict: bool) -> SubmitResult | None:
        """A submit of a job that exists: once it is durable, 200 (`created` False) or
        `Conflict`; None when its first commit, in flight, failed (the job is not)."""
        if live.committed is None:
            await self._require_committer().barrier()
        job = live.committed
        if job is None:
            return None
        if conflict:
            message = f"job {job.job_id!r} exists with a different request"
            return SubmitResult(error=Conflict(message))
        return SubmitResult(job, False)

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
        return await self._change(live, finished, audit=[audit])

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

    async def _append_new(
        self,
        live: LiveJob,
        chunks: Sequence[bytes],
        acks: list[AppendAck],
        version: int | None,
        *,
        whole: bool = False,
    ) -> AosError | None:
        """Append `chunks` after the end of the job's latest version (which `version` must
        be, when given), up to the first one refused (none of them if `whole`), in one add;
        extend `acks`. The refused chunk's error, or None."""
        job = live.current
        new: list[Chunk] = []
        refused: AosError | None = None
        try:
            for data in chunks:
                check_appendable(job, version)
                check_encoding(job.output_format, data)
                offset = new[-1].end if new else job.output_size
                if job.output_format is OutputFormat.JSON:
                    what = f"a json job's output (version {job.output_version})"
                    check_size(what, offset + len(data), MAX_JSON_OUTPUT_BYTES, "bytes")
                seq = job.output_seq + len(new) + 1
                new.append(Chunk(job.namespace, job.job_id, seq, offset, data, job.output_version))
        except AosError as exc:
            refused = exc
        if new and not (whole and refused):
            last = new[-1]
            changed = job.evolve(
                output_seq=last.seq, output_size=last.end, updated_at=self._clock()
            )
            await self._change(live, changed, chunks=new)
            acks.extend(AppendAck(c.seq, c.offset, len(c.data), version=c.version) for c in new)
        return refused

    async def _acknowledge_written(
        self,
        live: LiveJob,
        chunks: Sequence[bytes],
        first_seq: int,
        acks: list[AppendAck],
        version: int | None,
    ) -> LiveJob:
        """Acknowledge the leading chunks (chunk i has seq `first_seq + i`) that are already
        written with the same bytes to the latest output version (`version`, when given),
        into `acks`; `Conflict` for other bytes or a gap. Returns the job as it is now, with
        the rest of `chunks` to go after its end."""
        while len(acks) < len(chunks):
            job = live.current
            check_latest(job, version)
            seq = first_seq + len(acks)
            if seq > job.output_seq + 1:
                raise Conflict(f"seq {seq} would leave a gap: the next seq is {job.output_seq + 1}")
            if seq == job.output_seq + 1:
                break
            count = min(len(chunks) - len(acks), job.output_seq - seq + 1)
            written = await self._written(live, seq, count)
            for chunk, data in zip(written, chunks[len(acks) :], strict=False):
                if chunk.data != data:
                    raise Conflict(f"seq {chunk.seq} was already written with different data")
                acks.append(
                    AppendAck(chunk.seq, chunk.offset, len(chunk.data), version=chunk.version)
                )
            # The reads may have let other writes in (a new version), or a failed commit drop
            # the job.
            live = await self._load(job.namespace, job.job_id)
            if live.current.output_version != job.output_version:
                raise Conflict(f"output version {job.output_version} was completed meanwhile")
            if not written and live.current.output_seq >= seq:
                raise Conflict(f"seq {seq} was already written with different data")
        return live

    async def _written(self, live: LiveJob, seq: int, count: int) -> list[Chunk]:
        """The committed chunks `seq` .. `seq + count - 1`, in order, waiting for a commit of
        them still in flight (a producer resuming right after a disconnect); fewer when that
        commit failed."""
        job = await self._durable(live)
        version = live.current.output_version
        if (job.output_version, job.output_seq) < (version, seq + count - 1):
            await self._require_committer().barrier()
        last = seq + count - 1
        held = [c for c in self._tail.after(job.key, seq - 1, version=version) if c.seq <= last]
        if held:
            return held
        return await self._store.read_output(
            job.namespace, job.job_id, version=version, after_seq=seq - 1, limit=count
        )

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
        self._webhooks.failed(batch.deliveries)
        self._jobs.on_failed(batch)
        self.namespaces.forget(batch.namespaces)

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


@dataclass(frozen=True, slots=True)
class _Wait:
    """What one submit item waits for: its new job's add (`future`, `job`), an existing
    job's commit (`live`), or nothing (`error`, its outcome)."""

    job: Job | None = None
    future: asyncio.Future[None] | None = None
    created: bool = False
    live: LiveJob | None = None
    #: `live` exists with another request: 409 once it is durable.
    conflict: bool = False
    error: AosError | None = None


async def _concurrently(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """`asyncio.gather`, without its task when there is one call (a single submit)."""
    if len(calls) == 1:
        return [await calls[0]]
    return list(await asyncio.gather(*calls))


def _with_job_id(item: SubmitItem) -> SubmitItem:
    """The item, with a new job id when it has none (`ShardClient` gives one before)."""
    return item if item.job_id is not None else replace(item, job_id=new_job_id())


def _id_of(item: SubmitItem) -> str:
    if item.job_id is None:
        raise RuntimeError("a submit item reached its round without a job id")
    return item.job_id


def _creation_failing() -> SubmitResult:
    message = "the job's creation by concurrent requests keeps failing to commit; retry shortly"
    return SubmitResult(error=StoreUnavailable(message, retry_after_s=CREATION_RETRY_AFTER_S))


def _job_of(result: SubmitResult) -> Job:
    if result.job is None:
        raise RuntimeError("a submit result holds neither a job nor an error")
    return result.job


def _changed(job: Job, revision: int | None, after_seq: int | None) -> bool:
    if revision is None and after_seq is None:
        return True
    if revision is not None and job.revision != revision:
        return True
    return after_seq is not None and job.output_seq > after_seq
