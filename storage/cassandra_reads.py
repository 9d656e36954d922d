"""The Cassandra store's reads: each by key or a clustering range of one partition, bounded
by a LIMIT, filtered where the table cannot by the shared rules (`storage.rules`)."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from storage import cassandra_schema as cql
from storage import rules
from storage.cassandra_driver import Row
from storage.cassandra_rows import (
    load_api_key,
    load_delivery,
    load_job,
    load_namespace,
    load_version,
)
from storage.codec import unpack
from storage.records import (
    ApiKey,
    Chunk,
    Delivery,
    DeliveryStatus,
    ExpiryCursor,
    Job,
    JobQuery,
    Namespace,
    OutputVersion,
)

#: Ids per `get_jobs` statement.
IDS_PER_QUERY = 100
#: Rows per list_jobs read: pages are filtered by status and tag after the read.
LIST_ROWS = 200
#: Bounds no stored value passes (clustering ranges open at one end).
LOWEST, HIGHEST = -1.7e308, 1.7e308
#: Chunk bytes past which unpacking runs on a worker thread.
OFF_LOOP_BYTES = 256 * 1024


class CassandraReads(ABC):
    @abstractmethod
    async def _fetch(
        self, name: str, params: Sequence[Any] = (), *, serial: bool = False
    ) -> list[Row]: ...

    async def get_job(self, namespace: str, job_id: str) -> Job | None:
        rows = await self._fetch("GET_JOB", (namespace, job_id))
        return load_job(rows[0][0]) if rows else None

    async def get_jobs(self, namespace: str, job_ids: Sequence[str]) -> list[Job]:
        unique = list(dict.fromkeys(job_ids))
        parts = [unique[i : i + IDS_PER_QUERY] for i in range(0, len(unique), IDS_PER_QUERY)]
        found = await asyncio.gather(*(self._fetch("GET_JOBS", (namespace, p)) for p in parts))
        return [load_job(row[0]) for rows in found for row in rows]

    async def list_jobs(self, namespace: str, query: JobQuery) -> list[Job]:
        """Reads the namespace's listing newest first from the cursor (and `created_to`)
        down to `created_from`, a `LIST_ROWS` page at a time, until `query.limit` match."""
        upper = query.before or (HIGHEST, "")
        if query.created_to is not None:
            upper = min(upper, (query.created_to, ""))
        lower = (LOWEST if query.created_from is None else query.created_from, "")
        found: list[Job] = []
        while len(found) < query.limit:
            rows = await self._fetch("LIST_JOBS", (namespace, *upper, *lower, LIST_ROWS))
            jobs = [load_job(row[0]) for row in rows]
            found += [job for job in jobs if rules.matches(job, query)]
            if len(rows) < LIST_ROWS:
                break
            upper = rules.newest_first(jobs[-1])
        return rules.page_of_jobs(found, query)

    async def load_shard(self, slot: int) -> list[Job]:
        rows = await self._fetch("SLOT_KIND", (slot, cql.RUNNING))
        jobs = [load_job(record) for record, _ in rows]
        return [job for job in jobs if job.slot == slot and not job.status.terminal]

    async def expired_jobs(
        self, slot: int, *, now: float, after: ExpiryCursor | None = None, limit: int = 100
    ) -> list[Job]:
        if limit <= 0:
            return []
        start = after or (LOWEST, "", "")
        params = (slot, cql.EXPIRING, *start, cql.EXPIRING, now, limit)
        jobs = [load_job(row[0]) for row in await self._fetch("EXPIRED", params)]
        return rules.expired_page(jobs, slot, now, after, limit)

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
        key = (namespace, job_id, version)
        if limit <= 0:
            return []
        purged = self._fetch("GET_PURGE", key[:2])
        if max_bytes is not None and limit > 1:
            purge, starts = await asyncio.gather(
                purged, self._fetch("PROBE_CHUNKS", (*key, after_seq, limit))
            )
            if purge:
                return []
            limit = rules.page_size([offset for _, offset, _ in starts], max_bytes)
            rows = await self._fetch("READ_CHUNKS", (*key, after_seq, max(1, limit)))
        else:
            purge, rows = await asyncio.gather(
                purged, self._fetch("READ_CHUNKS", (*key, after_seq, limit))
            )
            if purge:
                return []
        return await self._chunks(key, rows)

    async def _chunks(self, key: tuple[str, str, int], rows: list[Row]) -> list[Chunk]:
        """Chunks from their rows, their further parts read and joined, unpacked."""
        more = [seq for seq, _, _, parts, _ in rows if parts > 1]
        fetched = await asyncio.gather(*(self._fetch("READ_PARTS", (*key, seq)) for seq in more))
        rest = {
            seq: b"".join(row[0] for row in found) for seq, found in zip(more, fetched, strict=True)
        }
        stored = [
            (seq, offset, encoding, data + rest.get(seq, b""))
            for seq, offset, encoding, _, data in rows
        ]
        if sum(len(s[3]) for s in stored) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(_unpacked, key, stored)
        return _unpacked(key, stored)

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
        at = min(max(0, offset), 2**63 - 1)
        rows = await self._fetch("SEQ_AT_OFFSET", (namespace, job_id, version, at))
        if not rows:
            return []
        chunks = await self.read_output(
            namespace,
            job_id,
            version=version,
            after_seq=int(rows[0][0]) - 1,
            limit=limit,
            max_bytes=max_bytes,
        )
        return chunks if chunks and chunks[0].end > offset else []

    async def list_versions(self, namespace: str, job_id: str) -> list[OutputVersion]:
        rows = await self._fetch("LIST_VERSIONS", (namespace, job_id))
        return [load_version(row[0]) for row in rows]

    async def load_purges(self, slot: int) -> list[tuple[str, str]]:
        rows = await self._fetch("LOAD_PURGES", (slot, cql.PURGING))
        return list(dict.fromkeys((namespace, job_id) for namespace, job_id in rows))

    async def get_namespace(self, name: str) -> Namespace | None:
        rows = await self._fetch("GET_NAMESPACE", (name,))
        return load_namespace(rows[0][0]) if rows else None

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        rows = await self._fetch("GET_API_KEY", (key_id,))
        return load_api_key(rows[0][0]) if rows else None

    async def load_pending_deliveries(self, slot: int) -> list[Delivery]:
        rows = await self._fetch("SLOT_KIND", (slot, cql.PENDING))
        found = (load_delivery(record, payload) for record, payload in rows)
        return rules.in_due_order(
            d for d in found if d.slot == slot and d.status is DeliveryStatus.PENDING
        )

    async def list_deliveries(self, namespace: str, job_id: str) -> list[Delivery]:
        rows = await self._fetch("LIST_DELIVERIES", (namespace, job_id))
        return rules.in_due_order(load_delivery(record, payload) for record, payload in rows)

    async def get_delivery(self, namespace: str, delivery_id: str) -> Delivery | None:
        rows = await self._fetch("GET_DELIVERY", (namespace, delivery_id))
        return load_delivery(*rows[0]) if rows else None


def _unpacked(
    key: tuple[str, str, int], stored: list[tuple[int, int, str | None, bytes]]
) -> list[Chunk]:
    namespace, job_id, version = key
    return [
        Chunk(namespace, job_id, seq, offset, unpack(data, encoding), version)
        for seq, offset, encoding, data in stored
    ]
