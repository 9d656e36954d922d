"""Retention: when a finished job expires, and the sweeper that deletes a shard's expired jobs.

A job's output is kept for its TTL after the job finished (`completed_at`): its own
`retentionPolicy.ttl`, else its namespace's default as it was then. The expiry is fixed
when the job finishes, stored with it (`Job.expires_at`, shown as `expiresAt`); a job that
runs never expires, and one with neither TTL is kept until it is deleted.

Plain asyncio, no Ray: the shard runs one `Sweeper` and hands it its own delete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from storage.base import Store
from storage.errors import AosError, Fenced, Overloaded, StoreUnavailable
from storage.records import ExpiryCursor, Job

log = logging.getLogger(__name__)

#: Who deleted an expired job, in the audit log.
RETENTION_ACTOR = "retention"

#: Deletes one expired job as `DELETE /api/v1/jobs/{id}` does (one commit: the job, its
#: output, versions and deliveries, and an audit entry); False when the shard finds it no
#: longer expired (it changed after the store was read).
Expire = Callable[[Job], Awaitable[bool]]

#: Failures of the store, the shard's write buffer or its lease, not of the job: the pass
#: ends there and the job is tried again at the next one.
_NOT_THE_JOBS = (StoreUnavailable, Overloaded)


def expires_at(
    completed_at: float, *, ttl_s: int | None, default_ttl_s: int | None
) -> float | None:
    """When a job finished at `completed_at` (epoch seconds) expires: its own TTL (seconds)
    counts, else its namespace's default; None when neither is set (kept until deleted)."""
    ttl = ttl_s if ttl_s is not None else default_ttl_s
    return None if ttl is None else completed_at + ttl


class Sweeper:
    """Deletes a slot's expired jobs: a pass every `interval_s`, at most `batch_size` jobs a
    pass, the earliest expired first, one deletion at a time.

    Each pass reads the store (`Store.expired_jobs`, by slot and through an index), so the
    jobs that were finished when the shard started, which it never loaded, are swept too.
    """

    def __init__(
        self,
        store: Store,
        *,
        slot: int,
        expire: Expire,
        clock: Callable[[], float] = time.time,
        interval_s: float = 5.0,
        batch_size: int = 100,
    ) -> None:
        self._store = store
        self._slot = slot
        self._expire = expire
        self._clock = clock
        self._interval_s = interval_s
        self._batch_size = batch_size
        #: The last job passed over for a fault of its own; later passes start after it.
        self._after: ExpiryCursor | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def sweep(self) -> int:
        """One pass; returns how many jobs it deleted.

        A job that cannot be deleted for a reason of its own (its namespace is gone or no
        longer this shard's; it changed meanwhile) is logged and passed over, so such jobs
        cannot fill every pass; the cursor restarts with the shard. A failure of the store,
        the write buffer or the lease is raised: its job is tried again next pass. A
        deletion is one commit, so a crash leaves each job whole or gone.
        """
        now = self._clock()
        jobs = await self._store.expired_jobs(
            self._slot, now=now, after=self._after, limit=self._batch_size
        )
        deleted = 0
        for job in jobs:
            try:
                if await self._expire(job):
                    deleted += 1
                    continue
            except _NOT_THE_JOBS:
                raise
            except AosError as exc:
                log.warning("retention: not deleting %s/%s: %r", job.namespace, job.job_id, exc)
            self._after = (job.expires_at or now, job.namespace, job.job_id)
        return deleted

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sweep()
            except Fenced:
                log.warning(
                    "retention: slot %d lost its lease; this copy stops sweeping", self._slot
                )
                return
            except AosError as exc:
                log.warning("retention: a sweep of slot %d stopped: %r", self._slot, exc)
            except Exception:  # a bug must not end retention for the life of the shard
                log.exception("retention: a sweep of slot %d failed", self._slot)
