"""Records <-> Cassandra rows, and the rows one commit writes (`plan`). Pure: no I/O.

A record is kept whole as compact JSON (`record` blob; a delivery's payload beside it as
raw bytes). Strings are UTF-8: a lone surrogate is refused here (`Unstorable`), before
anything of its commit is staged, never by the database half-way through applying it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from storage import cassandra_schema as cql
from storage import rules
from storage.codec import pack
from storage.errors import Unstorable
from storage.records import (
    ApiKey,
    Attempt,
    AuditEntry,
    Batch,
    Chunk,
    Delivery,
    DeliveryStatus,
    Job,
    Namespace,
    OutputVersion,
)

#: A stored chunk is cut into rows of at most this many bytes (`rules.parts`).
PART_BYTES = 1024 * 1024
#: Rows of a job with an expiry outlive it by this much (seconds): the TTL is a backstop
#: for a sweeper that fell behind, never what a reader relies on.
TTL_GRACE_S = 86_400
#: Cassandra's largest TTL (20 years); a later expiry gets none.
MAX_TTL_S = 630_720_000
#: The largest key Cassandra takes (bytes of a partition key component).
MAX_KEY_BYTES = 65_535
_INT32 = 2**31
_INT64 = 2**63

_JOB_FIELDS = tuple(f.name for f in fields(Job))
_DELIVERY_FIELDS = tuple(f.name for f in fields(Delivery) if f.name != "payload")

#: One statement (a `storage.cassandra_schema` name) and its values.
Write = tuple[str, tuple[Any, ...]]
#: The writes of one record (a job and its index rows, a chunk and its parts): applied
#: together in one logged batch, so a crash never leaves a record without its index.
Unit = list[Write]


# -- codecs -----------------------------------------------------------------------------------


def dump(values: Any) -> bytes:
    """Compact JSON as UTF-8. `Unstorable` for a string UTF-8 cannot hold."""
    try:
        return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        raise Unstorable() from exc


def load(stored: bytes) -> Any:
    return json.loads(stored)


def job_bytes(job: Job) -> bytes:
    return dump({name: getattr(job, name) for name in _JOB_FIELDS})


def load_job(stored: bytes) -> Job:
    return Job.from_plain(load(stored))


def delivery_bytes(delivery: Delivery) -> bytes:
    values = {name: getattr(delivery, name) for name in _DELIVERY_FIELDS}
    values["attempts"] = [[getattr(a, f.name) for f in fields(Attempt)] for a in delivery.attempts]
    return dump(values)


def load_delivery(stored: bytes, payload: bytes | None) -> Delivery:
    values = load(stored)
    values.update(
        payload=payload or b"",
        status=DeliveryStatus(values["status"]),
        attempts=tuple(Attempt(*attempt) for attempt in values["attempts"]),
    )
    return Delivery(**values)


def version_bytes(version: OutputVersion) -> bytes:
    return dump({f.name: getattr(version, f.name) for f in fields(OutputVersion)})


def load_version(stored: bytes) -> OutputVersion:
    return OutputVersion(**load(stored))


def namespace_bytes(namespace: Namespace) -> bytes:
    return dump([namespace.name, namespace.created_at, namespace.config])


def load_namespace(stored: bytes) -> Namespace:
    name, created_at, config = load(stored)
    return Namespace(name, created_at, config)


def api_key_bytes(key: ApiKey) -> bytes:
    values = {f.name: getattr(key, f.name) for f in fields(ApiKey)}
    return dump({**values, "namespaces": list(key.namespaces)})


def load_api_key(stored: bytes) -> ApiKey:
    values = load(stored)
    return ApiKey(**{**values, "namespaces": tuple(values["namespaces"])})


def audit_bytes(entry: AuditEntry) -> bytes:
    return dump([entry.at, entry.namespace, entry.actor, entry.action, entry.target, entry.detail])


def load_audit(stored: bytes) -> AuditEntry:
    return AuditEntry(*load(stored))


def ttl_of(job: Job, now: float) -> int:
    """The TTL (seconds) of a job's rows: its expiry plus `TTL_GRACE_S`, and never less than
    the grace from now; 0 (none) for a job kept until deleted or expiring past Cassandra's
    largest TTL."""
    if job.expires_at is None or not math.isfinite(job.expires_at):
        return 0
    ttl = max(int(job.expires_at - now) + TTL_GRACE_S, TTL_GRACE_S)
    return 0 if ttl > MAX_TTL_S else ttl


# -- what a commit writes ----------------------------------------------------------------------


@dataclass(slots=True)
class Before:
    """What the tables held before a commit, as far as it changes them: the jobs and
    deliveries it rewrites or deletes (their old index rows go), the deliveries of the
    jobs it deletes, and the chunks and versions already there (written once)."""

    jobs: dict[tuple[str, str], Job] = field(default_factory=dict)
    deliveries: dict[tuple[str, str], Delivery] = field(default_factory=dict)
    doomed_deliveries: list[Delivery] = field(default_factory=list)
    chunks: set[tuple[str, str, int, int]] = field(default_factory=set)
    versions: set[tuple[str, str, int]] = field(default_factory=set)


@dataclass(slots=True)
class Wanted:
    """The keys a commit's `Before` is read by: jobs by namespace, chunk seqs by job and
    version, version numbers by job, deliveries by (namespace, id), deleted jobs."""

    jobs: dict[str, list[str]] = field(default_factory=dict)
    chunks: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    versions: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    deliveries: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, batch: Batch) -> Wanted:
        wanted = cls(
            deliveries=list(dict.fromkeys((d.namespace, d.delivery_id) for d in batch.deliveries)),
            deleted=list(dict.fromkeys(batch.deleted)),
        )
        for namespace, job_id in dict.fromkeys([*(j.key for j in batch.jobs), *batch.deleted]):
            wanted.jobs.setdefault(namespace, []).append(job_id)
        for c in batch.chunks:
            wanted.chunks.setdefault((c.namespace, c.job_id, c.version), []).append(c.seq)
        for v in batch.versions:
            wanted.versions.setdefault((v.namespace, v.job_id), []).append(v.version)
        return wanted


@dataclass(slots=True)
class Plan:
    """A commit's writes in two steps applied one after the other: what a job's record
    points to first (output, versions, deliveries, admin records, audit), then the jobs
    and deletes (`storage.staged.VISIBILITY`). Every write carries the commit's stamp."""

    first: list[Unit]
    then: list[Unit]


