"""The MongoDB Store: pymongo's async client, `w: majority, j: true`, group commits staged,
recorded on the shard's lease and applied (`storage.staged`).

MongoDB has multi-document transactions only on a replica set, and FerretDB (the test
server) has none, so every commit takes the staged path: it is correct on a replica set
too, and one path is the one the tests prove (DESIGN-NOTES: "The MongoDB store").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import bson
from bson import Binary
from pymongo import AsyncMongoClient, ReplaceOne, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.uri_parser import parse_uri

from storage import rules
from storage.errors import Fenced, StoreUnavailable, Unstorable
from storage.mongodb_docs import (
    API_KEYS,
    AUDIT,
    CHUNKS,
    DELIVERIES,
    INDEXES,
    JOBS,
    LEASES,
    NAMESPACES,
    PURGES,
    STAGED,
    VERSIONS,
    Doc,
    Fence,
    api_key_doc,
    audit_doc,
    check_batch,
    chunk_docs,
    delivery_doc,
    fence_guard,
    job_doc,
    key,
    namespace_doc,
    purge_doc,
    version_doc,
)
from storage.mongodb_reads import MongoReads
from storage.records import Batch
from storage.staged import StagedStore

log = logging.getLogger(__name__)

#: Bounds on every call, so a dead server is `StoreUnavailable` within about 10 s (a read
#: is retried once, after a new server selection), not a hang; a slow but live server
#: (FerretDB on a busy machine: seconds for a bulk write) still answers within 8 s. A URL
#: may set its own.
#: Replacements per `update` command. FerretDB 1.24 (the test server) answers 50 in 0.1 s
#: and stalls past 100 s on 100; every slice is its own step, so a big commit advances.
UPDATES_PER_CALL = 32
#: Ids per `$in` look-up.
IDS_PER_CALL = 500
TIMEOUTS_MS = {"serverSelectionTimeoutMS": 2500, "connectTimeoutMS": 2500, "socketTimeoutMS": 8000}
#: Staged commits are cut to parts of this size: a BSON document holds 16 MiB.
STAGE_PART_BYTES = 8 * 1024 * 1024
#: A commit with more chunk bytes than this packs them on a worker thread.
OFF_LOOP_BYTES = 256 * 1024
_DUPLICATE_KEY = 11000
_ADMIN = "admin"  # the lease admin commits are recorded on (they hold no slot)
_TRANSLATED_WRITE: tuple[type[Exception], ...] = (
    bson.errors.InvalidDocument,  # DocumentTooLarge too
    ValueError,  # a lone surrogate (UnicodeEncodeError)
    OverflowError,  # an int over 64 bits
    TypeError,
)


class MongoStore(MongoReads, StagedStore):
    """A Store in one MongoDB database (the URL's path; `aos` when it names none)."""

    max_chunk_bytes = 16 * 1024 * 1024
    stage_part_bytes = STAGE_PART_BYTES

    def __init__(self, url: str) -> None:
        StagedStore.__init__(self)
        self._url = url
        self._where = describe(url)
        self._client: AsyncMongoClient[Doc] | None = None
        self._db_handle: AsyncDatabase[Doc] | None = None

    async def open(self) -> None:
        if self._client is not None:
            return
        parsed = await asyncio.to_thread(_parse, self._url, self._where)  # SRV: a DNS look-up
        options = {**durable_options(parsed["options"], self._where), **_timeouts(parsed)}
        client: AsyncMongoClient[Doc] = AsyncMongoClient(self._url, **options)
        try:
            with self._translated("open"):
                await self._check_server(client)
                db = client.get_database(parsed["database"] or "aos")
                for name, indexes in INDEXES.items():
                    for index in indexes:  # one by one: FerretDB 1.24 panics re-making several
                        await db[name].create_indexes([index])
            self._client, self._db_handle = client, db
            await self.recover(None)  # admin commits a crash left recorded
        except BaseException:
            self._client = self._db_handle = None
            await client.close()
            raise

    async def close(self) -> None:
        client, self._client, self._db_handle = self._client, None, None
        if client is not None:
            await client.close()

    async def commit(self, batch: Batch) -> None:
        # Refused before anything is staged: a recorded commit that cannot be applied
        # would stop its shard at every later commit.
        check_batch(batch)
        await super().commit(batch)

    def _db(self) -> AsyncDatabase[Doc]:
        if self._db_handle is None:
            raise StoreUnavailable(f"mongodb store {self._where} is not open")
        return self._db_handle

    def _col(self, name: str) -> AsyncCollection[Doc]:
        return self._db()[name]

    @contextmanager
    def _translated(self, action: str, *, write: bool = False) -> Iterator[None]:
        """The one place driver errors are translated: what BSON cannot encode (a write's
        data) is `Unstorable`; any other pymongo error is `StoreUnavailable`. Neither
        quotes the driver's or the server's text: it may echo the data."""
        try:
            yield
        except (StoreUnavailable, Unstorable):
            raise
        except _TRANSLATED_WRITE as exc:
            if not write:
                raise
            raise Unstorable() from exc
        except PyMongoError as exc:
            log.warning("mongodb %s %s failed: %r", self._where, action, exc)
            raise StoreUnavailable(
                f"the store (mongodb {self._where}) is unavailable; retry shortly"
            ) from exc

    async def _check_server(self, client: AsyncMongoClient[Doc]) -> None:
        """Log what the server says of itself: the write concern is only as good as it."""
        hello = await client.admin.command("hello")
        build = await client.admin.command("buildInfo")
        if not hello.get("isWritablePrimary"):
            raise StoreUnavailable(f"mongodb {self._where} is not a writable primary")
        if "ferretdbVersion" in build:
            log.warning(
                "mongodb %s is FerretDB %s: it accepts w=majority, j=true but ignores them;"
                " a commit is as durable as its backend's own commit",
                self._where,
                build["ferretdbVersion"],
            )
        elif "setName" not in hello:
            log.warning(
                "mongodb %s is a standalone server, not a replica set: w=majority is this one"
                " server's journal, and a lost disk loses acknowledged commits",
                self._where,
            )
        else:
            log.info(
                "mongodb %s: replica set %s, commits w=majority, j=true",
                self._where,
                hello["setName"],
            )

    # -- the lease and the commit record (storage.staged's hooks) ------------------------

    async def _take_lease(self, slot: int, owner: str) -> int:
        with self._translated("acquire"):
            for attempt in range(2):  # two first takers of a slot: one upsert loses
                try:
                    doc = await self._col(LEASES).find_one_and_update(
                        {"_id": slot},
                        {"$inc": {"epoch": 1}, "$set": {"owner": owner, "at": time.time()}},
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                    )
                except DuplicateKeyError:
                    if attempt:
                        raise
                    continue
                if doc is not None:
                    return int(doc["epoch"])
        raise StoreUnavailable(f"mongodb {self._where} returned no lease for slot {slot}")

    async def _lease_epoch(self, slot: int) -> int | None:
        with self._translated("lease"):
            doc = await self._col(LEASES).find_one({"_id": slot}, {"epoch": 1})
        return None if doc is None else int(doc["epoch"])

    async def _stage(self, commit_id: str, slot: int | None, parts: list[bytes]) -> None:
        docs = [
            {
                "_id": _part_id(commit_id, number),
                "commit": commit_id,
                "slot": _lease_key(slot),
                "part": number,
                "data": Binary(part),
            }
            for number, part in enumerate(parts)
        ]
        with self._translated("stage"):
            await self._col(STAGED).insert_many(docs)

    async def _record(self, slot: int | None, epoch: int | None, commit_id: str) -> None:
        """The commit point: one conditional update of the lease document."""
        add = {"$addToSet": {"commits": commit_id}}
        with self._translated("record"):
            if slot is None:
                await self._upsert_admin_lease(add)
                return
            # No projection: FerretDB 1.24 refuses one on findAndModify.
            found = await self._col(LEASES).find_one_and_update({"_id": slot, "epoch": epoch}, add)
        if found is None:
            rules.check_fence(slot, epoch, await self._lease_epoch(slot))
            raise Fenced(f"shard {slot} is fenced: its lease moved on while committing")

    async def _upsert_admin_lease(self, update: Doc) -> None:
        for attempt in range(2):  # two first admin commits: one upsert loses
            try:
                await self._col(LEASES).update_one({"_id": _ADMIN}, update, upsert=True)
                return
            except DuplicateKeyError:
                if attempt:
                    raise

    async def _recorded(self, slot: int | None) -> list[str]:
        with self._translated("recorded"):
            doc = await self._col(LEASES).find_one({"_id": _lease_key(slot)}, {"commits": 1})
        return [] if doc is None else list(doc.get("commits", []))

    async def _staged(self, commit_id: str) -> list[bytes]:
        # Part by part, by `_id`: one reply holds one part (FerretDB 1.24 neither caps a
        # reply nor uses an index but `_id`'s, so a query by commit reads every part).
        parts: list[bytes] = []
        with self._translated("staged"):
            while doc := await self._col(STAGED).find_one({"_id": _part_id(commit_id, len(parts))}):
                parts.append(bytes(doc["data"]))
        return parts

    async def _forget(self, slot: int | None, commit_id: str) -> None:
        with self._translated("forget"):
            pull = {"$pull": {"commits": commit_id}}
            await self._col(LEASES).update_one({"_id": _lease_key(slot)}, pull)
        await self._drop(slot, commit_id)

    async def _staged_ids(self, slot: int | None) -> list[str]:
        with self._translated("staged"):
            cursor = self._col(STAGED).find({"slot": _lease_key(slot)}, {"commit": 1})
            return list(dict.fromkeys(doc["commit"] for doc in await cursor.to_list()))

    async def _drop(self, slot: int | None, commit_id: str) -> None:
        # By `_id` first (each a small write on FerretDB too), then whatever an earlier,
        # interrupted drop left past a gap.
        with self._translated("drop"):
            staged = self._col(STAGED)
            number = 0
            while (await staged.delete_one({"_id": _part_id(commit_id, number)})).deleted_count:
                number += 1
            await staged.delete_many({"commit": commit_id})

    async def purge_output(
        self, namespace: str, job_id: str, *, fence: tuple[int, int], max_bytes: int
    ) -> bool:
        """One step of removing a deleted job's output. Fenced by reading the lease before
        the delete (no transaction holds it meanwhile): a stale owner's late step can only
        remove chunks already hidden by the purge record, which is the same step's work."""
        of_job = {"namespace": namespace, "job_id": job_id}
        with self._translated("purge"):
            cursor = self._col(CHUNKS).find(
                {**of_job, "part": 0},
                {"version": 1, "seq": 1, "offset": 1},
                sort=[("version", 1), ("seq", 1)],
                limit=rules.PURGE_STEP_CHUNKS,
            )
            left = [(doc["version"], doc["seq"], doc["offset"]) for doc in await cursor.to_list()]
            rules.check_fence(fence[0], fence[1], await self._lease_epoch(fence[0]))
            if not left:
                await self._col(PURGES).delete_one({"_id": key(namespace, job_id)})
                return True
            version, last = rules.purge_step(left, max_bytes)
            await self._col(CHUNKS).delete_many(
                {**of_job, "version": version, "seq": {"$lte": last}}
            )
            return False

    # -- apply ------------------------------------------------------------------------

    async def _apply(self, batch: Batch, commit_id: str) -> None:
        """Every write idempotent and epoch-guarded, in `staged.VISIBILITY` order."""
        fence: Fence = None if batch.slot is None else (batch.slot, batch.epoch or 0)
        if sum(len(chunk.data) for chunk in batch.chunks) > OFF_LOOP_BYTES:
            chunks = await asyncio.to_thread(_chunk_docs, batch)  # compressing takes a while
        else:
            chunks = _chunk_docs(batch)
        with self._translated("commit", write=True):
            await self._insert_absent(CHUNKS, chunks)
            await self._insert_absent(VERSIONS, [version_doc(v) for v in batch.versions])
            await self._upsert(
                DELIVERIES, [delivery_doc(d, fence) for d in batch.deliveries], fence
            )
            await self._upsert(
                NAMESPACES, [namespace_doc(n, fence) for n in batch.namespaces], fence
            )
            await self._upsert(API_KEYS, [api_key_doc(k, fence) for k in batch.api_keys], fence)
            audit = [audit_doc(entry, commit_id, n) for n, entry in enumerate(batch.audit)]
            await self._insert_absent(AUDIT, audit)
            await self._upsert(JOBS, [job_doc(job, fence) for job in batch.jobs], fence)
            if batch.deleted:
                await self._delete(batch.deleted, batch.slot, fence)

    async def _insert_absent(self, name: str, docs: list[Doc]) -> None:
        """Insert `docs`; one whose `_id` is already there stays as it is."""
        if not docs:
            return
        try:
            await self._col(name).insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(
                error.get("code") != _DUPLICATE_KEY for error in errors
            ):
                raise

    async def _upsert(self, name: str, docs: list[Doc], fence: Fence) -> None:
        """Replace each document unless a newer epoch wrote it, insert those absent (the last
        of a key wins). Two steps, not an upsert with the epoch in its filter: that upsert
        fails with a duplicate key on a newer document, and FerretDB drops the rest of the
        bulk write with it."""
        if not docs:
            return
        docs = list({doc["_id"]: doc for doc in docs}.values())
        guard = fence_guard(fence)
        # Replace only what is there: FerretDB scans the collection for each replacement
        # whose `_id` is absent (38 ms each at 1,500 documents); new ones are inserted.
        there = await self._existing(name, [doc["_id"] for doc in docs])
        absent = [doc for doc in docs if doc["_id"] not in there]
        present = [doc for doc in docs if doc["_id"] in there]
        for start in range(0, len(present), UPDATES_PER_CALL):
            part = present[start : start + UPDATES_PER_CALL]
            replaces = [ReplaceOne({"_id": doc["_id"], **guard}, doc) for doc in part]
            result = await self._col(name).bulk_write(replaces, ordered=False)
            if result.matched_count < len(part):  # absent (insert) or newer (kept: duplicate)
                absent += part
        await self._insert_absent(name, absent)

    async def _existing(self, name: str, ids: list[Any]) -> set[Any]:
        """Which of `ids` the collection holds."""
        found: set[Any] = set()
        for start in range(0, len(ids), IDS_PER_CALL):
            wanted = {"_id": {"$in": ids[start : start + IDS_PER_CALL]}}
            found.update(
                doc["_id"] for doc in await self._col(name).find(wanted, {"_id": 1}).to_list()
            )
        return found

    async def _delete(
        self, keys: Sequence[tuple[str, str]], slot: int | None, fence: Fence
    ) -> None:
        """Delete jobs with their versions and deliveries, leaving a purge record that hides
        their output at once (`purge_output` removes it later). A job a newer epoch wrote
        is left alone, with all that is its."""
        ids = {key(namespace, job_id): (namespace, job_id) for namespace, job_id in keys}
        if fence is not None:
            newer = {"_id": {"$in": list(ids)}, "fence_slot": fence[0]}
            newer["fence_epoch"] = {"$gt": fence[1]}
            for doc in await self._col(JOBS).find(newer, {"_id": 1}).to_list():
                ids.pop(doc["_id"], None)
        if not ids:
            return
        now = time.time()
        await self._insert_absent(PURGES, [purge_doc(*pair, slot, now) for pair in ids.values()])
        guard = fence_guard(fence)
        await self._col(JOBS).delete_many({"_id": {"$in": list(ids)}, **guard})
        owned = {"$or": [{"namespace": ns, "job_id": job_id} for ns, job_id in ids.values()]}
        await self._col(VERSIONS).delete_many(owned)
        await self._col(DELIVERIES).delete_many({**owned, **guard})


def _chunk_docs(batch: Batch) -> list[Doc]:
    return [doc for chunk in batch.chunks for doc in chunk_docs(chunk)]


def _part_id(commit_id: str, number: int) -> str:
    return f"{commit_id}/{number:06d}"


def _lease_key(slot: int | None) -> int | str:
    return _ADMIN if slot is None else slot


def durable_options(options: Any, where: str) -> dict[str, Any]:
    """The write concern every write carries: `w: majority, j: true`. A URL asking for
    another `w` (a number says nothing of the set's size: w=2 of 5 is below a majority) or
    for journal=false is refused, naming the setting."""
    w = options.get("w", "majority")
    if w != "majority":
        raise StoreUnavailable(
            f"mongodb {where} asks for w={w}; the service acknowledges a write only once a"
            " majority holds it journaled: use w=majority (or leave w out)"
        )
    if options.get("journal") is False:
        raise StoreUnavailable(
            f"mongodb {where} asks for journal=false; the service acknowledges a write only"
            " once it is journaled: leave journal out"
        )
    return {"w": w, "journal": True}


def _timeouts(parsed: dict[str, Any]) -> dict[str, int]:
    options = parsed["options"]
    return {name: value for name, value in TIMEOUTS_MS.items() if name not in options}


def _parse(url: str, where: str) -> dict[str, Any]:
    try:
        parsed: dict[str, Any] = parse_uri(url)
    except (PyMongoError, ValueError) as exc:
        raise StoreUnavailable(f"mongodb {where}: the URL cannot be read") from exc
    return parsed


def describe(url: str) -> str:
    """host:port/database for messages; the URL itself may carry a password."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]
    except ValueError:
        return "(unparsable url)"
    return f"{host}{parts.path or '/'}"
