"""What one group commit writes to DynamoDB: a batch as item writes, grouped in
`storage.staged.VISIBILITY` order, each idempotent; sent as one transaction when they fit
one, applied group by group otherwise (`storage.dynamodb`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage import dynamodb_items as items
from storage import dynamodb_tables as tables
from storage.dynamodb_client import Dynamo, gather
from storage.dynamodb_items import Item, N, S
from storage.records import Batch

#: DynamoDB's limits on one TransactWriteItems: actions, and bytes (kept well under 4 MB:
#: our size of an item is an estimate).
MAX_TX_ACTIONS = 100
MAX_TX_BYTES = 3_500_000
#: A chunk's data per item: DynamoDB's items hold 400 KB, names and keys included.
PART_BYTES = 350_000

#: The table name of each of our tables (`Table.name` -> its name with the store's prefix).
Names = Callable[[tables.Table], str]


@dataclass(frozen=True, slots=True)
class Write:
    """One item write, as a TransactWriteItems action: `op` is "Put", "Update" or "Delete",
    `params` its TableName, Item or Key, and expressions."""

    op: str
    params: dict[str, Any]
    #: About how many bytes the item holds (for the transaction's 4 MB).
    size: int

    @property
    def key(self) -> Item:
        """The key of the item written."""
        if "Key" in self.params:
            key: Item = self.params["Key"]
            return key
        names = _KEY_NAMES[self.params["TableName"].rsplit("-", 1)[-1]]
        return {name: self.params["Item"][name] for name in names}

    @property
    def target(self) -> tuple[str, str]:
        """The item written: no two writes of one transaction may share it."""
        return self.params["TableName"], items.dump(sorted(self.key.items()))


_KEY_NAMES = {table.name: table.keys for table in tables.TABLES}
OPERATIONS = {"Put": "put_item", "Update": "update_item", "Delete": "delete_item"}


@dataclass(frozen=True, slots=True)
class Guard:
    """The epoch a commit writes at: its rows carry it, and a staged apply (no transaction)
    leaves alone a row a newer epoch of the slot wrote."""

    slot: int
    epoch: int

    def stamp(self) -> Item:
        return {"es": N(self.slot), "ep": N(self.epoch)}

    def condition(self) -> dict[str, Any]:
        return {
            "ConditionExpression": "attribute_not_exists(#ep) OR #es <> :es OR #ep <= :ep",
            "ExpressionAttributeNames": {"#ep": "ep", "#es": "es"},
            "ExpressionAttributeValues": {":ep": N(self.epoch), ":es": N(self.slot)},
        }


#: DynamoDB's largest item (400 KB, names included), less a margin for our estimate.
MAX_ITEM_BYTES = 400_000
#: The largest key values: a partition key's bytes, a sort key's, a number's digits.
MAX_HASH_BYTES, MAX_RANGE_BYTES, MAX_DIGITS = 2048, 1024, 38


def _size(item: Item) -> int:
    """An item's size as DynamoDB counts it, about (names and values; a number at most)."""
    total = 0
    for name, value in item.items():
        total += len(name) + _value_size(value)
    return total


def _value_size(value: dict[str, Any]) -> int:
    kind, inner = next(iter(value.items()))
    if kind == "S":
        return len(inner.encode())
    if kind == "B":
        return len(inner)
    if kind == "L":
        return 3 + sum(1 + _value_size(element) for element in inner)
    if kind == "SS":
        return sum(len(element.encode()) for element in inner)
    return 21  # a number: at most 21 bytes


def check(write: Write) -> None:
    """Raise `ValueError` (the data's fault: `Unstorable`) for a write DynamoDB would refuse:
    an item over 400 KB, an empty or oversized key, a number over 38 digits. Checked before
    a staged commit's record: what is recorded must apply."""
    params = write.params
    item: Item = params.get("Item") or {
        **params["Key"],
        **{name: v for name, v in params.get("ExpressionAttributeValues", {}).items()},
    }
    if _size(item) > MAX_ITEM_BYTES:
        raise ValueError(f"an item of about {_size(item)} bytes is over DynamoDB's 400 KB")
    limits = (MAX_HASH_BYTES, MAX_RANGE_BYTES)
    for value, limit in zip(write.key.values(), limits, strict=False):
        if "S" in value and not 0 < len(value["S"].encode()) <= limit:
            raise ValueError("a key DynamoDB cannot hold: empty or too long")
    for value in item.values():
        if "N" in value and len(value["N"].lstrip("-")) > MAX_DIGITS:
            raise ValueError("a number over DynamoDB's 38 digits")


def put(table: str, item: Item, guard: Guard | None, guarded: bool) -> Write:
    """Replace the item (an upsert), guarded by the epoch when `guarded` (a staged apply)."""
    params: dict[str, Any] = {"TableName": table, "Item": item}
    if guard is not None:
        params["Item"] = item | guard.stamp()
        if guarded:
            params |= guard.condition()
    return Write("Put", params, _size(item))


def insert(table: str, item: Item, key_names: tuple[str, ...]) -> Write:
    """Write the item unless it exists, attribute by attribute (`if_not_exists`): no
    condition, so a retried chunk in a transaction is a no-op, not a cancelled commit."""
    rest = [name for name in item if name not in key_names]
    return Write(
        "Update",
        {
            "TableName": table,
            "Key": {name: item[name] for name in key_names},
            "UpdateExpression": "SET "
            + ", ".join(f"#a{i} = if_not_exists(#a{i}, :a{i})" for i in range(len(rest))),
            "ExpressionAttributeNames": {f"#a{i}": name for i, name in enumerate(rest)},
            "ExpressionAttributeValues": {f":a{i}": item[name] for i, name in enumerate(rest)},
        },
        _size(item),
    )


