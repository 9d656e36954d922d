"""The MongoDB store's reads: each one a key look-up or a range of an index
(storage/mongodb_docs.py `INDEXES`), filtered and sorted by the server, with the meaning
`storage.rules` gives it."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from storage import rules
from storage.mongodb_docs import (
    API_KEYS,
    CHUNKS,
    DELIVERIES,
    JOBS,
    NAMESPACES,
    PURGES,
    VERSIONS,
    Doc,
    api_key_of,
    chunks_of,
    delivery_of,
    job_of,
    key,
    namespace_of,
    version_of,
)
from storage.records import (
    ApiKey,
    Chunk,
    Delivery,
    DeliveryStatus,
    ExpiryCursor,
    Job,
    JobQuery,
    JobStatus,
    Namespace,
    OutputVersion,
)

#: The most data one reply of a read should carry. MongoDB stops a batch at 16 MiB by
#: itself; FerretDB 1.24 does not, and a reply over its 48 MB message limit fails.
MESSAGE_BYTES = 32 * 1024 * 1024
#: Ids per `get_jobs` query.
IDS_PER_QUERY = 500
#: A read of more stored chunk bytes than this unpacks them on a worker thread.
OFF_LOOP_BYTES = 256 * 1024
_NEWEST_FIRST = [("created_at", -1), ("job_id", -1)]
_DUE = [("created_at", 1), ("delivery_id", 1)]


class MongoReads(ABC):
    """The Store's reads; the store supplies its collections and error translation."""

    _where: str

    @abstractmethod
    def _db(self) -> AsyncDatabase[Doc]: ...

    @abstractmethod
    def _col(self, name: str) -> AsyncCollection[Doc]: ...

    @abstractmethod
    def _translated(self, action: str, *, write: bool = False) -> AbstractContextManager[None]: ...

    async def _find(
        self, name: str, query: Doc, *, sort: list[tuple[str, int]] | None = None, limit: int = 0
    ) -> list[Doc]:
        with self._translated("query"):
            cursor = self._col(name).find(query, sort=sort, limit=limit)
            return await cursor.to_list()

    async def _find_one(self, name: str, query: Doc) -> Doc | None:
        with self._translated("query"):
            return await self._col(name).find_one(query)

    async def ping(self) -> None:
        with self._translated("ping"):
            await self._db().command("ping")

    async def load_shard(self, slot: int) -> list[Job]:
        docs = await self._find(JOBS, {"slot": slot, "status": JobStatus.RUNNING.value})
        return [job_of(doc) for doc in docs]

    async def expired_jobs(
        self, slot: int, *, now: float, after: ExpiryCursor | None = None, limit: int = 100
    ) -> list[Job]:
        if limit <= 0:
            return []
        query: Doc = {
            "slot": slot,
            "expires_at": {"$ne": None, "$lte": now},
            "status": {"$ne": JobStatus.RUNNING.value},
        }
        if after is not None:
            query["$or"] = _after(("expires_at", "namespace", "job_id"), after, 1)
        sort = [("expires_at", 1), ("namespace", 1), ("job_id", 1)]
        return [job_of(doc) for doc in await self._find(JOBS, query, sort=sort, limit=limit)]

    async def get_job(self, namespace: str, job_id: str) -> Job | None:
        doc = await self._find_one(JOBS, {"_id": key(namespace, job_id)})
        return None if doc is None else job_of(doc)

    async def get_jobs(self, namespace: str, job_ids: Sequence[str]) -> list[Job]:
        ids = [key(namespace, job_id) for job_id in dict.fromkeys(job_ids)]
        found: list[Job] = []
        for start in range(0, len(ids), IDS_PER_QUERY):
            docs = await self._find(JOBS, {"_id": {"$in": ids[start : start + IDS_PER_QUERY]}})
            found.extend(job_of(doc) for doc in docs)
        return found

    async def list_jobs(self, namespace: str, query: JobQuery) -> list[Job]:
        if query.limit <= 0:
            return []  # a limit of 0 is "no limit" to MongoDB
        where: Doc = {"namespace": namespace}
        if query.status is not None:
            where["status"] = query.status.value
        if query.tag is not None:
            where["tags"] = query.tag  # an array field matches any element equal to it
        created: Doc = {}
        if query.created_from is not None:
            created["$gte"] = query.created_from
        if query.created_to is not None:
            created["$lt"] = query.created_to
        if created:
            where["created_at"] = created
        if query.before is not None:
            where["$or"] = _after(("created_at", "job_id"), query.before, -1)
        docs = await self._find(JOBS, where, sort=_NEWEST_FIRST, limit=query.limit)
        return [job_of(doc) for doc in docs]

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
        if limit <= 0:
            return []
        of_job = {"namespace": namespace, "job_id": job_id, "version": version}
        purged, starts = await asyncio.gather(
            self._find_one(PURGES, {"_id": key(namespace, job_id)}),
            self._probe({**of_job, "seq": {"$gt": after_seq}, "part": 0}, limit),
        )
        if purged is not None or not starts:
            return []  # a deleted job's output is gone to readers at once
        count = rules.page_size([offset for _, offset, _ in starts], max_bytes)
        last = starts[count - 1][0]
        largest = max(size for _, _, size in starts[:count])  # a part holds no more
        query = {**of_job, "seq": {"$gt": after_seq, "$lte": last}}
        with self._translated("query"):
            cursor = self._col(CHUNKS).find(query, sort=[("seq", 1), ("part", 1)])
            docs = await cursor.batch_size(max(1, MESSAGE_BYTES // max(1, largest))).to_list()
        if sum(len(doc["data"]) for doc in docs) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(chunks_of, docs)  # decompressing takes a while
        return chunks_of(docs)

    async def _probe(self, query: Doc, limit: int) -> list[tuple[int, int, int]]:
        """(seq, offset, stored bytes of its first part) of the first `limit` chunks `query`
        finds, without their data."""
        with self._translated("query"):
            cursor = self._col(CHUNKS).find(
                query, {"seq": 1, "offset": 1, "bytes": 1}, sort=[("seq", 1)], limit=limit
            )
            return [(doc["seq"], doc["offset"], doc["bytes"]) for doc in await cursor.to_list()]

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
        # The chunk holding a byte: the last one starting at or before it (chunks are never
        # empty, so offsets are unique within a version).
        query = {"namespace": namespace, "job_id": job_id, "version": version, "part": 0}
        starts = await self._find(
            CHUNKS, {**query, "offset": {"$lte": max(0, offset)}}, sort=[("offset", -1)], limit=1
        )
        if not starts:
            return []
        chunks = await self.read_output(
            namespace,
            job_id,
            version=version,
            after_seq=int(starts[0]["seq"]) - 1,
            limit=limit,
            max_bytes=max_bytes,
        )
        return chunks if chunks and chunks[0].end > offset else []

    async def list_versions(self, namespace: str, job_id: str) -> list[OutputVersion]:
        query = {"namespace": namespace, "job_id": job_id}
        return [version_of(doc) for doc in await self._find(VERSIONS, query, sort=[("version", 1)])]

    async def load_purges(self, slot: int) -> list[tuple[str, str]]:
        docs = await self._find(PURGES, {"slot": slot}, sort=[("deleted_at", 1), ("_id", 1)])
        return [(doc["namespace"], doc["job_id"]) for doc in docs]

    async def get_namespace(self, name: str) -> Namespace | None:
        doc = await self._find_one(NAMESPACES, {"_id": name})
        return None if doc is None else namespace_of(doc)

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        doc = await self._find_one(API_KEYS, {"_id": key_id})
        return None if doc is None else api_key_of(doc)

    async def load_pending_deliveries(self, slot: int) -> list[Delivery]:
        query = {"slot": slot, "status": DeliveryStatus.PENDING.value}
        return [delivery_of(doc) for doc in await self._find(DELIVERIES, query, sort=_DUE)]

    async def list_deliveries(self, namespace: str, job_id: str) -> list[Delivery]:
        query = {"namespace": namespace, "job_id": job_id}
        return [delivery_of(doc) for doc in await self._find(DELIVERIES, query, sort=_DUE)]

    async def get_delivery(self, namespace: str, delivery_id: str) -> Delivery | None:
        doc = await self._find_one(DELIVERIES, {"_id": key(namespace, delivery_id)})
        return None if doc is None else delivery_of(doc)


def _after(names: Sequence[str], position: Sequence[Any], direction: int) -> list[Doc]:
    """The `$or` of a tuple comparison: (names) > position (`direction` 1) or < (-1), as
    `rules` compares cursors, spelled so a compound index serves it."""
    op = "$gt" if direction > 0 else "$lt"
    return list(_tuple_after(list(names), list(position), op))


def _tuple_after(names: list[str], position: list[Any], op: str) -> Iterator[Doc]:
    for n in range(len(names)):
        equal = dict(zip(names[:n], position[:n], strict=True))
        yield {**equal, names[n]: {op: position[n]}}
