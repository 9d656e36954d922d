"""What the SQL backends share: versioned schema, statements, row <-> record conversion, reads."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from storage import rules, sharing
from storage.codec import pack, unpack
from storage.errors import StoreUnavailable
from storage.records import (
    ApiKey,
    Attempt,
    AuditEntry,
    Batch,
    Chunk,
    Delivery,
    ExpiryCursor,
    Job,
    JobQuery,
    Namespace,
    OutputVersion,
)

Row = Sequence[Any]
Params = Sequence[Any]
#: One statement and the parameter rows `executemany` runs it over.
Step = tuple[str, list[Params]]
#: (slot, epoch) a commit must still hold; None for admin writes.
Fence = tuple[int, int | None]

MAX_CHUNK_BYTES = 16 * 1024 * 1024
#: A commit or a read with more chunk bytes than this packs or unpacks them (storage.codec)
#: on a worker thread, not on the event loop.
OFF_LOOP_BYTES = 256 * 1024

#: Python's own errors from binding a value the driver cannot send (a lone surrogate, an
#: int over 64 bits, a type it cannot adapt): the data's fault, never the store's.
#: UnicodeEncodeError is a ValueError.
BINDING_ERRORS: tuple[type[Exception], ...] = (ValueError, OverflowError, TypeError)

T = TypeVar("T")


def unavailable(where: str) -> StoreUnavailable:
    """The store failed. Never with the driver's text, which may quote another request's
    data: the backend logs it."""
    return StoreUnavailable(f"the store ({where}) is unavailable; retry shortly")


@dataclass(frozen=True)
class Dialect:
    """The few words the SQL backends spell differently. Statements use `?` placeholders."""

    #: Picks a migration's statements spelled for this dialect alone (`Spelled`).
    name: str
    blob: str
    json: str
    double: str
    bigint: str
    boolean: str
    identity: str
    #: `jobs.tags` contains the one tag in the JSON array bound to `?`.
    tag_filter: str
    #: A text column in a key or an index (MySQL indexes a bounded VARCHAR only).
    key: str = "TEXT"
    #: After a CREATE TABLE's column list (MySQL: the engine and the collation).
    table_options: str = ""


SQLITE = Dialect(
    name="sqlite",
    blob="BLOB",
    json="TEXT",
    double="REAL",
    bigint="INTEGER",
    boolean="INTEGER",
    identity="INTEGER PRIMARY KEY",
    tag_filter=(
        "EXISTS (SELECT 1 FROM json_each(jobs.tags) AS t WHERE t.value = json_extract(?, '$[0]'))"
    ),
)

POSTGRES = Dialect(
    name="postgres",
    blob="BYTEA",
    json="JSONB",
    double="DOUBLE PRECISION",
    bigint="BIGINT",
    boolean="BOOLEAN",
    identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    tag_filter="tags @> ?",
)

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at {double})"
)
CURRENT_VERSION_SQL = "SELECT COALESCE(MAX(version), 0) FROM schema_version"
RECORD_VERSION_SQL = "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"

#: A statement some dialects spell their own way: by `Dialect.name`, "" for the others; a
#: dialect named nowhere skips it (a table only its own design needs).
Spelled = dict[str, str]

# Numbered and append-only: a released migration is never edited, a change is a new entry.
_MIGRATIONS: list[tuple[int, tuple[str | Spelled, ...]]] = [
    (
        1,
        (
            """CREATE TABLE jobs (
                namespace {key} NOT NULL, job_id {key} NOT NULL, slot INTEGER,
                created_at {double} NOT NULL, updated_at {double} NOT NULL,
                status {key} NOT NULL, progress {double} NOT NULL,
                estimated_completion {double}, completed_at {double}, error TEXT,
                title TEXT, description TEXT, tags {json} NOT NULL,
                webhook_url TEXT, webhook_events {json}, ttl_s {bigint},
                output_format TEXT NOT NULL, revision {bigint} NOT NULL,
                output_seq {bigint} NOT NULL, output_size {bigint} NOT NULL,
                request_hash TEXT NOT NULL,
                PRIMARY KEY (namespace, job_id)){table_options}""",
            # Partial: recovery only ever asks for a slot's Running jobs (MySQL has no
            # partial indexes: the status is the index's second column).
            {
                "": "CREATE INDEX jobs_running_by_slot ON jobs (slot) WHERE status = 'Running'",
                "mysql": "CREATE INDEX jobs_running_by_slot ON jobs (slot, status)",
            },
            "CREATE INDEX jobs_by_created ON jobs (namespace, created_at, job_id)",
            """CREATE TABLE output_chunks (
                namespace {key} NOT NULL, job_id {key} NOT NULL, version INTEGER NOT NULL,
                seq {bigint} NOT NULL, "offset" {bigint} NOT NULL, data {blob} NOT NULL,
                PRIMARY KEY (namespace, job_id, version, seq)){table_options}""",
            """CREATE TABLE output_versions (
                namespace {key} NOT NULL, job_id {key} NOT NULL, version INTEGER NOT NULL,
                last_seq {bigint} NOT NULL, size {bigint} NOT NULL, updated_at {double} NOT NULL,
                PRIMARY KEY (namespace, job_id, version)){table_options}""",
            """CREATE TABLE webhook_deliveries (
                delivery_id {key} PRIMARY KEY, namespace {key} NOT NULL, job_id {key} NOT NULL,
                slot INTEGER NOT NULL, event_type TEXT NOT NULL, url TEXT NOT NULL,
                payload {blob} NOT NULL, created_at {double} NOT NULL, status {key} NOT NULL,
                attempts {json} NOT NULL, next_attempt_at {double}){table_options}""",
            "CREATE INDEX webhook_deliveries_by_slot ON webhook_deliveries (slot, status)",
            "CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (namespace, job_id)",
            """CREATE TABLE namespaces (
                name {key} PRIMARY KEY, created_at {double} NOT NULL, config {json} NOT NULL
                ){table_options}""",
            """CREATE TABLE api_keys (
                key_id {key} PRIMARY KEY, secret_hash TEXT NOT NULL, namespaces {json} NOT NULL,
                created_at {double} NOT NULL, admin {boolean} NOT NULL, revoked_at {double}
                ){table_options}""",
            """CREATE TABLE audit_log (
                id {identity}, at {double} NOT NULL, namespace TEXT, actor TEXT NOT NULL,
                action TEXT NOT NULL, target TEXT NOT NULL, detail {json} NOT NULL
                ){table_options}""",
            """CREATE TABLE shard_leases (
                slot INTEGER PRIMARY KEY, epoch {bigint} NOT NULL, owner TEXT NOT NULL,
                acquired_at {double} NOT NULL){table_options}""",
        ),
    ),
    (
        2,
        (
            # Chunks compressed at rest (storage/codec.py): NULL is the bytes as appended.
            "ALTER TABLE output_chunks ADD COLUMN encoding TEXT",
            # A deleted job whose output is still being removed, in steps (`purge_output`).
            """CREATE TABLE output_purges (
                namespace {key} NOT NULL, job_id {key} NOT NULL, slot INTEGER,
                deleted_at {double} NOT NULL, PRIMARY KEY (namespace, job_id)){table_options}""",
            "CREATE INDEX output_purges_by_slot ON output_purges (slot)",
            # MySQL keeps a chunk in rows small enough for its packets (storage/mysql.py).
            {
                "mysql": """CREATE TABLE output_chunk_parts (
                    namespace {key} NOT NULL, job_id {key} NOT NULL, version INTEGER NOT NULL,
                    seq {bigint} NOT NULL, part INTEGER NOT NULL, data {blob} NOT NULL,
                    PRIMARY KEY (namespace, job_id, version, seq, part)){table_options}"""
            },
            # `read_output_at`: the chunk holding a byte offset, found without a scan. Chunk
            # offsets grow with seq; the index also holds seq, so the look-up needs no row.
            """CREATE INDEX output_chunks_by_offset
                ON output_chunks (namespace, job_id, version, "offset", seq)""",
            "ALTER TABLE jobs ADD COLUMN expires_at {double}",
            # Jobs finished before retention was enforced expire by their own TTL, counted
            # from their completion as for every job since (actors/retention.py).
            """UPDATE jobs SET expires_at = completed_at + ttl_s
                WHERE status <> 'Running' AND completed_at IS NOT NULL AND ttl_s IS NOT NULL""",
            # Partial: only jobs that will expire; the sweeper reads a slot's in order (MySQL:
            # every job; the range on expires_at skips those without one).
            {
                "": "CREATE INDEX jobs_expiring_by_slot ON jobs (slot, expires_at)"
                " WHERE expires_at IS NOT NULL",
                "mysql": "CREATE INDEX jobs_expiring_by_slot ON jobs (slot, expires_at)",
            },
            # Output versions: the job row holds its latest version (number, start, and the
            # SHA-256 of its bytes once complete); output_versions holds the versions a later
            # one completed, written once. Its rows so far were each job's version 1, the
            # latest, kept up to date by every append: the job row says the same.
            "ALTER TABLE jobs ADD COLUMN output_version INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE jobs ADD COLUMN output_version_at {double}",
            "ALTER TABLE jobs ADD COLUMN output_sha256 TEXT",
            "DELETE FROM output_versions",
            "ALTER TABLE output_versions ADD COLUMN created_at {double}",
            "ALTER TABLE output_versions ADD COLUMN completed_at {double}",
            "ALTER TABLE output_versions ADD COLUMN sha256 TEXT",
        ),
    ),
]


def pending_migrations(dialect: Dialect, current: int) -> list[tuple[int, list[str]]]:
    """The migrations after version `current`, in order, spelled for `dialect`."""
    words = asdict(dialect)
    return [
        (number, [ddl.format(**words) for ddl in _spelled(statements, dialect.name)])
        for number, statements in _MIGRATIONS
        if number > current
    ]


def _spelled(statements: Iterable[str | Spelled], dialect: str) -> list[str]:
    """The statements as `dialect` spells them; those it has no spelling of left out."""
    chosen = (s if isinstance(s, str) else s.get(dialect, s.get("", "")) for s in statements)
    return [ddl for ddl in chosen if ddl]


def _columns(record: type) -> tuple[str, ...]:
    # Column names are the record's field names, in field order.
    return tuple(f.name for f in fields(record))


def _select(columns: Iterable[str]) -> str:
    return ", ".join(f'"{name}"' for name in columns)


def _insert(table: str, columns: Sequence[str]) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({_select(columns)}) VALUES ({marks})"


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    changes = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in key)
    return f"{_insert(table, columns)} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {changes}"


JOB_COLUMNS = _columns(Job)
CHUNK_COLUMNS = _columns(Chunk)
DELIVERY_COLUMNS = _columns(Delivery)
NAMESPACE_COLUMNS = _columns(Namespace)
API_KEY_COLUMNS = _columns(ApiKey)
AUDIT_COLUMNS = _columns(AuditEntry)

UPSERT_JOB = _upsert("jobs", JOB_COLUMNS, ("namespace", "job_id"))
#: A chunk's row: the record's fields (`data` as stored) and how it is stored (storage.codec).
STORED_CHUNK_COLUMNS = (*CHUNK_COLUMNS, "encoding")
# Retried commits re-send chunks: a chunk already stored stays as it is.
INSERT_CHUNK = _insert("output_chunks", STORED_CHUNK_COLUMNS) + " ON CONFLICT DO NOTHING"
UPSERT_DELIVERY = _upsert("webhook_deliveries", DELIVERY_COLUMNS, ("delivery_id",))
UPSERT_NAMESPACE = _upsert("namespaces", NAMESPACE_COLUMNS, ("name",))
UPSERT_API_KEY = _upsert("api_keys", API_KEY_COLUMNS, ("key_id",))
INSERT_AUDIT = _insert("audit_log", AUDIT_COLUMNS)
VERSION_COLUMNS = _columns(OutputVersion)
#: A completed version is written once; a retried commit's row is a no-op.
INSERT_VERSION = (
    _insert("output_versions", (*VERSION_COLUMNS, "updated_at")) + " ON CONFLICT DO NOTHING"
)
#: A job's delete commits at once; its output goes later, in steps (`purge_output`).
DELETE_JOB = tuple(
    f"DELETE FROM {table} WHERE namespace = ? AND job_id = ?"
    for table in ("jobs", "output_versions", "webhook_deliveries")
)
INSERT_PURGE = (
    "INSERT INTO output_purges (namespace, job_id, slot, deleted_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
LOAD_PURGES = "SELECT namespace, job_id FROM output_purges WHERE slot = ? ORDER BY deleted_at"
#: The first chunks left of a purged job, without their data: how many one step removes.
PROBE_PURGE = (
    'SELECT version, seq, "offset" FROM output_chunks WHERE namespace = ? AND job_id = ?'
    " ORDER BY version, seq LIMIT ?"
)
PURGE_CHUNKS = (
    "DELETE FROM output_chunks WHERE namespace = ? AND job_id = ? AND version = ? AND seq <= ?"
)
PURGE_DONE = "DELETE FROM output_purges WHERE namespace = ? AND job_id = ?"
ACQUIRE_SHARD = (
    "INSERT INTO shard_leases (slot, epoch, owner, acquired_at) VALUES (?, 1, ?, ?)"
    " ON CONFLICT (slot) DO UPDATE SET epoch = shard_leases.epoch + 1,"
    " owner = excluded.owner, acquired_at = excluded.acquired_at RETURNING epoch"
)
LEASE_EPOCH = "SELECT epoch FROM shard_leases WHERE slot = ?"

_JOBS = f"SELECT {_select(JOB_COLUMNS)} FROM jobs"
_DELIVERIES = f"SELECT {_select(DELIVERY_COLUMNS)} FROM webhook_deliveries"
GET_JOB = f"{_JOBS} WHERE namespace = ? AND job_id = ?"
# The literal status matches the partial index's predicate, so the planner can use it.
LOAD_SHARD = f"{_JOBS} WHERE slot = ? AND status = 'Running'"
# `expires_at <= ?` implies the partial index's predicate, so the planner can use it.
EXPIRED_JOBS = (
    f"{_JOBS} WHERE slot = ? AND expires_at <= ? AND status <> 'Running'{{after}}"
    " ORDER BY expires_at, namespace, job_id LIMIT ?"
)
EXPIRED_AFTER = " AND (expires_at, namespace, job_id) > (?, ?, ?)"
# A deleted job's chunks are gone to readers at once, though they are removed in steps.
_NEXT_CHUNKS = (
    "FROM output_chunks WHERE namespace = ? AND job_id = ? AND version = ? AND seq > ?"
    " AND NOT EXISTS (SELECT 1 FROM output_purges AS p"
    " WHERE p.namespace = output_chunks.namespace AND p.job_id = output_chunks.job_id)"
    " ORDER BY seq LIMIT ?"
)
READ_OUTPUT = f"SELECT {_select(STORED_CHUNK_COLUMNS)} {_NEXT_CHUNKS}"
#: Where the next chunks start, without their data: how many of them fit a page's bytes.
PROBE_OUTPUT = f'SELECT seq, "offset" {_NEXT_CHUNKS}'
#: The seq of the chunk holding a byte: the last chunk starting at or before it (chunks are
#: never empty, so offsets are unique within a version).
SEQ_AT_OFFSET = (
    "SELECT seq FROM output_chunks WHERE namespace = ? AND job_id = ? AND version = ?"
    ' AND "offset" <= ? ORDER BY "offset" DESC LIMIT 1'
)
LIST_VERSIONS = (
    f"SELECT {_select(VERSION_COLUMNS)} FROM output_versions"
    " WHERE namespace = ? AND job_id = ? ORDER BY version"
)
GET_NAMESPACE = f"SELECT {_select(NAMESPACE_COLUMNS)} FROM namespaces WHERE name = ?"
GET_API_KEY = f"SELECT {_select(API_KEY_COLUMNS)} FROM api_keys WHERE key_id = ?"
PENDING_DELIVERIES = (
    f"{_DELIVERIES} WHERE slot = ? AND status = 'pending' ORDER BY created_at, delivery_id"
)
LIST_DELIVERIES = (
    f"{_DELIVERIES} WHERE namespace = ? AND job_id = ? ORDER BY created_at, delivery_id"
)
GET_DELIVERY = f"{_DELIVERIES} WHERE namespace = ? AND delivery_id = ?"
#: Ids per `get_jobs` statement: far below every backend's limit on parameters.
IDS_PER_QUERY = 500


def get_jobs_sql(count: int) -> str:
    """The jobs of a namespace among `count` ids."""
    return f"{_JOBS} WHERE namespace = ? AND job_id IN ({', '.join('?' * count)})"


class SqlStore(ABC):
    """The Store over a SQL database; a backend supplies execution and its JSON codec."""

    max_chunk_bytes = MAX_CHUNK_BYTES
    dialect: Dialect

    @abstractmethod
    async def _fetch(self, sql: str, params: Params = (), *, write: bool = False) -> list[Row]:
        """Run one statement (in its own transaction when `write`) and return its rows."""

    @abstractmethod
    async def _write(self, fence: Fence | None, steps: list[Step]) -> None:
        """Run `steps` in one transaction, after checking `fence` inside it."""

    @abstractmethod
    def _dump_json(self, value: Any) -> Any: ...

    @abstractmethod
    def _load_json(self, value: Any) -> Any: ...

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def commit(self, batch: Batch) -> None:
        fence = None if batch.slot is None else (batch.slot, batch.epoch)
        if sum(len(chunk.data) for chunk in batch.chunks) > OFF_LOOP_BYTES:
            steps = await asyncio.to_thread(self._steps, batch)  # compressing takes a while
        else:
            steps = self._steps(batch)
        if steps or fence is not None:  # an empty fenced batch still proves the lease is held
            await self._write(fence, steps)

    async def acquire_shard(self, slot: int, owner: str) -> int:
        rows = await self._fetch(ACQUIRE_SHARD, (slot, owner, time.time()), write=True)
        return int(rows[0][0])

    async def load_shard(self, slot: int) -> list[Job]:
        return await self._fetch_each(LOAD_SHARD, (slot,), self._job)

    async def _fetch_each(self, sql: str, params: Params, record: Callable[[Row], T]) -> list[T]:
        """`record` of each row of `sql`. A backend may read the rows page by page, so a
        big read (a shard's 250,000 Running jobs) never holds all its rows at once."""
        return [record(row) for row in await self._fetch(sql, params)]

    async def expired_jobs(
        self, slot: int, *, now: float, after: ExpiryCursor | None = None, limit: int = 100
    ) -> list[Job]:
        sql = EXPIRED_JOBS.format(after="" if after is None else EXPIRED_AFTER)
        params = (slot, now, *(after or ()), max(0, limit))
        return [self._job(row) for row in await self._fetch(sql, params)]

    async def get_job(self, namespace: str, job_id: str) -> Job | None:
        rows = await self._fetch(GET_JOB, (namespace, job_id))
        return self._job(rows[0]) if rows else None

    async def get_jobs(self, namespace: str, job_ids: Sequence[str]) -> list[Job]:
        unique = list(dict.fromkeys(job_ids))
        found: list[Job] = []
        for start in range(0, len(unique), IDS_PER_QUERY):
            part = unique[start : start + IDS_PER_QUERY]
            rows = await self._fetch(get_jobs_sql(len(part)), (namespace, *part))
            found.extend(self._job(row) for row in rows)
        return found

    async def list_jobs(self, namespace: str, query: JobQuery) -> list[Job]:
        where: list[str] = ["namespace = ?"]
        params: list[Any] = [namespace]
        if query.status is not None:
            where.append("status = ?")
            params.append(query.status.value)
        if query.tag is not None:
            where.append(self.dialect.tag_filter)
            params.append(self._dump_json([query.tag]))
        if query.created_from is not None:
            where.append("created_at >= ?")
            params.append(query.created_from)
        if query.created_to is not None:
            where.append("created_at < ?")
            params.append(query.created_to)
        if query.before is not None:
            # A row comparison the (namespace, created_at, job_id) index serves directly.
            where.append("(created_at, job_id) < (?, ?)")
            params.extend(query.before)
        sql = f"{_JOBS} WHERE {' AND '.join(where)} ORDER BY created_at DESC, job_id DESC LIMIT ?"
        rows = await self._fetch(sql, (*params, max(0, query.limit)))
        return [self._job(row) for row in rows]

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
        if max_bytes is not None and limit > 1:
            # Offsets rise with seq: the chunks that start within `max_bytes` of the first.
            starts = await self._fetch(PROBE_OUTPUT, (*key, after_seq, limit))
            limit = rules.page_size([offset for _, offset in starts], max_bytes)
        rows = await self._chunk_rows(key, after_seq, max(0, limit))
        if sum(len(row[4]) for row in rows) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(_chunks, rows)  # decompressing takes a while
        return _chunks(rows)

    async def _chunk_rows(self, key: tuple[str, str, int], after_seq: int, limit: int) -> list[Row]:
        """The stored rows (`STORED_CHUNK_COLUMNS`) of the chunks of `key` (namespace, job_id,
        version) after `after_seq`, at most `limit`, in seq order; a backend that stores a
        chunk in several rows joins them here."""
        return await self._fetch(READ_OUTPUT, (*key, after_seq, limit))

    async def list_versions(self, namespace: str, job_id: str) -> list[OutputVersion]:
        rows = await self._fetch(LIST_VERSIONS, (namespace, job_id))
        return [OutputVersion(*row) for row in rows]

    async def load_purges(self, slot: int) -> list[tuple[str, str]]:
        return [
            (namespace, job_id) for namespace, job_id in await self._fetch(LOAD_PURGES, (slot,))
        ]

    async def purge_output(
        self, namespace: str, job_id: str, *, fence: tuple[int, int], max_bytes: int
    ) -> bool:
        key = (namespace, job_id)
        left = await self._fetch(PROBE_PURGE, (*key, rules.PURGE_STEP_CHUNKS))
        if not left:
            await self._write(fence, [(PURGE_DONE, [key])])
            await self._reclaim(done=True)
            return True
        version, last = rules.purge_step([tuple(row) for row in left], max_bytes)
        await self._write(fence, [(PURGE_CHUNKS, [(*key, version, last)])])
        await self._reclaim(done=False)
        return False

    async def _reclaim(self, *, done: bool) -> None:  # noqa: B027  # most need nothing
        """Give back the space a purge step freed (`done`: the purge's last step), where the
        backend does not do it by itself (SQLite)."""

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
        rows = await self._fetch(SEQ_AT_OFFSET, (namespace, job_id, version, max(0, offset)))
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

    async def get_namespace(self, name: str) -> Namespace | None:
        rows = await self._fetch(GET_NAMESPACE, (name,))
        if not rows:
            return None
        name, created_at, config = rows[0]
        return Namespace(name=name, created_at=created_at, config=self._load_json(config))

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        rows = await self._fetch(GET_API_KEY, (key_id,))
        if not rows:
            return None
        values = dict(zip(API_KEY_COLUMNS, rows[0], strict=True))
        values["namespaces"] = tuple(self._load_json(values["namespaces"]))
        values["admin"] = bool(values["admin"])
        return ApiKey(**values)

    async def load_pending_deliveries(self, slot: int) -> list[Delivery]:
        return [self._delivery(row) for row in await self._fetch(PENDING_DELIVERIES, (slot,))]

    async def list_deliveries(self, namespace: str, job_id: str) -> list[Delivery]:
        rows = await self._fetch(LIST_DELIVERIES, (namespace, job_id))
        return [self._delivery(row) for row in rows]

    async def get_delivery(self, namespace: str, delivery_id: str) -> Delivery | None:
        rows = await self._fetch(GET_DELIVERY, (namespace, delivery_id))
        return self._delivery(rows[0]) if rows else None

    # -- row <-> record ---------------------------------------------------------------

    def _steps(self, batch: Batch) -> list[Step]:
        """The statements of one commit: upserts and inserts first, then deletes."""
        dump = self._dump_json
        deleted: list[Params] = [list(key) for key in batch.deleted]
        now = time.time()
        purges: list[Params] = [(*key, batch.slot, now) for key in batch.deleted]
        steps: list[Step] = [
            (UPSERT_JOB, [self._job_params(job) for job in batch.jobs]),
            (INSERT_CHUNK, [_chunk_params(chunk) for chunk in batch.chunks]),
            (INSERT_VERSION, [(*_params(v, VERSION_COLUMNS, {}), now) for v in batch.versions]),
            (UPSERT_DELIVERY, [self._delivery_params(d) for d in batch.deliveries]),
            (
                UPSERT_NAMESPACE,
                [_params(ns, NAMESPACE_COLUMNS, {"config": dump}) for ns in batch.namespaces],
            ),
            (
                UPSERT_API_KEY,
                [_params(k, API_KEY_COLUMNS, {"namespaces": _list(dump)}) for k in batch.api_keys],
            ),
            (INSERT_AUDIT, [_params(a, AUDIT_COLUMNS, {"detail": dump}) for a in batch.audit]),
            *((sql, deleted) for sql in DELETE_JOB),
            (INSERT_PURGE, purges),
        ]
        return [(sql, rows) for sql, rows in steps if rows]

    def _job_params(self, job: Job) -> Params:
        dump = _list(self._dump_json)
        return _params(
            job,
            JOB_COLUMNS,
            {
                "tags": dump,
                "webhook_events": lambda events: None if events is None else dump(events),
            },
        )

    def _job(self, row: Row) -> Job:
        values = dict(zip(JOB_COLUMNS, row, strict=True))
        values["tags"] = self._strings(values["tags"])
        events = values["webhook_events"]
        values["webhook_events"] = None if events is None else self._strings(events)
        return Job.from_plain(values)

    def _strings(self, value: Any) -> tuple[str, ...]:
        """A JSON list of strings as a shared tuple (`storage.sharing`); JSON text (SQLite,
        MySQL) is parsed once per distinct text, as jobs repeat their tags."""
        if isinstance(value, str):
            return sharing.json_strings(value)
        return sharing.strings(self._load_json(value))

    def _delivery_params(self, delivery: Delivery) -> Params:
        def attempts(items: tuple[Attempt, ...]) -> Any:
            return self._dump_json([_attempt_json(attempt) for attempt in items])

        return _params(delivery, DELIVERY_COLUMNS, {"attempts": attempts})

    def _delivery(self, row: Row) -> Delivery:
        values = dict(zip(DELIVERY_COLUMNS, row, strict=True))
        values["attempts"] = self._load_json(values["attempts"])
        return Delivery.from_plain(values, bytes(values.pop("payload")))


def _params(record: Any, columns: Sequence[str], encode: dict[str, Callable[[Any], Any]]) -> Params:
    """The record's values in column order; enums go in as their plain string values."""
    values: list[Any] = []
    for name in columns:
        value = getattr(record, name)
        if name in encode:
            value = encode[name](value)
        elif isinstance(value, str):
            value = str(value)
        values.append(value)
    return values


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    """`dataclasses.asdict(attempt)` without its recursive deep copy: attempts are written by
    the thousand (every delivery row carries all of its attempts)."""
    return {name: getattr(attempt, name) for name in _ATTEMPT_FIELDS}


_ATTEMPT_FIELDS = tuple(f.name for f in fields(Attempt))


def _list(dump: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda items: dump(list(items))


def _chunk_params(chunk: Chunk) -> Params:
    stored, encoding = pack(chunk.data)
    return (chunk.namespace, chunk.job_id, chunk.seq, chunk.offset, stored, chunk.version, encoding)


def _chunks(rows: Sequence[Row]) -> list[Chunk]:
    return [
        Chunk(namespace, job_id, seq, offset, unpack(bytes(stored), encoding), version)
        for namespace, job_id, seq, offset, stored, version, encoding in rows
    ]
