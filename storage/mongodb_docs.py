"""The MongoDB store's documents: keys, record <-> document, indexes, and the check that a
batch can be written at all before any of it is staged.

Every document a commit writes is built here. Keys start with the namespace (`key`): a
job's `_id` is `"<namespace>\\0<job_id>"`, so one namespace's documents are one range of
the `_id` index. JSON-shaped values (a namespace's config, an audit entry's detail) are
stored as JSON text: BSON field names cannot hold every key a client may send (FerretDB
refuses `.`; both refuse NUL), and JSON keeps `1` and `1.0` apart as the SQL stores do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

import bson
from bson import Binary
from pymongo import ASCENDING, DESCENDING, IndexModel

from storage import rules
from storage.codec import pack, unpack
from storage.errors import StoreUnavailable, Unstorable
from storage.records import (
    ApiKey,
    Attempt,
    AuditEntry,
    Batch,
    Chunk,
    Delivery,
    Job,
    Namespace,
    OutputVersion,
)

Doc = dict[str, Any]
#: (slot, epoch) of a fenced commit; None for an admin commit.
Fence = tuple[int, int] | None

#: A stored chunk is cut into documents of at most this many bytes of data: a BSON
#: document holds 16 MiB, and a chunk may be 16 MiB before compression.
CHUNK_PART_BYTES = 8 * 1024 * 1024
#: The largest document MongoDB stores (`maxBsonObjectSize`).
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
_SEP = "\0"

JOBS, CHUNKS, VERSIONS, DELIVERIES = "jobs", "chunks", "versions", "deliveries"
NAMESPACES, API_KEYS, AUDIT, PURGES = "namespaces", "api_keys", "audit", "purges"
LEASES, STAGED = "leases", "staged"

#: Every collection's indexes besides `_id`; made at `open` (idempotent).
INDEXES: dict[str, list[IndexModel]] = {
    JOBS: [
        # load_shard: a slot's Running jobs.
        IndexModel([("slot", ASCENDING), ("status", ASCENDING)], name="running_by_slot"),
        # expired_jobs: a slot's jobs by expiry, in the sweeper's order.
        IndexModel(
            [("slot", 1), ("expires_at", 1), ("namespace", 1), ("job_id", 1)],
            name="expiring_by_slot",
        ),
        # list_jobs: a namespace's jobs newest first; filters are applied by the server.
        IndexModel(
            [("namespace", ASCENDING), ("created_at", DESCENDING), ("job_id", DESCENDING)],
            name="by_created",
        ),
    ],
    CHUNKS: [
        IndexModel(
            [("namespace", 1), ("job_id", 1), ("version", 1), ("seq", 1), ("part", 1)],
            name="by_seq",
        ),
        # read_output_at: the chunk holding a byte, found without a scan.
        IndexModel(
            [("namespace", 1), ("job_id", 1), ("version", 1), ("offset", 1)], name="by_offset"
        ),
    ],
    VERSIONS: [IndexModel([("namespace", 1), ("job_id", 1), ("version", 1)], name="by_job")],
    DELIVERIES: [
        IndexModel(
            [("slot", 1), ("status", 1), ("created_at", 1), ("delivery_id", 1)],
            name="pending_by_slot",
        ),
        IndexModel(
            [("namespace", 1), ("job_id", 1), ("created_at", 1), ("delivery_id", 1)],
            name="by_job",
        ),
    ],
    PURGES: [IndexModel([("slot", 1), ("deleted_at", 1)], name="by_slot")],
    STAGED: [
        IndexModel([("commit", 1), ("part", 1)], name="by_commit"),
        IndexModel([("slot", 1), ("part", 1)], name="by_slot"),
    ],
}


def key(*parts: str) -> str:
    """A document key from its parts, the namespace first. A part holding NUL could make
    two keys one: refused as the data's fault (the API never lets one through)."""
    if any(_SEP in part for part in parts):
        raise Unstorable()
    return _SEP.join(parts)


