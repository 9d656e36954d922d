"""The jobs a shard has loaded, in two views each, and the recent output of each.

Every running job of the slot is loaded; terminal ones stay in a bounded LRU. `current`
has every change applied (to validate the next one), `committed` is what the store
holds (the only view readers see). Waiters are woken when a change is committed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable

from actors.digest import RunningDigest
from actors.tail import OutputTail
from storage.base import Store
from storage.errors import NotFound
from storage.records import Batch, Chunk, Job

Key = tuple[str, str]


class LiveJob:
    """A loaded job. Slotted: a shard holds 100k+ of these.

    `digest` is the running SHA-256 of `current`'s latest output version (None when it is
    not known: the job was loaded with output in that version; `actors.digest`). It follows
    `current`, as every add of the job does: when one fails, the live job is dropped, and
    its digest with it."""

    __slots__ = ("changed", "committed", "current", "digest")

    def __init__(self, job: Job, *, committed: bool) -> None:
        self.current = job
        self.committed: Job | None = job if committed else None
        self.changed: asyncio.Event | None = None
        self.digest = RunningDigest(job.output_version) if job.output_seq == 0 else None

    def apply(self, job: Job, chunks: Iterable[Chunk] = ()) -> None:
        """`job` (with `chunks`, its new output) is the current view now."""
        if job.output_version != self.current.output_version:
            self.digest = RunningDigest(job.output_version) if job.output_seq == 0 else None
        self.current = job
        if self.digest is not None:
            for chunk in chunks:
                self.digest.feed(chunk)

    def wake(self) -> None:
        if self.changed is not None:
            self.changed.set()
            self.changed = None


class JobTable:
    def __init__(self, store: Store, *, tail: OutputTail, terminal_cache_jobs: int) -> None:
        self._store = store
        self.tail = tail
        self._terminal_cache_jobs = terminal_cache_jobs
        self._jobs: dict[Key, LiveJob] = {}
        self._terminal: collections.OrderedDict[Key, None] = collections.OrderedDict()
        #: Jobs whose delete is committing: neither loaded nor created until it is done.
        self.deleting: set[Key] = set()

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def running(self) -> int:
        """The loaded jobs that are not terminal (the others are the terminal cache)."""
        return len(self._jobs) - len(self._terminal)

    def get(self, key: Key) -> LiveJob | None:
        return self._jobs.get(key)

    def add(self, job: Job, *, committed: bool) -> LiveJob:
        live = self._jobs[job.key] = LiveJob(job, committed=committed)
        return live

    async def load(self, namespace: str, job_id: str) -> LiveJob:
        """The live job, loading a terminal one from the store on first access."""
        key = (namespace, job_id)
        live = self._jobs.get(key)
        if live is None and key not in self.deleting:
            job = await self._store.get_job(namespace, job_id)
            live = self._loaded(job) if job is not None else None
        if live is None:
            raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
        return live

    async def load_many(self, namespace: str, job_ids: Iterable[str]) -> dict[str, LiveJob]:
        """The live jobs among `job_ids` that exist, as `load` finds each, by id; one store
        read for those not in memory (none when all are)."""
        found: dict[str, LiveJob] = {}
        missing = []
        for job_id in job_ids:
            live = self._jobs.get((namespace, job_id))
            if live is not None:
                found[job_id] = live
            elif (namespace, job_id) not in self.deleting:
                missing.append(job_id)
        for job in await self._store.get_jobs(namespace, missing) if missing else ():
            live = self._loaded(job)
            if live is not None:
                found[job.job_id] = live
        return found

    def _loaded(self, job: Job) -> LiveJob | None:
        """`job`, just read from the store, as the live job (unless another call loaded it
        meanwhile, or is deleting it)."""
        live = self._jobs.get(job.key)
        if live is None and job.key not in self.deleting:
            live = self.add(job, committed=True)
            if job.status.terminal:
                self._remember_terminal(job.key)
        return live

    def on_committed(self, batch: Batch) -> None:
        """Readers see the batch's jobs and output now; their waiters wake."""
        for job in batch.jobs:
            self._commit_view(job)
        for chunk in batch.chunks:
            if (chunk.namespace, chunk.job_id) in self._jobs:
                self.tail.add(chunk)
        for job in batch.jobs:
            live = self._jobs.get(job.key)
            if live is not None:
                live.wake()

    def on_failed(self, batch: Batch) -> None:
        """Forget the batch's jobs: the next access reloads the store's truth."""
        for job in batch.jobs:
            live = self._jobs.get(job.key)
            self.forget(job.key)
            if live is not None:
                live.wake()

    def forget(self, key: Key) -> None:
        self._jobs.pop(key, None)
        self._terminal.pop(key, None)
        self.tail.forget(key)

    def _commit_view(self, job: Job) -> None:
        live = self._jobs.get(job.key)
        if live is None:
            return
        if live.committed is None or job.revision > live.committed.revision:
            live.committed = job
        if job.status.terminal:
            self._remember_terminal(job.key)
        else:  # a terminal job run again (a new output version): kept while it runs
            self._terminal.pop(job.key, None)

    def _remember_terminal(self, key: Key) -> None:
        self._terminal[key] = None
        self._terminal.move_to_end(key)
        while len(self._terminal) > self._terminal_cache_jobs:
            old, _ = self._terminal.popitem(last=False)
            live = self._jobs.get(old)
            if live is not None and live.changed is None and live.current.status.terminal:
                self.forget(old)