@dataclass(frozen=True, slots=True)
class PackedChunk:
    chunk: Chunk
    encoding: str | None
    parts: list[bytes]


def pack_chunks(chunks: Iterable[Chunk]) -> list[PackedChunk]:
    """Chunks as stored: packed (storage.codec), cut in `PART_BYTES` rows."""
    packed = []
    for chunk in chunks:
        stored, encoding = pack(chunk.data)
        packed.append(PackedChunk(chunk, encoding, rules.parts(stored, PART_BYTES)))
    return packed


def check_keys(batch: Batch) -> None:
    """`Unstorable` for a key Cassandra refuses (over 64 KiB, not UTF-8) or a number its
    columns cannot hold, found before anything of the batch is written."""
    keys = [
        *(k for j in batch.jobs for k in (j.namespace, j.job_id)),
        *(k for c in batch.chunks for k in (c.namespace, c.job_id)),
        *(k for v in batch.versions for k in (v.namespace, v.job_id)),
        *(k for key in batch.deleted for k in key),
        *(k for d in batch.deliveries for k in (d.namespace, d.job_id, d.delivery_id)),
        *(n.name for n in batch.namespaces),
        *(k.key_id for k in batch.api_keys),
    ]
    try:
        too_long = any(len(key.encode()) > MAX_KEY_BYTES for key in keys)
    except UnicodeEncodeError as exc:
        raise Unstorable() from exc
    ints32 = [*(j.slot for j in batch.jobs), *(d.slot for d in batch.deliveries)]
    ints32 += [*(c.version for c in batch.chunks), *(v.version for v in batch.versions)]
    ints64 = [n for c in batch.chunks for n in (c.seq, c.offset)]
    if (
        too_long
        or any(not -_INT32 <= n < _INT32 for n in ints32)
        or any(not -_INT64 <= n < _INT64 for n in ints64)
    ):
        raise Unstorable()


def plan(
    batch: Batch, chunks: list[PackedChunk], before: Before, *, stamp: int, commit_id: str
) -> Plan:
    """The writes of `batch` at write timestamp `stamp` (microseconds). Raises `Unstorable`
    for a value the rows cannot hold."""
    now = time.time()
    versions = _last({(v.namespace, v.job_id, v.version): v for v in batch.versions})
    first = [
        *_chunk_writes(chunks, before, stamp),
        *(
            [("PUT_VERSION", (v.namespace, v.job_id, v.version, version_bytes(v), 0, stamp))]
            for v in versions
            if (v.namespace, v.job_id, v.version) not in before.versions
        ),
        *_delivery_writes(batch.deliveries, before, stamp),
        *(
            [("PUT_NAMESPACE", (ns.name, namespace_bytes(ns), stamp))]
            for ns in _last({ns.name: ns for ns in batch.namespaces})
        ),
        *(
            [("PUT_API_KEY", (key.key_id, api_key_bytes(key), stamp))]
            for key in _last({key.key_id: key for key in batch.api_keys})
        ),
        [
            ("PUT_AUDIT", (_day(commit_id), commit_id, n, audit_bytes(e), stamp))
            for n, e in enumerate(batch.audit)
        ],
    ]
    then = [
        *_job_writes(batch.jobs, before, stamp, now),
        *_delete_writes(batch, before, stamp, now),
    ]
    return Plan([unit for unit in first if unit], then)


def _last(by_key: dict[Any, Any]) -> list[Any]:
    return list(by_key.values())


def _day(commit_id: str) -> str:
    """The UTC day a commit id was made (its audit entries' partition)."""
    return time.strftime("%Y-%m-%d", time.gmtime(int(commit_id.split("-", 1)[0]) / 1e9))


