"""The DynamoDB store's reads: by key with strongly consistent reads, and by index.

A global secondary index is eventually consistent: what it finds is read again from its
table (consistently) and checked by `storage.rules`, so a stale entry never shows a stale
record; an entry not yet in the index (a write of the last moment, typically under a
second) is missed by that one call. DESIGN-NOTES.md says what that means for each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from storage import dynamodb_items as items
from storage import dynamodb_tables as tables
from storage import rules
from storage.dynamodb_client import Dynamo, Item
from storage.dynamodb_items import N, S
from storage.errors import StoreUnavailable
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
from storage.sql import OFF_LOOP_BYTES

#: Index entries one listing query reads at most per round trip.
MAX_PAGE = 1000


def _held(table: tables.Table, item: Item) -> bool:
    """False for a tombstone: tables whose records are deleted leave their key alone."""
    return "doc" in item or table not in (tables.JOBS, tables.DELIVERIES)


class DynamoReads:
    """The Store's reads; `storage.dynamodb.DynamoStore` adds opening and writes."""

    _dynamo: Dynamo | None = None
    _prefix: str
    _where: str

    def _live(self) -> Dynamo:
        if self._dynamo is None:
            raise StoreUnavailable(f"dynamodb store {self._where} is not open")
        return self._dynamo

    def _name(self, table: tables.Table) -> str:
        return f"{self._prefix}-{table.name}"

    async def _get(self, table: tables.Table, key: Item) -> Item | None:
        """The item at `key` (a consistent read); None for none, or a tombstone (no `doc`:
        `dynamodb_writes.tombstone`) where a record stands."""
        answer = await self._live().call(
            "get_item", TableName=self._name(table), Key=key, ConsistentRead=True
        )
        item: Item | None = answer.get("Item")
        return None if item is None or not _held(table, item) else item

    async def _reread(self, table: tables.Table, found: list[Item]) -> list[Item]:
        """The records of `table` that index entries `found` point to, read consistently."""
        keys = [{name: entry[name] for name in table.keys} for entry in found]
        got = await self._live().get_many(self._name(table), keys) if keys else []
        return [item for item in got if "doc" in item]

    # -- jobs --------------------------------------------------------------------------------

    async def get_job(self, namespace: str, job_id: str) -> Job | None:
        item = await self._get(tables.JOBS, items.job_key(namespace, job_id))
        return None if item is None else items.job_of(item)

    async def get_jobs(self, namespace: str, job_ids: Sequence[str]) -> list[Job]:
        keys = [items.job_key(namespace, job_id) for job_id in dict.fromkeys(job_ids)]
        return [items.job_of(item) for item in await self._reread(tables.JOBS, keys)]

    async def load_shard(self, slot: int) -> list[Job]:
        found = await self._live().query(
            TableName=self._name(tables.JOBS),
            IndexName="running",
            KeyConditionExpression="#rs = :slot",
            ExpressionAttributeValues={":slot": N(slot)},
        )
        jobs = [items.job_of(item) for item in await self._reread(tables.JOBS, found)]
        return [job for job in jobs if job.slot == slot and not job.status.terminal]

    async def expired_jobs(
        self, slot: int, *, now: float, after: ExpiryCursor | None = None, limit: int = 100
    ) -> list[Job]:
        if limit <= 0:
            return []
        upper = items.sortable(now) + "$"  # past every key of an expiry at `now`
        values = {":slot": N(slot), ":hi": S(upper)}
        condition = "#xs = :slot AND #xk <= :hi"
        if after is not None:
            lower = items.expiry_key(*after)
            if lower > upper:
                return []
            values[":lo"] = S(lower)
            condition = "#xs = :slot AND #xk BETWEEN :lo AND :hi"
        params = {
            "TableName": self._name(tables.JOBS),
            "IndexName": "expiring",
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }
        found = await self._matching(params, limit, lambda j: rules.expired(j, slot, now, after))
        return rules.expired_page(found, slot, now, after, limit)

    async def list_jobs(self, namespace: str, query: JobQuery) -> list[Job]:
        """Newest first from the `by_created` index, its key bounded by the time range and the
        cursor, status and tag filtered in DynamoDB; each page's jobs read again and checked
        by `rules.matches`, pages read until `limit` match."""
        if query.limit <= 0:
            return []
        values: dict[str, Any] = {":ns": S(namespace)}
        lower = None if query.created_from is None else items.sortable(query.created_from)
        uppers = [items.created_key(*query.before)] if query.before is not None else []
        if query.created_to is not None:
            uppers.append(items.sortable(query.created_to))
        upper = min(uppers, default=None)
        condition = "#ns = :ns"
        if lower is not None and upper is not None:
            if lower > upper:
                return []
            condition += " AND #cr BETWEEN :lo AND :hi"  # `hi` itself fails `rules.matches`
            values |= {":lo": S(lower), ":hi": S(upper)}
        elif lower is not None:
            condition += " AND #cr >= :lo"
            values[":lo"] = S(lower)
        elif upper is not None:
            condition += " AND #cr < :hi"
            values[":hi"] = S(upper)
        filters = []
        if query.status is not None:
            filters.append("#st = :st")
            values[":st"] = S(query.status.value)
        if query.tag is not None:
            filters.append("contains(#tg, :tg)")
            values[":tg"] = S(query.tag)
        params: dict[str, Any] = {
            "TableName": self._name(tables.JOBS),
            "IndexName": "by_created",
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
        }
        if filters:
            params["FilterExpression"] = " AND ".join(filters)
        found = await self._matching(
            params, query.limit, lambda j: j.namespace == namespace and rules.matches(j, query)
        )
        return rules.page_of_jobs(found, query)

    async def _matching(self, params: dict[str, Any], limit: int, keep: Any) -> list[Job]:
        """Jobs an index query finds, in its order, read again from the table and kept by
        `keep`: pages (growing from `limit` entries) until `limit` are kept or none is left."""
        found: list[Job] = []
        page = limit
        while True:
            answer = await self._live().call("query", **params, Limit=min(page, MAX_PAGE))
            entries = answer.get("Items", [])
            jobs = [items.job_of(item) for item in await self._reread(tables.JOBS, entries)]
            found += [job for job in jobs if keep(job)]
            last = answer.get("LastEvaluatedKey")
            if last is None or len(found) >= limit:
                return found
            params["ExclusiveStartKey"] = last
            page *= 2

    # -- output ----------------------------------------------------------------------------

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
        purged, found = await asyncio.gather(
            self._purging(namespace, job_id),
            self._chunk_items(namespace, job_id, version, after_seq, limit, max_bytes),
        )
        if purged or not found:
            return []
        if sum(len(item["d"]["B"]) for item in found) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(items.chunks_of, namespace, job_id, found)
        return items.chunks_of(namespace, job_id, found)

    async def _chunk_items(
        self,
        namespace: str,
        job_id: str,
        version: int,
        after_seq: int,
        limit: int,
        max_bytes: int | None,
    ) -> list[Item]:
        """The items of the page's chunks (all their parts), in order: pages of the query
        until the first chunk past the page (`limit`, `rules.page_size`) starts."""
        params: dict[str, Any] = {
            "TableName": self._name(tables.CHUNKS),
            "KeyConditionExpression": "#k = :k AND #s BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":k": S(items.key(namespace, job_id)),
                ":lo": N(items.chunk_sort(version, after_seq + 1)),
                ":hi": N(items.chunk_sort(version + 1, 0) - 1),
            },
            "ConsistentRead": True,
            "Limit": min(limit + 1, MAX_PAGE),
        }
        found: list[Item] = []
        while True:
            answer = await self._live().call("query", **params)
            found += answer.get("Items", [])
            starts = [i for i, item in enumerate(found) if "o" in item]
            offsets = [int(found[i]["o"]["N"]) for i in starts]
            take = rules.page_size(offsets[:limit], max_bytes)
            if take < len(starts):  # the next chunk starts past the page: it is whole
                return found[: starts[take]]
            last = answer.get("LastEvaluatedKey")
            if last is None:
                return found
            params["ExclusiveStartKey"] = last

    async def _purging(self, namespace: str, job_id: str) -> bool:
        """Whether the job was deleted and its output is still being removed (hidden)."""
        key = {"k": S(f"job/{items.key(namespace, job_id)}"), "s": S("-")}
        return await self._get(tables.PURGES, key) is not None

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
        """From the chunk the `by_offset` index says holds `offset`. The index may lag (the
        newest chunks): its chunk is then an earlier one, and the read walks on from there."""
        offset = max(0, offset)
        seq = await self._seq_at(namespace, job_id, version, offset)
        while True:
            chunks = await self.read_output(
                namespace,
                job_id,
                version=version,
                after_seq=seq - 1,
                limit=limit,
                max_bytes=max_bytes,
            )
            holding = next((c for c in chunks if c.end > offset), None)
            if not chunks or holding is chunks[0]:
                return chunks
            seq = chunks[-1].seq + 1 if holding is None else holding.seq

    async def _seq_at(self, namespace: str, job_id: str, version: int, offset: int) -> int:
        answer = await self._live().call(
            "query",
            TableName=self._name(tables.CHUNKS),
            IndexName="by_offset",
            KeyConditionExpression="#kv = :kv AND #o <= :o",
            ExpressionAttributeValues={
                ":kv": S(items.key(namespace, job_id, version)),
                ":o": N(offset),
            },
            ScanIndexForward=False,
            Limit=1,
        )
        found = answer.get("Items", [])
        return items.seq_of(int(found[0]["s"]["N"])) if found else 1

    async def list_versions(self, namespace: str, job_id: str) -> list[OutputVersion]:
        found = await self._live().query(
            TableName=self._name(tables.VERSIONS),
            KeyConditionExpression="#k = :k",
            ExpressionAttributeValues={":k": S(items.key(namespace, job_id))},
            ConsistentRead=True,
        )
        return [items.version_of_item(item) for item in found]

    async def load_purges(self, slot: int) -> list[tuple[str, str]]:
        found = await self._live().query(
            TableName=self._name(tables.PURGES),
            KeyConditionExpression="#k = :k",
            ExpressionAttributeValues={":k": S(f"slot/{slot}")},
            ConsistentRead=True,
        )
        return [(item["ns"]["S"], item["id"]["S"]) for item in found]

    # -- namespaces, keys, deliveries -------------------------------------------------------

    async def get_namespace(self, name: str) -> Namespace | None:
        item = await self._get(tables.ADMIN, items.namespace_key(name))
        return None if item is None else items.namespace_of(item)

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        item = await self._get(tables.ADMIN, items.api_key_key(key_id))
        return None if item is None else items.api_key_of(item)

    async def load_pending_deliveries(self, slot: int) -> list[Delivery]:
        found = await self._live().query(
            TableName=self._name(tables.DELIVERIES),
            IndexName="pending",
            KeyConditionExpression="#ps = :slot",
            ExpressionAttributeValues={":slot": N(slot)},
        )
        deliveries = map(items.delivery_of, await self._reread(tables.DELIVERIES, found))
        return rules.in_due_order(
            d for d in deliveries if d.slot == slot and d.status is DeliveryStatus.PENDING
        )

    async def list_deliveries(self, namespace: str, job_id: str) -> list[Delivery]:
        found = await self._live().query(
            TableName=self._name(tables.DELIVERIES),
            KeyConditionExpression="#k = :k",
            ExpressionAttributeValues={":k": S(items.key(namespace, job_id))},
            ConsistentRead=True,
        )
        return rules.in_due_order(items.delivery_of(item) for item in found if "doc" in item)

    async def get_delivery(self, namespace: str, delivery_id: str) -> Delivery | None:
        found = await self._live().query(
            TableName=self._name(tables.DELIVERIES),
            IndexName="by_id",
            KeyConditionExpression="#nid = :nid",
            ExpressionAttributeValues={":nid": S(items.key(namespace, delivery_id))},
        )
        for item in await self._reread(tables.DELIVERIES, found):
            delivery = items.delivery_of(item)
            if (delivery.namespace, delivery.delivery_id) == (namespace, delivery_id):
                return delivery
        return None
