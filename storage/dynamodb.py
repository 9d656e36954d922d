"""The DynamoDB Store: tables keyed by namespace, one fenced transaction per group commit
where it fits, the staged commit protocol (`storage.staged`) where it does not.

URL: ``dynamodb://HOST:PORT/<table prefix>?region=<region>``: the endpoint
``http://HOST:PORT`` (a local server: moto, DynamoDB Local); ``dynamodb:///<table prefix>``
is AWS's own endpoint for the region. The prefix names the store's tables
(``<prefix>-jobs``, ``<prefix>-chunks``, ...; letters, digits, ``_ . -``; "aos" when
empty). The region defaults to the environment's (``AWS_REGION``, ...), else us-east-1.
Credentials are never in the URL: they come from the environment as boto3 finds them
(variables, shared files, an instance role); a local server accepts any.

`open` makes the tables that are missing (on-demand billing) and waits until they are
ACTIVE; an acknowledged DynamoDB write is durable (stored in several availability zones
before the answer), so the one durability setting there is to check is point-in-time
recovery, which `open` warns loudly about when it is off (DESIGN-NOTES.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from contextlib import AsyncExitStack
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

import aioboto3
from botocore.config import Config
from botocore.exceptions import NoCredentialsError

from storage import dynamodb_tables as tables
from storage import rules
from storage.dynamodb_client import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    ConditionFailed,
    Contended,
    Dynamo,
    Item,
    gather,
)
from storage.dynamodb_items import N, S, chunk_sort, key, seq_of, version_of
from storage.dynamodb_reads import DynamoReads
from storage.dynamodb_writes import (
    OPERATIONS,
    PART_BYTES,
    Write,
    check,
    dedupe,
    delete,
    deletes,
    fits,
    upserts,
)
from storage.errors import Fenced, StoreUnavailable, Unstorable
from storage.records import Batch
from storage.sql import MAX_CHUNK_BYTES, OFF_LOOP_BYTES, unavailable
from storage.staged import StagedStore, new_commit_id

log = logging.getLogger(__name__)

_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,200}")
DEFAULT_REGION = "us-east-1"
#: Transactions that met another on an item (a lease being taken) are tried this often.
TX_TRIES = 4
#: Chunk items one purge transaction deletes (with its fence's check: DynamoDB's 100).
PURGE_TX_ITEMS = 99


def parse_url(url: str) -> tuple[str | None, str, str | None]:
    """(endpoint or None for AWS's, table prefix, region or None) of a dynamodb:// URL.
    Raises `ValueError` for another scheme, credentials in it, or a bad prefix."""
    parts = urlsplit(url)
    if parts.scheme != "dynamodb":
        raise ValueError(f"not a dynamodb:// URL: {parts.scheme}://")
    if "@" in parts.netloc:
        raise ValueError("a dynamodb:// URL holds no credentials: they come from the environment")
    prefix = parts.path.strip("/") or "aos"
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"dynamodb table prefix {prefix!r}: letters, digits, '_', '.', '-'")
    region = parse_qs(parts.query).get("region", [None])[0]
    return (f"http://{parts.netloc}" if parts.netloc else None), prefix, region


@functools.cache
def _session() -> Any:
    """One session per process: making a client reads DynamoDB's service model, which a
    session keeps once read (a store opens in a fraction of the time)."""
    return aioboto3.Session()


def _lease(slot: int | None) -> Item:
    """The lease item's key; admin commits (no slot) record on a lease of their own."""
    return {"slot": S("admin" if slot is None else str(slot))}


class DynamoStore(DynamoReads, StagedStore):
    """A Store in DynamoDB, shared by every shard and HTTP replica."""

    max_chunk_bytes = MAX_CHUNK_BYTES
    stage_part_bytes = PART_BYTES

    def __init__(self, url: str) -> None:
        super().__init__()
        self._endpoint, self._prefix, self._region = parse_url(url)
        self._where = f"{urlsplit(url).netloc or 'aws'}/{self._prefix}"
        self._exits: AsyncExitStack | None = None

    async def open(self) -> None:
        if self._dynamo is not None:
            return
        exits = AsyncExitStack()
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"total_max_attempts": 2, "mode": "standard"},
            max_pool_connections=32,
        )
        session = _session()
        client = await exits.enter_async_context(
            session.client(
                "dynamodb",
                endpoint_url=self._endpoint,
                region_name=self._region or session.region_name or DEFAULT_REGION,
                config=config,
            )
        )
        self._dynamo, self._exits = Dynamo(client, self._where), exits
        try:
            with self._dynamo.translated("open"):
                await self._make_tables(client)
            await self.recover(None)  # admin and unfenced commits a crash left recorded
        except BaseException:
            await self.close()
            raise

    async def _make_tables(self, client: Any) -> None:
        names = [self._name(table) for table in tables.TABLES]
        try:
            await gather(
                tables.ensure(client, t, n) for t, n in zip(tables.TABLES, names, strict=True)
            )
        except NoCredentialsError as exc:
            raise StoreUnavailable(
                f"dynamodb {self._where}: no AWS credentials in the environment (a local"
                " server accepts any: AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local)"
            ) from exc
        await tables.warn_without_recovery(client, names)

    async def close(self) -> None:
        exits, self._exits, self._dynamo = self._exits, None, None
        if exits is not None:
            await exits.aclose()

    async def ping(self) -> None:
        await self._get(tables.LEASES, _lease(None))

    # -- commits ---------------------------------------------------------------------------

    async def _commit_at_once(self, batch: Batch) -> bool:
        """One TransactWriteItems: the lease's epoch checked, then every write, when the batch
        fits one (100 actions, 4 MB, one write per item)."""
        if batch.slot is not None and batch.epoch is None:
            await self._fenced(batch.slot, batch.epoch)
        writes = dedupe(await self._writes(batch, new_commit_id(), guarded=False))
        with self._live().translated("commit"):
            for write in writes:  # before a staged commit's record: what is recorded applies
                check(write)
        if not fits(writes):
            return False
        await self._transact(batch.slot, batch.epoch, writes)
        return True

    async def _writes(self, batch: Batch, commit_id: str, *, guarded: bool) -> list[Write]:
        return [w for group in await self._groups(batch, commit_id, guarded) for w in group]

    async def _groups(self, batch: Batch, commit_id: str, guarded: bool) -> list[list[Write]]:
        """The batch's writes in `VISIBILITY` order; packing big chunks off the event loop."""
        dynamo = self._live()
        with dynamo.translated("commit"):
            if sum(len(chunk.data) for chunk in batch.chunks) > OFF_LOOP_BYTES:
                groups = await asyncio.to_thread(
                    upserts, batch, self._name, commit_id, guarded=guarded
                )
            else:
                groups = upserts(batch, self._name, commit_id, guarded=guarded)
            groups.append(await deletes(dynamo, batch, self._name, commit_id, guarded=guarded))
        return groups

    async def _transact(self, slot: int | None, epoch: int | None, writes: list[Write]) -> None:
        """`writes` in one transaction, with the lease's epoch checked when `slot` is given."""
        actions: list[dict[str, Any]] = [{write.op: write.params} for write in writes]
        if slot is not None:
            check = {
                "TableName": self._name(tables.LEASES),
                "Key": _lease(slot),
                "ConditionExpression": "#ep = :ep",
                "ExpressionAttributeNames": {"#ep": "ep"},
                "ExpressionAttributeValues": {":ep": N(epoch or 0)},
            }
            actions.insert(0, {"ConditionCheck": check})
        for attempt in range(TX_TRIES):
            try:
                await self._live().call("transact_write_items", TransactItems=actions)
                return
            except ConditionFailed:
                await self._fenced(slot, epoch)
            except Contended:
                await asyncio.sleep(0.01 * 2**attempt)
        raise unavailable(f"dynamodb {self._where} (contended)")

    async def _fenced(self, slot: int | None, epoch: int | None) -> NoReturn:
        held = None if slot is None else await self._lease_epoch(slot)
        rules.check_fence(slot or 0, epoch, held)
        raise Fenced(f"shard {slot} is fenced: its lease changed during the commit")

    # -- the staged protocol's hooks --------------------------------------------------------

    async def _take_lease(self, slot: int, owner: str) -> int:
        answer = await self._live().call(
            "update_item",
            TableName=self._name(tables.LEASES),
            Key=_lease(slot),
            UpdateExpression="ADD #ep :one SET #owner = :owner, #at = :at",
            ExpressionAttributeValues={
                ":one": N(1),
                ":owner": S(owner),
                ":at": S(repr(time.time())),
            },
            ReturnValues="UPDATED_NEW",
        )
        return int(answer["Attributes"]["ep"]["N"])

    async def _lease_epoch(self, slot: int) -> int | None:
        item = await self._get(tables.LEASES, _lease(slot))
        return None if item is None or "ep" not in item else int(item["ep"]["N"])

    async def _stage(self, commit_id: str, slot: int | None, parts: list[bytes]) -> None:
        # Every part names its slot (`by_slot`): parts of a commit cut short are found too.
        where = _lease(slot)["slot"]
        requests = [
            {"PutRequest": {"Item": {"c": S(commit_id), "p": N(i), "d": {"B": part}, "sl": where}}}
            for i, part in enumerate(parts)
        ]
        await self._live().write_many(self._name(tables.STAGED), requests)

    async def _record(self, slot: int | None, epoch: int | None, commit_id: str) -> None:
        params: dict[str, Any] = {
            "TableName": self._name(tables.LEASES),
            "Key": _lease(slot),
            "UpdateExpression": "ADD #cs :id",
            "ExpressionAttributeValues": {":id": {"SS": [commit_id]}},
        }
        if slot is not None:
            if epoch is None:
                await self._fenced(slot, epoch)
            params["ConditionExpression"] = "#ep = :ep"
            params["ExpressionAttributeValues"][":ep"] = N(epoch)
        try:
            await self._live().call("update_item", **params)
        except ConditionFailed:
            await self._fenced(slot, epoch)

    async def _recorded(self, slot: int | None) -> list[str]:
        item = await self._get(tables.LEASES, _lease(slot))
        return [] if item is None else list(item.get("cs", {}).get("SS", []))

    async def _staged(self, commit_id: str) -> list[bytes]:
        return [bytes(item["d"]["B"]) for item in await self._parts(commit_id, "#c, #p, #d")]

    async def _parts(self, commit_id: str, projection: str) -> list[Item]:
        return await self._live().query(
            TableName=self._name(tables.STAGED),
            KeyConditionExpression="#c = :c",
            ExpressionAttributeValues={":c": S(commit_id)},
            ProjectionExpression=projection,
            ConsistentRead=True,
        )

    async def _apply(self, batch: Batch, commit_id: str) -> None:
        for group in await self._groups(batch, commit_id, guarded=True):
            await gather(self._apply_one(write) for write in dedupe(group))

    async def _apply_one(self, write: Write) -> None:
        try:
            await self._live().call(OPERATIONS[write.op], **write.params)
        except ConditionFailed:
            pass  # a newer epoch wrote this item: it stays
        except Unstorable:
            # `check` let through what DynamoDB refused. The commit is recorded: refusing it
            # would refuse every later commit of the slot (each finishes it first), so this
            # one item is lost, loudly.
            log.error(
                "dynamodb %s refused an item of a recorded commit: %s", self._where, write.key
            )

    async def _forget(self, slot: int | None, commit_id: str) -> None:
        await self._live().call(
            "update_item",
            TableName=self._name(tables.LEASES),
            Key=_lease(slot),
            UpdateExpression="DELETE #cs :id",
            ExpressionAttributeValues={":id": {"SS": [commit_id]}},
        )
        await self._drop(slot, commit_id)

    async def _staged_ids(self, slot: int | None) -> list[str]:
        found = await self._live().query(
            TableName=self._name(tables.STAGED),
            IndexName="by_slot",
            KeyConditionExpression="#sl = :sl",
            ExpressionAttributeValues={":sl": _lease(slot)["slot"]},
        )
        return sorted({item["c"]["S"] for item in found})

    async def _drop(self, slot: int | None, commit_id: str) -> None:
        found = await self._parts(commit_id, "#c, #p")
        requests = [{"DeleteRequest": {"Key": item}} for item in found]
        await self._live().write_many(self._name(tables.STAGED), requests)

    # -- purges ----------------------------------------------------------------------------

    async def purge_output(
        self, namespace: str, job_id: str, *, fence: tuple[int, int], max_bytes: int
    ) -> bool:
        """One step: the first chunks left (`rules.purge_step`), deleted in fenced
        transactions of `PURGE_TX_ITEMS` items; the purge records once none is left."""
        slot, epoch = fence
        whole = S(key(namespace, job_id))
        left = await self._live().query(
            TableName=self._name(tables.CHUNKS),
            KeyConditionExpression="#k = :k",
            ExpressionAttributeValues={":k": whole},
            ProjectionExpression="#k, #s, #o",
            ConsistentRead=True,
            Limit=rules.PURGE_STEP_CHUNKS,
            stop=rules.PURGE_STEP_CHUNKS,
        )
        chunks = self._name(tables.CHUNKS)
        if not left:
            await self._transact(slot, epoch, await self._purge_records(namespace, job_id))
            return True
        positions = [
            (version_of(sort), seq_of(sort), int(item["o"]["N"]))
            for item in left
            if "o" in item and (sort := int(item["s"]["N"])) >= 0
        ]
        doomed = left  # parts without their first (a cut-short apply) go as they are
        if positions:
            version, last = rules.purge_step(positions, max_bytes)
            doomed = await self._live().query(
                TableName=chunks,
                KeyConditionExpression="#k = :k AND #s BETWEEN :lo AND :hi",
                ExpressionAttributeValues={
                    ":k": whole,
                    ":lo": N(chunk_sort(version, 0)),
                    ":hi": N(chunk_sort(version, last + 1) - 1),
                },
                ProjectionExpression="#k, #s",
                ConsistentRead=True,
            )
        keys = [{"k": item["k"], "s": item["s"]} for item in doomed]
        for i in range(0, len(keys), PURGE_TX_ITEMS):  # one at a time: each checks the lease
            await self._transact(
                slot, epoch, [delete(chunks, k) for k in keys[i : i + PURGE_TX_ITEMS]]
            )
        return False

    async def _purge_records(self, namespace: str, job_id: str) -> list[Write]:
        reader = {"k": S(f"job/{key(namespace, job_id)}"), "s": S("-")}
        found = await self._get(tables.PURGES, reader)
        if found is None:
            return []
        purges = self._name(tables.PURGES)
        return [delete(purges, reader), delete(purges, {"k": found["sl"], "s": found["sk"]})]
