"""The in-memory reference Store: the contract's semantics, fencing included, for unit tests."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence

from storage import rules
from storage.errors import StoreUnavailable
from storage.records import (
    ApiKey,
    AuditEntry,
    Batch,
    Chunk,
    Delivery,
    DeliveryStatus,
    ExpiryCursor,
    Job,
    JobQuery,
    Namespace,
    OutputVersion,
)

_JobKey = tuple[str, str]


class MemoryStore:
    """A Store in dicts. Records are frozen, so they are kept and handed out as they are.

    Every method runs to completion without awaiting, so a commit is atomic with
    respect to every other call on the event loop, as a transaction would be.
    """

    max_chunk_bytes = 16 * 1024 * 1024

    def __init__(self, url: str = "memory://") -> None:
        self.jobs: dict[str, dict[str, Job]] = defaultdict(dict)
        # (namespace, job_id) -> version -> seq -> chunk; a deleted job's stays until purged.
        self.output: dict[_JobKey, dict[int, dict[int, Chunk]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        #: (namespace, job_id) -> version -> the version, once a later one completed it.
        self.versions: dict[_JobKey, dict[int, OutputVersion]] = defaultdict(dict)
        self.deliveries: dict[str, Delivery] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.api_keys: dict[str, ApiKey] = {}
        self.audit: list[AuditEntry] = []
        self.leases: dict[int, tuple[int, str]] = {}
        #: Deleted jobs whose output is still here, and their slot.
        self.purges: dict[_JobKey, int | None] = {}
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        if not self._open:
            raise StoreUnavailable("the in-memory store is not open")

    async def commit(self, batch: Batch) -> None:
        if batch.slot is not None:
            self._check_fence(batch.slot, batch.epoch)
        for job in batch.jobs:
            self.jobs[job.namespace][job.job_id] = job
        for chunk in batch.chunks:
            # setdefault: a retried commit's chunk is a no-op, like ON CONFLICT DO NOTHING.
            versions = self.output[(chunk.namespace, chunk.job_id)]
            versions[chunk.version].setdefault(chunk.seq, chunk)
        for done in batch.versions:
            self.versions[(done.namespace, done.job_id)].setdefault(done.version, done)
        self.deliveries.update((d.delivery_id, d) for d in batch.deliveries)
        self.namespaces.update((ns.name, ns) for ns in batch.namespaces)
        self.api_keys.update((key.key_id, key) for key in batch.api_keys)
        self.audit.extend(batch.audit)
        for key in batch.deleted:
            self._delete(key)
            self.purges.setdefault(key, batch.slot)

    async def acquire_shard(self, slot: int, owner: str) -> int:
        epoch = self.leases.get(slot, (0, ""))[0] + 1
        self.leases[slot] = (epoch, owner)
        return epoch

    async def load_shard(self, slot: int) -> list[Job]:
        return [
            job
            for jobs in self.jobs.values()
            for job in jobs.values()
            if job.slot == slot and not job.status.terminal
        ]

    async def expired_jobs(
        self, slot: int, *, now: float, after: ExpiryCursor | None = None, limit: int = 100
    ) -> list[Job]:
        every = (job for jobs in self.jobs.values() for job in jobs.values())
        return rules.expired_page(every, slot, now, after, limit)

    async def get_job(self, namespace: str, job_id: str) -> Job | None:
        jobs = self.jobs.get(namespace)
        return None if jobs is None else jobs.get(job_id)

    async def get_jobs(self, namespace: str, job_ids: Sequence[str]) -> list[Job]:
        jobs = self.jobs.get(namespace, {})
        return [jobs[job_id] for job_id in dict.fromkeys(job_ids) if job_id in jobs]

    async def list_jobs(self, namespace: str, query: JobQuery) -> list[Job]:
        return rules.page_of_jobs(self.jobs.get(namespace, {}).values(), query)

    async def read_output(
        self,
        namespace: str,
        job_id: str,
        *,
        version: int = 1,
        after_seq: int = 0,
        limit: int = 256,
        max_bytes: int | None = None,
    ) -> list[Chunk]:
        if (namespace, job_id) in self.purges:
            return []
        chunks = self.output.get((namespace, job_id), {}).get(version, {})
        seqs = sorted(seq for seq in chunks if seq > after_seq)[: max(0, limit)]
        return rules.page([chunks[seq] for seq in seqs], max_bytes)

    async def list_versions(self, namespace: str, job_id: str) -> list[OutputVersion]:
        versions = self.versions.get((namespace, job_id), {})
        return [versions[number] for number in sorted(versions)]

    async def load_purges(self, slot: int) -> list[tuple[str, str]]:
        return [key for key, owner in self.purges.items() if owner == slot]

    async def purge_output(
        self, namespace: str, job_id: str, *, fence: tuple[int, int], max_bytes: int
    ) -> bool:
        self._check_fence(*fence)
        key = (namespace, job_id)
        versions = self.output.get(key)
        if not versions:
            self.output.pop(key, None)
            self.purges.pop(key, None)
            return True
        positions = [
            (v, seq, versions[v][seq].offset)
            for v in sorted(versions)
            for seq in sorted(versions[v])
        ]
        version, last = rules.purge_step(positions[: rules.PURGE_STEP_CHUNKS], max_bytes)
        chunks = versions[version]
        for seq in [seq for seq in chunks if seq <= last]:
            del chunks[seq]
        if not chunks:
            del versions[version]
        return False

    async def read_output_at(
        self,
        namespace: str,
        job_id: str,
        *,
        version: int = 1,
        offset: int,
        limit: int = 256,
        max_bytes: int | None = None,
    ) -> list[Chunk]:
        chunks = self.output.get((namespace, job_id), {}).get(version, {})
        ordered = [chunks[seq] for seq in sorted(chunks)]
        first = bisect.bisect_right(ordered, offset, key=lambda chunk: chunk.end)
        if first == len(ordered):
            return []
        return await MemoryStore.read_output(  # this class's, whoever subclasses it
            self,
            namespace,
            job_id,
            version=version,
            after_seq=ordered[first].seq - 1,
            limit=limit,
            max_bytes=max_bytes,
        )

    async def get_namespace(self, name: str) -> Namespace | None:
        return self.namespaces.get(name)

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        return self.api_keys.get(key_id)

    async def load_pending_deliveries(self, slot: int) -> list[Delivery]:
        return rules.in_due_order(
            d
            for d in self.deliveries.values()
            if d.slot == slot and d.status is DeliveryStatus.PENDING
        )

    async def list_deliveries(self, namespace: str, job_id: str) -> list[Delivery]:
        return rules.in_due_order(
            d for d in self.deliveries.values() if (d.namespace, d.job_id) == (namespace, job_id)
        )

    async def get_delivery(self, namespace: str, delivery_id: str) -> Delivery | None:
        delivery = self.deliveries.get(delivery_id)
        return delivery if delivery is not None and delivery.namespace == namespace else None

    def _check_fence(self, slot: int, epoch: int | None) -> None:
        lease = self.leases.get(slot)
        rules.check_fence(slot, epoch, None if lease is None else lease[0])

    def _delete(self, key: _JobKey) -> None:
        namespace, job_id = key
        self.jobs.get(namespace, {}).pop(job_id, None)
        self.versions.pop(key, None)
        doomed = [i for i, d in self.deliveries.items() if (d.namespace, d.job_id) == key]
        for delivery_id in doomed:
            del self.deliveries[delivery_id]
