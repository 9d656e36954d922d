"""The DynamoDB store's tables: their keys and indexes, made on `open` when missing, and the
check of what DynamoDB lets one check about durability (every table ACTIVE; point-in-time
recovery on, or a loud warning)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from storage.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: How long `open` waits for a table it made (or found being made) to become ACTIVE.
ACTIVE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Index:
    """A global secondary index: its keys (attribute, type "S" or "N") and what it projects
    besides the table's keys."""

    name: str
    hash: tuple[str, str]
    range: tuple[str, str] | None = None
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str
    hash: tuple[str, str]
    range: tuple[str, str] | None = None
    indexes: tuple[Index, ...] = ()
    #: The attribute DynamoDB's time to live reads (epoch seconds), if the table has one.
    ttl: str | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.hash[0],) if self.range is None else (self.hash[0], self.range[0])


JOBS = Table(
    "jobs",
    ("ns", "S"),
    ("id", "S"),
    (
        Index("by_created", ("ns", "S"), ("cr", "S"), include=("st", "tg")),
        Index("running", ("rs", "N")),
        Index("expiring", ("xs", "N"), ("xk", "S")),
    ),
    ttl="ttl",
)
CHUNKS = Table("chunks", ("k", "S"), ("s", "N"), (Index("by_offset", ("kv", "S"), ("o", "N")),))
VERSIONS = Table("versions", ("k", "S"), ("v", "N"))
DELIVERIES = Table(
    "deliveries",
    ("k", "S"),
    ("i", "S"),
    (Index("by_id", ("nid", "S")), Index("pending", ("ps", "N"), ("due", "S"))),
)
#: A deleted job's output still being removed: "job/<key>" for readers, "slot/<n>" by slot.
PURGES = Table("purges", ("k", "S"), ("s", "S"))
#: Namespaces ("ns/<name>") and API keys ("key/<id>").
ADMIN = Table("admin", ("k", "S"))
AUDIT = Table("audit", ("id", "S"))
#: Shard leases: epoch, owner, and the ids of the commits recorded on them (`StagedStore`).
LEASES = Table("leases", ("slot", "S"))
#: Parts of staged commits (`StagedStore`); a commit's first part is found by its slot.
STAGED = Table("staged", ("c", "S"), ("p", "N"), (Index("by_slot", ("sl", "S"), ("c", "S")),))

TABLES = (JOBS, CHUNKS, VERSIONS, DELIVERIES, PURGES, ADMIN, AUDIT, LEASES, STAGED)


def _schema(hash_key: tuple[str, str], range_key: tuple[str, str] | None) -> list[dict[str, str]]:
    keys = [{"AttributeName": hash_key[0], "KeyType": "HASH"}]
    if range_key is not None:
        keys.append({"AttributeName": range_key[0], "KeyType": "RANGE"})
    return keys


def create_request(table: Table, name: str) -> dict[str, Any]:
    """CreateTable's parameters for `table` named `name`: on-demand billing."""
    attributes = {table.hash, *([table.range] if table.range else [])}
    indexes = []
    for index in table.indexes:
        attributes |= {index.hash, *([index.range] if index.range else [])}
        projection: dict[str, Any] = {"ProjectionType": "KEYS_ONLY"}
        if index.include:
            projection = {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(index.include)}
        indexes.append(
            {
                "IndexName": index.name,
                "KeySchema": _schema(index.hash, index.range),
                "Projection": projection,
            }
        )
    request: dict[str, Any] = {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": attr, "AttributeType": kind} for attr, kind in sorted(attributes)
        ],
        "KeySchema": _schema(table.hash, table.range),
    }
    if indexes:
        request["GlobalSecondaryIndexes"] = indexes
    return request


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    code: str = response.get("Error", {}).get("Code", "")
    return code


async def ensure(client: Any, table: Table, name: str) -> None:
    """Make the table `name` unless it exists, wait until it and its indexes are ACTIVE, and
    turn its time to live on. Concurrent openers race safely: one makes it, all wait."""
    try:
        description = (await client.describe_table(TableName=name))["Table"]
    except Exception as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
        try:
            description = (await client.create_table(**create_request(table, name)))[
                "TableDescription"
            ]
        except Exception as raced:
            if _code(raced) != "ResourceInUseException":
                raise
            description = (await client.describe_table(TableName=name))["Table"]
    await _wait_active(client, name, description)
    if table.ttl is not None:
        await _ensure_ttl(client, name, table.ttl)


def _active(description: dict[str, Any]) -> bool:
    indexes = description.get("GlobalSecondaryIndexes", [])
    return description.get("TableStatus") == "ACTIVE" and all(
        index.get("IndexStatus", "ACTIVE") == "ACTIVE" for index in indexes
    )


async def _wait_active(client: Any, name: str, description: dict[str, Any]) -> None:
    deadline = time.monotonic() + ACTIVE_TIMEOUT_S
    pause_s = 0.02
    while not _active(description):
        if time.monotonic() > deadline:
            raise StoreUnavailable(f"dynamodb table {name} is not ACTIVE after {ACTIVE_TIMEOUT_S}s")
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, 2.0)
        description = (await client.describe_table(TableName=name))["Table"]


async def _ensure_ttl(client: Any, name: str, attribute: str) -> None:
    ttl = (await client.describe_time_to_live(TableName=name))["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
        return
    try:
        await client.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute},
        )
    except Exception as exc:
        if _code(exc) != "ValidationException":  # another opener turned it on first
            raise


async def warn_without_recovery(client: Any, names: list[str]) -> None:
    """Warn loudly for tables without point-in-time recovery. A write DynamoDB acknowledged
    is durable whatever this says (it is on storage in several availability zones); this
    is the one durability setting a table has: restoring it after an operator's mistake
    or a bad deploy. Turning it on is the operator's choice (it costs), so we warn."""
    answers = await asyncio.gather(
        *(client.describe_continuous_backups(TableName=name) for name in names)
    )
    off = [
        name
        for name, answer in zip(names, answers, strict=True)
        if answer["ContinuousBackupsDescription"]
        .get("PointInTimeRecoveryDescription", {})
        .get("PointInTimeRecoveryStatus")
        != "ENABLED"
    ]
    if off:
        log.warning(
            "DURABILITY: dynamodb tables %s have point-in-time recovery off: acknowledged"
            " writes are durable, but nothing can restore these tables to an earlier time"
            " (aws dynamodb update-continuous-backups ... PointInTimeRecoveryEnabled=true)",
            ", ".join(off),
        )