def delete(table: str, key: Item, guard: Guard | None = None) -> Write:
    params: dict[str, Any] = {"TableName": table, "Key": key}
    if guard is not None:
        params |= guard.condition()
    return Write("Delete", params, _size(key))


def upserts(batch: Batch, name: Names, commit_id: str, *, guarded: bool) -> list[list[Write]]:
    """The batch's upserts and inserts, in `VISIBILITY` order (its deletes: `deletes`).
    `guarded`: conditions on the epoch, for writes outside a fenced transaction."""
    guard = None if batch.slot is None or batch.epoch is None else Guard(batch.slot, batch.epoch)
    chunks, versions = name(tables.CHUNKS), name(tables.VERSIONS)
    return [
        [
            insert(chunks, item, tables.CHUNKS.keys)
            for chunk in batch.chunks
            for item in items.chunk_items(chunk, PART_BYTES)
        ],
        [insert(versions, items.version_item(v), tables.VERSIONS.keys) for v in batch.versions],
        [
            put(name(tables.DELIVERIES), items.delivery_item(d), guard, guarded)
            for d in batch.deliveries
        ],
        [put(name(tables.ADMIN), items.namespace_item(ns), None, False) for ns in batch.namespaces],
        [put(name(tables.ADMIN), items.api_key_item(key), None, False) for key in batch.api_keys],
        [
            put(name(tables.AUDIT), items.audit_item(entry, f"{commit_id}/{i:06d}"), None, False)
            for i, entry in enumerate(batch.audit)
        ],
        [put(name(tables.JOBS), items.job_item(job), guard, guarded) for job in batch.jobs],
    ]


async def deletes(
    dynamo: Dynamo, batch: Batch, name: Names, commit_id: str, *, guarded: bool
) -> list[Write]:
    """The writes of the batch's deletes: each job with its versions and deliveries (read
    consistently), and its purge records (its output goes later, `purge_output`)."""
    guard = None if batch.slot is None or batch.epoch is None else Guard(batch.slot, batch.epoch)
    at = int(commit_id[:20]) / 1e9  # the commit's time: the same when applied again
    found = await gather(_stored(dynamo, key, name) for key in batch.deleted)
    writes: list[Write] = []
    for (ns, job_id), (versions, deliveries) in zip(batch.deleted, found, strict=True):
        # The batch's own versions and deliveries of the job go too: deletes come last.
        versions += [
            items.version_item(v) for v in batch.versions if (v.namespace, v.job_id) == (ns, job_id)
        ]
        deliveries += [
            items.delivery_item(d)
            for d in batch.deliveries
            if (d.namespace, d.job_id) == (ns, job_id)
        ]
        writes += [delete(name(tables.VERSIONS), _key(v, tables.VERSIONS)) for v in versions]
        # A deleted job or delivery leaves a tombstone: the epoch that deleted it, so a stale
        # owner's late apply cannot bring it back (`Guard`); DynamoDB's TTL removes it.
        writes += [
            put(name(tables.DELIVERIES), tombstone(_key(d, tables.DELIVERIES), at), guard, guarded)
            for d in deliveries
        ]
        writes.append(
            put(name(tables.JOBS), tombstone(items.job_key(ns, job_id), at), guard, guarded)
        )
        purges = purge_items(batch.slot, ns, job_id, at)
        writes += [put(name(tables.PURGES), item, None, False) for item in purges]
    return writes


def tombstone(key: Item, at: float) -> Item:
    """What a deleted item leaves: its key, no record (`doc`), no index attribute."""
    return key | {"ttl": N(int(at) + items.TTL_GRACE_S)}


def _key(item: Item, table: tables.Table) -> Item:
    return {name: item[name] for name in table.keys}


async def _stored(
    dynamo: Dynamo, job: tuple[str, str], name: Names
) -> tuple[list[Item], list[Item]]:
    """The keys of a job's versions and deliveries as stored (consistent reads)."""
    whole = S(items.key(*job))
    versions, deliveries = await gather(
        dynamo.query(
            TableName=name(table),
            KeyConditionExpression="k = :k",
            ExpressionAttributeValues={":k": whole},
            ProjectionExpression=", ".join(table.keys),
            ConsistentRead=True,
        )
        for table in (tables.VERSIONS, tables.DELIVERIES)
    )
    return versions, deliveries


def purge_items(slot: int | None, ns: str, job_id: str, at: float) -> list[Item]:
    """A deleted job's purge records: one readers look up by job (its output is hidden while
    it is there), one its slot's purger lists, oldest first."""
    whole = items.key(ns, job_id)
    by_slot = {"k": S(slot_purges(slot)), "s": S(f"{items.sortable(at)}#{whole}")}
    reader = {"k": S(f"job/{whole}"), "s": S("-"), "sk": by_slot["s"], "sl": by_slot["k"]}
    return [reader, by_slot | {"ns": S(ns), "id": S(job_id)}]


def slot_purges(slot: int | None) -> str:
    return f"slot/{'-' if slot is None else slot}"


def dedupe(writes: list[Write]) -> list[Write]:
    """One write per item (DynamoDB refuses two in one transaction, and two at once race):
    the last of an item wins, as later writes of a batch do; an insert keeps the first."""
    chosen: dict[tuple[str, str], Write] = {}
    for write in writes:
        if write.op == "Update" and write.target in chosen:
            continue
        chosen.pop(write.target, None)
        chosen[write.target] = write
    return list(chosen.values())


def fits(writes: list[Write]) -> bool:
    """Whether `writes` (deduped) and a fence's check fit one TransactWriteItems."""
    return len(writes) + 1 <= MAX_TX_ACTIONS and sum(w.size for w in writes) <= MAX_TX_BYTES