def _chunk_writes(chunks: list[PackedChunk], before: Before, stamp: int) -> Iterable[Unit]:
    for packed in chunks:
        c = packed.chunk
        if (c.namespace, c.job_id, c.version, c.seq) in before.chunks:
            continue  # a chunk is written once: a retried commit's copy is a no-op
        key = (c.namespace, c.job_id, c.version)
        first, *rest = packed.parts
        parts = len(packed.parts)
        yield [
            ("PUT_CHUNK", (*key, c.seq, c.offset, packed.encoding, parts, first, stamp)),
            *(("PUT_PART", (*key, c.seq, n, data, stamp)) for n, data in enumerate(rest, 1)),
            ("PUT_OFFSET", (*key, c.offset, c.seq, stamp)),
        ]


def _job_rows(job: Job) -> dict[tuple[Any, ...], str]:
    """A job's index rows (their keys) and the statement that writes each."""
    rows: dict[tuple[Any, ...], str] = {
        ("listed", job.namespace, job.created_at, job.job_id): "PUT_LISTED"
    }
    if not job.status.terminal:
        rows[("indexed", job.slot, cql.RUNNING, 0.0, job.namespace, job.job_id)] = "PUT_INDEXED"
    elif job.expires_at is not None:
        at = job.expires_at
        rows[("indexed", job.slot, cql.EXPIRING, at, job.namespace, job.job_id)] = "PUT_INDEXED"
    return rows


def _job_writes(jobs: list[Job], before: Before, stamp: int, now: float) -> Iterable[Unit]:
    for job in _last({job.key: job for job in jobs}):
        record, ttl = job_bytes(job), ttl_of(job, now)
        unit: Unit = [("PUT_JOB", (job.namespace, job.job_id, record, ttl, stamp))]
        rows = _job_rows(job)
        for key, statement in rows.items():
            values = (*key[1:], record) + ((None,) if key[0] == "indexed" else ())
            unit.append((statement, (*values, ttl, stamp)))
        old = before.jobs.get(job.key)
        if old is not None:
            stale = _unindex(key for key in _job_rows(old) if key not in rows)
            unit += [(statement, (stamp, *key)) for statement, key in stale]
        yield unit


def _unindex(keys: Iterable[tuple[Any, ...]]) -> Iterable[Write]:
    """Deletes of index rows (without their stamp, which the caller puts first)."""
    for key in keys:
        yield ("DELETE_LISTED" if key[0] == "listed" else "DELETE_INDEXED"), key[1:]


def _delivery_rows(d: Delivery) -> dict[tuple[Any, ...], str]:
    rows = {
        ("DELETE_DELIVERY", d.namespace, d.job_id, d.created_at, d.delivery_id): "PUT_DELIVERY",
        ("DELETE_DELIVERY_ID", d.namespace, d.delivery_id): "PUT_DELIVERY_ID",
    }
    if d.status is DeliveryStatus.PENDING:
        key = ("DELETE_INDEXED", d.slot, cql.PENDING, d.created_at, d.namespace, d.delivery_id)
        rows[key] = "PUT_INDEXED"
    return rows


def _delivery_writes(deliveries: list[Delivery], before: Before, stamp: int) -> Iterable[Unit]:
    for d in _last({(d.namespace, d.delivery_id): d for d in deliveries}):
        record, rows = delivery_bytes(d), _delivery_rows(d)
        unit: Unit = [
            (statement, (*key[1:], record, d.payload, 0, stamp)) for key, statement in rows.items()
        ]
        old = before.deliveries.get((d.namespace, d.delivery_id))
        if old is not None:
            unit += [(k[0], (stamp, *k[1:])) for k in _delivery_rows(old) if k not in rows]
        yield unit


def _delete_writes(batch: Batch, before: Before, stamp: int, now: float) -> Iterable[Unit]:
    """A deleted job's rows go, at the commit's own stamp: a tie with a write of the same
    commit goes to the delete. Its output stays, hidden by its purge row, until purged."""
    upserted = {job.key: job for job in batch.jobs}
    doomed = [*before.doomed_deliveries, *batch.deliveries]
    for key in dict.fromkeys(batch.deleted):
        known = [j for j in (before.jobs.get(key), upserted.get(key)) if j is not None]
        unit: Unit = [("DELETE_JOB", (stamp, *key)), ("DELETE_VERSIONS", (stamp, *key))]
        for job in known:
            unit += [(statement, (stamp, *k)) for statement, k in _unindex(_job_rows(job))]
        for d in doomed:
            if (d.namespace, d.job_id) == key:
                unit += [(row[0], (stamp, *row[1:])) for row in _delivery_rows(d)]
        unit.append(("PUT_PURGE", (*key, batch.slot, now, stamp)))
        if batch.slot is not None:
            purging = (batch.slot, cql.PURGING, now, *key, None, None, 0, stamp)
            unit.append(("PUT_INDEXED", purging))
        yield unit
