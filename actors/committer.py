"""Write-behind group commit: many callers, one transaction, each caller told once it is durable."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from storage.base import Store
from storage.errors import AosError, Overloaded, StoreUnavailable
from storage.records import ApiKey, AuditEntry, Batch, Chunk, Delivery, Job, Namespace

OVERLOAD_RETRY_AFTER_S = 1.0


async def durable(future: asyncio.Future[None]) -> None:
    """Wait for a batch to commit. Shielded: the future is shared by the whole batch, and a
    caller that goes away (a client disconnect cancels its handler) must not cancel it for
    everybody else."""
    await asyncio.shield(future)


class GroupCommitter:
    """Collects mutations into a batch and commits it while callers wait.

    The flusher is self-clocking: while one commit is in flight the next batch
    fills, and it is committed as soon as the first returns (after an optional
    `linger_s`). Light load gets one-write batches and the lowest latency; heavy
    load gets large batches and the highest throughput. One commit at a time, so
    batches reach the store in the order their mutations were applied.
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
    ) -> None:
        self._store = store
        self._slot, self._epoch = slot, epoch
        self._on_committed, self._on_failed = on_committed, on_failed
        self._linger_s = linger_s
        self._max_batch_items = max_batch_items
        self._max_pending_items = max_pending_items
        self._max_pending_bytes = max_pending_bytes
        self._queue: collections.deque[_Pending] = collections.deque()
        self._pending_items = 0
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batch_sizes: collections.Counter[int] = collections.Counter()

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
        deleted: Iterable[tuple[str, str]] = (),
        deliveries: Iterable[Delivery] = (),
        audit: Iterable[AuditEntry] = (),
        namespaces: Iterable[Namespace] = (),
        api_keys: Iterable[ApiKey] = (),
    ) -> asyncio.Future[None]:
        """Queue mutations; the future resolves once they are durable (or fails with the cause).

        Raises `Overloaded` at once when the write-behind buffer is full.
        """
        jobs, chunks, deleted = list(jobs), list(chunks), list(deleted)
        size = sum(len(c.data) for c in chunks)
        if self._pending_items >= self._max_pending_items or (
            self._pending_bytes and self._pending_bytes + size > self._max_pending_bytes
        ):
            raise Overloaded(
                "the shard's write buffer is full; retry shortly",
                retry_after_s=OVERLOAD_RETRY_AFTER_S,
            )
        keys = {job.key for job in jobs} | set(deleted)
        pending = self._open_batch(keys)
        pending.batch.jobs.extend(jobs)
        pending.batch.chunks.extend(chunks)
        pending.batch.deleted.extend(deleted)
        pending.batch.deliveries.extend(deliveries)
        pending.batch.audit.extend(audit)
        pending.batch.namespaces.extend(namespaces)
        pending.batch.api_keys.extend(api_keys)
        pending.adds += 1
        pending.nbytes += size
        pending.deleted_keys.update(deleted)
        self._pending_items += 1
        self._pending_bytes += size
        self._wakeup.set()
        return pending.future

    async def barrier(self) -> None:
        """Wait until everything queued so far is committed (or failed)."""
        if self._queue:
            await asyncio.gather(self._queue[-1].future, return_exceptions=True)

    @property
    def pending_items(self) -> int:
        return self._pending_items

    def _open_batch(self, keys: set[tuple[str, str]]) -> _Pending:
        # A store applies a batch's upserts before its deletes, so a job deleted in
        # this batch and written again must go into the next one.
        last = self._queue[-1] if self._queue else None
        if last is None or last.adds >= self._max_batch_items or keys & last.deleted_keys:
            batch = Batch(slot=self._slot, epoch=self._epoch)
            last = _Pending(batch, asyncio.get_running_loop().create_future())
            self._queue.append(last)
        return last

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            while self._queue:
                await self._commit_one()

    async def _commit_one(self) -> None:
        pending = self._queue.popleft()
        try:
            await self._store.commit(_dedupe(pending.batch))
        except AosError as exc:
            self._fail_all(pending, exc)
            return
        except Exception as exc:  # a backend bug must not kill the flusher; the cause is kept
            self._fail_all(pending, StoreUnavailable(f"commit failed: {exc!r}"))
            return
        self._settle(pending)
        self.batch_sizes[pending.adds] += 1
        self._on_committed(pending.batch)
        if not pending.future.done():
            pending.future.set_result(None)

    def _fail_all(self, first: _Pending, exc: AosError) -> None:
        """A failed commit fails every later batch too: they were built on its state."""
        failed = [first, *self._queue]
        self._queue.clear()
        for pending in failed:
            self._settle(pending)
            self._on_failed(pending.batch, exc)
            if not pending.future.done():
                pending.future.set_exception(exc)
                pending.future.exception()  # a caller may have gone; never warn "never retrieved"

    def _settle(self, pending: _Pending) -> None:
        self._pending_items -= pending.adds
        self._pending_bytes -= pending.nbytes


@dataclass(slots=True)
class _Pending:
    batch: Batch
    future: asyncio.Future[None]
    adds: int = 0
    nbytes: int = 0
    deleted_keys: set[tuple[str, str]] = field(default_factory=set)


def _dedupe(batch: Batch) -> Batch:
    """Keep only the newest record of each job: a batch writes a job's row once."""
    latest: dict[tuple[str, str], Job] = {}
    for job in batch.jobs:
        latest[job.key] = job
    batch.jobs = list(latest.values())
    return batch