def fence_guard(fence: Fence) -> Doc:
    """The filter a fenced write adds: the document was not written at a newer epoch of
    the same slot (epochs of different slots say nothing of each other)."""
    if fence is None:
        return {}
    slot, epoch = fence
    return {"$nor": [{"fence_slot": slot, "fence_epoch": {"$gt": epoch}}]}


def _fenced(doc: Doc, fence: Fence) -> Doc:
    slot, epoch = fence if fence is not None else (None, None)
    return {**doc, "fence_slot": slot, "fence_epoch": epoch}


def _plain(record: Any, names: Iterable[str]) -> Doc:
    return {name: _value(getattr(record, name)) for name in names}


def _value(value: Any) -> Any:
    if isinstance(value, str):
        return str(value)  # a StrEnum as its plain value
    if isinstance(value, tuple):
        return list(value)
    return value


_JOB_FIELDS = tuple(f.name for f in fields(Job))
_VERSION_FIELDS = tuple(f.name for f in fields(OutputVersion))
_DELIVERY_FIELDS = tuple(f.name for f in fields(Delivery) if f.name not in ("payload", "attempts"))
_ATTEMPT_FIELDS = tuple(f.name for f in fields(Attempt))


# -- records -> documents ----------------------------------------------------------------


def job_doc(job: Job, fence: Fence) -> Doc:
    return _fenced({"_id": key(job.namespace, job.job_id), **_plain(job, _JOB_FIELDS)}, fence)


def job_of(doc: Mapping[str, Any]) -> Job:
    return Job.from_plain({name: doc[name] for name in _JOB_FIELDS})


def chunk_docs(chunk: Chunk) -> list[Doc]:
    """A chunk as stored: packed (storage.codec), in parts of `CHUNK_PART_BYTES`."""
    stored, encoding = pack(chunk.data)
    parts = rules.parts(stored, CHUNK_PART_BYTES)
    base = key(chunk.namespace, chunk.job_id, str(chunk.version), str(chunk.seq))
    return [
        {
            "_id": f"{base}{_SEP}{number}",
            "namespace": chunk.namespace,
            "job_id": chunk.job_id,
            "version": chunk.version,
            "seq": chunk.seq,
            "offset": chunk.offset,
            "part": number,
            "parts": len(parts),
            "encoding": encoding,
            "bytes": len(part),
            "data": Binary(part),
        }
        for number, part in enumerate(parts)
    ]


def chunk_check_doc(chunk: Chunk) -> Doc:
    """A chunk's document without its data: what `check_storable` needs of it (its data is
    bytes, always storable, and split to fit)."""
    doc_key = key(chunk.namespace, chunk.job_id, str(chunk.version), str(chunk.seq))
    return {"_id": doc_key, "seq": chunk.seq, "offset": chunk.offset, "version": chunk.version}


def chunks_of(docs: Iterable[Mapping[str, Any]]) -> list[Chunk]:
    """Chunks from their part documents (in seq, part order), up to the first chunk whose
    parts are not all there yet (a commit still being applied)."""
    chunks: list[Chunk] = []
    pending: list[Mapping[str, Any]] = []
    for doc in docs:
        if doc["part"] != len(pending):
            break
        pending.append(doc)
        if len(pending) == doc["parts"]:
            stored = b"".join(bytes(part["data"]) for part in pending)
            chunks.append(
                Chunk(
                    doc["namespace"],
                    doc["job_id"],
                    doc["seq"],
                    doc["offset"],
                    unpack(stored, doc["encoding"]),
                    doc["version"],
                )
            )
            pending = []
    return chunks


def version_doc(version: OutputVersion) -> Doc:
    doc_key = key(version.namespace, version.job_id, str(version.version))
    return {"_id": doc_key, **_plain(version, _VERSION_FIELDS)}


def version_of(doc: Mapping[str, Any]) -> OutputVersion:
    return OutputVersion(**{name: doc[name] for name in _VERSION_FIELDS})


