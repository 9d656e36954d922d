"""Write-behind group commit: many callers, one transaction, each caller told once it is durable."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from actors import metrics
from actors.admission import CommitPace, retry_after_s
from storage.base import Store
from storage.errors import AosError, Conflict, Overloaded, StoreUnavailable, Unstorable
from storage.records import (
    ApiKey,
    AuditEntry,
    Batch,
    Chunk,
    Delivery,
    Job,
    Namespace,
    OutputVersion,
)

log = logging.getLogger(__name__)

OVERLOAD_RETRY_AFTER_S = 1.0
BUILT_ON_REFUSED = (
    "this write was built on an earlier write of the same job that the store refused,"
    " so it was not written either; read the job and retry"
)

Key = tuple[str, str]


async def durable(future: asyncio.Future[None]) -> None:
    """Wait for an add to commit. Shielded: a caller that goes away (a client disconnect
    cancels its handler) leaves its write to commit, as later writes were built on it."""
    await asyncio.shield(future)


class GroupCommitter:
    """Collects mutations into a batch and commits it while callers wait.

    The flusher is self-clocking: while one commit is in flight the next batch
    fills, and it is committed as soon as the first returns (after an optional
    `linger_s`). Light load gets one-write batches and the lowest latency; heavy
    load gets large batches and the highest throughput. One commit at a time, so
    batches reach the store in the order their mutations were applied.

    Each add has its own outcome. When the store refuses a batch for anything but
    being unavailable (one caller's data it cannot hold), the batch is committed by
    halves, in order, down to the adds it refuses alone: only those callers fail.
    """

    def __init__(
        self,
        store: Store,
        *,
        slot: int | None,
        epoch: int | None,
        on_committed: Callable[[Batch], None],
        on_failed: Callable[[Batch, AosError], None],
        linger_s: float = 0.0,
        max_batch_items: int = 5000,
        max_pending_items: int = 50_000,
        max_pending_bytes: int = 256 * 1024 * 1024,
        max_commit_wait_s: float = 5.0,
    ) -> None:
        self._store = store
        self._slot, self._epoch = slot, epoch
        self._tags = metrics.slot_tags(slot)
        self._on_committed, self._on_failed = on_committed, on_failed
        self._linger_s = linger_s
        self._max_batch_items = max_batch_items
        self._max_pending_items = max_pending_items
        self._max_pending_bytes = max_pending_bytes
        self._max_commit_wait_s = max_commit_wait_s
        self._queue: collections.deque[_Pending] = collections.deque()
        self._flushing: _Pending | None = None
        self._last: _Pending | None = None
        self._pending_items = 0
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Adds per store commit that succeeded.
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        #: The store's pace, from the commits that succeeded (`admit`).
        self.pace = CommitPace()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Commit what is pending, then stop."""
        await self.barrier()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def add(
        self,
        *,
        jobs: Iterable[Job] = (),
        chunks: Iterable[Chunk] = (),
        versions: Iterable[OutputVersion] = (),
        deleted: Iterable[tuple[str, str]] = (),
        deliveries: Iterable[Delivery] = (),
        audit: Iterable[AuditEntry] = (),
        namespaces: Iterable[Namespace] = (),
        api_keys: Iterable[ApiKey] = (),
    ) -> asyncio.Future[None]:
        """Queue one caller's mutations; its own future resolves once they are durable, or
        fails: `Unstorable` when the store refused this add's data (the rest of its batch
        commits), `Conflict` when it was built on a refused add of the same job,
        `StoreUnavailable` when the store failed.

        Raises `Overloaded` at once when the write-behind buffer is full (`admit`).
        """
        jobs, chunks, deleted = list(jobs), list(chunks), list(deleted)
        size = sum(len(c.data) for c in chunks)
        self.admit(size)
        pending = self._open_batch({job.key for job in jobs} | set(deleted))
        batch = pending.batch
        batch.jobs.extend(jobs)
        batch.chunks.extend(chunks)
        batch.versions.extend(versions)
        batch.deleted.extend(deleted)
        batch.deliveries.extend(deliveries)
        batch.audit.extend(audit)
        batch.namespaces.extend(namespaces)
        batch.api_keys.extend(api_keys)
        entry = _Add(_ends(batch), size, asyncio.get_running_loop().create_future())
        pending.adds.append(entry)
        pending.deleted_keys.update(deleted)
        self._pending_items += 1
        self._pending_bytes += size
        self._wakeup.set()
        return entry.future

    def admit(self, size: int) -> None:
        """`Overloaded` (with a spread `Retry-After`) unless one more add of `size` bytes fits
        the buffer's items and bytes, and would not wait past `max_commit_wait_s` behind the
        adds queued, at the pace the store commits (`CommitPace`). The wait counts once the
        queue is past one batch: the pace of a store seen only at light load is its slowest
        per write, and one batch is the fastest way to learn the real one."""
        full = self._pending_items >= self._max_pending_items or (
            self._pending_bytes > 0 and self._pending_bytes + size > self._max_pending_bytes
        )
        wait_s = None
        if self._pending_items >= self._max_batch_items:
            wait_s = self.pace.wait_s(self._pending_items)
        slow = wait_s is not None and wait_s > self._max_commit_wait_s
        if full or slow:
            why = "is full" if full else f"holds {wait_s:.0f} s of commits"
            metrics.SHARD_SHED.inc(1, self._tags)
            raise Overloaded(
                f"the shard's write buffer {why}; retry after the Retry-After seconds",
                retry_after_s=retry_after_s(OVERLOAD_RETRY_AFTER_S),
            )

    async def barrier(self) -> None:
        """Wait until everything added so far is committed (or failed), the batch in
        flight included."""
        last = self._last
        if last is not None and not last.finished:
            if last.waiter is None:
                last.waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(last.waiter)

    @property
    def pending_items(self) -> int:
        return self._pending_items

    def _open_batch(self, keys: set[Key]) -> _Pending:
        # A store applies a batch's upserts before its deletes, so a job deleted in
        # this batch and written again must go into the next one.
        last = self._queue[-1] if self._queue else None
        if last is None or len(last.adds) >= self._max_batch_items or keys & last.deleted_keys:
            last = self._last = _Pending(Batch(slot=self._slot, epoch=self._epoch))
            self._queue.append(last)
        return last

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            while self._queue:
                pending = self._flushing = self._queue.popleft()
                try:
                    await self._flush(pending)
                except StoreUnavailable as exc:
                    self._fail_all(exc)
                finally:
                    self._flushing = None
                    pending.finish()

    async def _flush(self, pending: _Pending) -> None:
        """Commit the batch in one store call; if the store refuses it, find whose data it
        refuses. `StoreUnavailable` propagates: then what is not committed yet fails."""
        if not pending.adds:  # each was built on a refused add and failed with it
            return
        refusal = await self._commit(pending.adds, pending.batch)
        if refusal is not None:
            pending.split()
            await self._isolate(pending.adds, refusal)

    async def _commit(self, adds: list[_Add], batch: Batch) -> Exception | None:
        """Commit `adds` (merged in `batch`) in one store call; the store's refusal, if any."""
        batch = _dedupe(batch)
        started = time.monotonic()
        try:
            await self._store.commit(batch)
        except StoreUnavailable:
            raise
        except Exception as exc:  # the data's fault, or a backend bug: find whose it is
            return exc
        finally:
            metrics.COMMIT_DURATION.observe(time.monotonic() - started, self._tags)
        self.batch_sizes[len(adds)] += 1
        self.pace.committed(len(adds), time.monotonic() - started)
        metrics.COMMIT_BATCH_SIZE.observe(len(adds), self._tags)
        self._on_committed(batch)
        for add in adds:
            self._settle(add, None)
        return None

    async def _isolate(self, adds: list[_Add], refusal: Exception) -> None:
        """The store refused `adds` together: commit each half the same way, left first, so
        the store still sees every mutation in order and only an add refused on its own
        fails. One refused add among n costs about 2*log2(n) commits."""
        if len(adds) == 1:
            self._refuse(adds[0], refusal)
            return
        middle = len(adds) // 2
        for half in (adds[:middle], adds[middle:]):
            part = [add for add in half if not add.settled]  # less a refused add's dependents
            if part:
                again = await self._commit(part, _merge(self._slot, self._epoch, part))
                if again is not None:
                    await self._isolate(part, again)

    def _refuse(self, add: _Add, refusal: Exception) -> None:
        """Fail the one add the store refused, and the adds built on it; never with the
        store's text, which may quote the data (the log keeps it)."""
        log.warning(
            "slot %s: the store refused one write; only its caller fails",
            self._slot,
            exc_info=refusal,
        )
        self._fail([add], Unstorable())
        self._fail_dependents(_job_keys(add.own()))

    def _fail_dependents(self, keys: set[Key]) -> None:
        """Fail the adds not yet committed that write one of these jobs: they were built on
        the refused add (its seq numbers, its revision), so committing them alone could
        leave a gap. The jobs reload from the store (`on_failed`), so a retry sees the
        truth."""
        if not keys:
            return
        conflict = Conflict(BUILT_ON_REFUSED)
        flushing = [self._flushing] if self._flushing is not None else []
        for pending in [*flushing, *self._queue]:
            pending.split()
            built_on = [
                add
                for add in pending.adds
                if not add.settled and not keys.isdisjoint(_job_keys(add.own()))
            ]
            if built_on:
                self._fail(built_on, conflict)
                if pending is not self._flushing:
                    pending.keep([add for add in pending.adds if not add.settled])

    def _fail_all(self, exc: AosError) -> None:
        """The store failed: what is not committed yet fails, the rest of the batch in
        flight and every later batch too: they were built on its state."""
        batches = [self._flushing] if self._flushing is not None else []
        batches.extend(self._queue)
        self._queue.clear()
        for pending in batches:
            rest = [add for add in pending.adds if not add.settled]
            if len(rest) == len(pending.adds):
                self._fail(rest, exc, pending.batch)
            elif rest:
                self._fail(rest, exc)
            pending.finish()

    def _fail(self, adds: list[_Add], exc: AosError, batch: Batch | None = None) -> None:
        """`batch`: the adds merged, when the caller has them so."""
        if adds:
            self._on_failed(_merge(self._slot, self._epoch, adds) if batch is None else batch, exc)
        for add in adds:
            self._settle(add, exc)

    def _settle(self, add: _Add, exc: AosError | None) -> None:
        add.settled = True
        self._pending_items -= 1
        self._pending_bytes -= add.nbytes
        if add.future.done():
            return
        if exc is None:
            add.future.set_result(None)
        else:
            add.future.set_exception(exc)
            add.future.exception()  # a caller may have gone; never warn "never retrieved"


@dataclass(slots=True)
class _Add:
    """One caller's add: where its mutations end in each list of its batch (`_ends`), its
    outcome, and once something failed its own mutations cut out (`part`)."""

    ends: tuple[int, ...]
    nbytes: int
    future: asyncio.Future[None]
    settled: bool = False
    part: Batch | None = None

    def own(self) -> Batch:
        if self.part is None:
            raise RuntimeError("_Pending.split() was not called")
        return self.part


@dataclass(slots=True)
class _Pending:
    """A batch: every add's mutations merged as they arrive (the one commit of the fast
    path), and the adds, to tell each caller its outcome."""

    batch: Batch
    adds: list[_Add] = field(default_factory=list)
    deleted_keys: set[Key] = field(default_factory=set)
    finished: bool = False
    #: Made only when someone waits for the batch (`barrier`): most batches have no waiter.
    waiter: asyncio.Future[None] | None = None

    def finish(self) -> None:
        self.finished = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def split(self) -> None:
        """Cut each add's own mutations out of the merged batch (the failure path)."""
        start: tuple[int, ...] = (0,) * len(_LISTS)
        for add in self.adds:
            if add.part is None:
                add.part = Batch(
                    **{
                        name: getattr(self.batch, name)[begin:end]
                        for name, begin, end in zip(_LISTS, start, add.ends, strict=True)
                    }
                )
            start = add.ends

    def keep(self, adds: list[_Add]) -> None:
        """Keep only `adds` (split), merged again: a later add appends after them."""
        self.batch = Batch(slot=self.batch.slot, epoch=self.batch.epoch)
        for add in adds:
            _extend(self.batch, add.own())
            add.ends = _ends(self.batch)
        self.adds = adds


_LISTS = ("jobs", "chunks", "versions", "deleted", "deliveries", "audit", "namespaces", "api_keys")


def _ends(batch: Batch) -> tuple[int, ...]:
    return (
        len(batch.jobs),
        len(batch.chunks),
        len(batch.versions),
        len(batch.deleted),
        len(batch.deliveries),
        len(batch.audit),
        len(batch.namespaces),
        len(batch.api_keys),
    )


def _extend(batch: Batch, part: Batch) -> None:
    for name in _LISTS:
        getattr(batch, name).extend(getattr(part, name))


def _merge(slot: int | None, epoch: int | None, adds: list[_Add]) -> Batch:
    batch = Batch(slot=slot, epoch=epoch)
    for add in adds:
        _extend(batch, add.own())
    return batch


def _job_keys(part: Batch) -> set[Key]:
    """The jobs an add writes: their rows, their output, their deletion."""
    keys = {job.key for job in part.jobs} | set(part.deleted)
    keys.update((chunk.namespace, chunk.job_id) for chunk in part.chunks)
    keys.update((version.namespace, version.job_id) for version in part.versions)
    return keys


def _dedupe(batch: Batch) -> Batch:
    """Keep only the newest record of each job: a batch writes a job's row once. A copy, so
    the merged batch still holds each add's records in place (`_Pending.split`)."""
    latest: dict[Key, Job] = {}
    for job in batch.jobs:
        latest[job.key] = job
    if len(latest) == len(batch.jobs):
        return batch
    return replace(batch, jobs=list(latest.values()))