def delivery_doc(delivery: Delivery, fence: Fence) -> Doc:
    doc = {
        "_id": key(delivery.namespace, delivery.delivery_id),
        **_plain(delivery, _DELIVERY_FIELDS),
        "payload": Binary(delivery.payload),
        "attempts": [_plain(attempt, _ATTEMPT_FIELDS) for attempt in delivery.attempts],
    }
    return _fenced(doc, fence)


def delivery_of(doc: Mapping[str, Any]) -> Delivery:
    values = {name: doc[name] for name in (*_DELIVERY_FIELDS, "attempts")}
    return Delivery.from_plain(values, bytes(doc["payload"]))


def namespace_doc(namespace: Namespace, fence: Fence) -> Doc:
    doc = {
        "_id": namespace.name,
        "created_at": namespace.created_at,
        "config": json.dumps(namespace.config),
    }
    return _fenced(doc, fence)


def namespace_of(doc: Mapping[str, Any]) -> Namespace:
    return Namespace(doc["_id"], doc["created_at"], _json(doc["config"]))


def api_key_doc(api_key: ApiKey, fence: Fence) -> Doc:
    names = (f.name for f in fields(ApiKey) if f.name != "key_id")
    return _fenced({"_id": api_key.key_id, **_plain(api_key, names)}, fence)


def api_key_of(doc: Mapping[str, Any]) -> ApiKey:
    names = [f.name for f in fields(ApiKey) if f.name != "key_id"]
    values = {name: doc[name] for name in names}
    return ApiKey(key_id=doc["_id"], **{**values, "namespaces": tuple(values["namespaces"])})


def audit_doc(entry: AuditEntry, commit_id: str, number: int) -> Doc:
    """`_id` orders the log: the commit id (time-ordered), then the entry's place in it; a
    commit applied twice writes the same ids, so its entries are kept once."""
    names = ("at", "namespace", "actor", "action", "target")
    return {
        "_id": f"{commit_id}{_SEP}{number:06d}",
        **_plain(entry, names),
        "detail": json.dumps(entry.detail),
    }


def audit_of(doc: Mapping[str, Any]) -> AuditEntry:
    names = ("at", "namespace", "actor", "action", "target")
    return AuditEntry(**{name: doc[name] for name in names}, detail=_json(doc["detail"]))


def purge_doc(namespace: str, job_id: str, slot: int | None, at: float) -> Doc:
    doc_key = key(namespace, job_id)
    return {
        "_id": doc_key,
        "namespace": namespace,
        "job_id": job_id,
        "slot": slot,
        "deleted_at": at,
    }


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreUnavailable("a JSON value in the store cannot be read") from exc


# -- the check before staging -------------------------------------------------------------


def check_batch(batch: Batch) -> None:
    """Raise `Unstorable` if any document of `batch` could not be written."""
    fence: Fence = None if batch.slot is None else (batch.slot, batch.epoch or 0)
    try:
        docs = [
            *(job_doc(job, fence) for job in batch.jobs),
            *(chunk_check_doc(chunk) for chunk in batch.chunks),
            *(version_doc(version) for version in batch.versions),
            *(delivery_doc(delivery, fence) for delivery in batch.deliveries),
            *(namespace_doc(namespace, fence) for namespace in batch.namespaces),
            *(api_key_doc(api_key, fence) for api_key in batch.api_keys),
            *(audit_doc(entry, "", number) for number, entry in enumerate(batch.audit)),
            *({"_id": key(*pair)} for pair in batch.deleted),
        ]
    except (ValueError, TypeError, OverflowError) as exc:  # json.dumps of what JSON lacks
        raise Unstorable() from exc
    check_storable(docs)


def check_storable(docs: Iterable[Doc]) -> None:
    """Encode each document as BSON: what fails (a lone surrogate, an int over 64 bits, a
    document over 16 MiB) is the data's fault, found before the commit is staged, since a
    recorded commit that cannot be applied would stop its shard."""
    for doc in docs:
        try:
            size = len(bson.encode(doc))
        except (bson.errors.InvalidDocument, ValueError, OverflowError, TypeError) as exc:
            raise Unstorable() from exc
        if size > MAX_DOCUMENT_BYTES:
            raise Unstorable()
