"""The Cassandra store's tables and statements (CQL), in one place.

Every table is named by what it answers; records are kept whole in a `record` blob (JSON,
`storage.cassandra_rows`), with the columns a query needs beside it. Writes carry
`USING TIMESTAMP ?` (the epoch guard, `storage.cassandra`) and rows that belong to a job
with an expiry carry `USING TTL ?` (a backstop: the sweeper deletes first).
"""

from __future__ import annotations

#: The clustering `kind` of `slot_index`: the four per-slot queries it serves.
RUNNING, EXPIRING, PENDING, PURGING = 0, 1, 2, 3

#: Created in this order at `open`, each `IF NOT EXISTS`. A released table is never
#: changed here; a change is an `ALTER` appended to `MIGRATIONS`.
TABLES: tuple[str, ...] = (
    # The shard leases: epoch (LWT-fenced), the commits recorded on it (id -> stamp and,
    # for a small commit, the commit itself), and the highest write stamp it handed out.
    """CREATE TABLE IF NOT EXISTS leases (
        slot int PRIMARY KEY, epoch bigint, owner text, acquired_at double,
        last_ts bigint, commits map<text, blob>)""",
    # The parts of large staged commits (`storage.staged`), by slot.
    """CREATE TABLE IF NOT EXISTS staged (
        slot int, commit_id text, part int, data blob,
        PRIMARY KEY ((slot), commit_id, part))""",
    # get_job / get_jobs.
    """CREATE TABLE IF NOT EXISTS jobs (
        namespace text, job_id text, record blob,
        PRIMARY KEY ((namespace, job_id)))""",
    # list_jobs: a namespace's jobs newest first.
    """CREATE TABLE IF NOT EXISTS jobs_by_created (
        namespace text, created_at double, job_id text, record blob,
        PRIMARY KEY ((namespace), created_at, job_id))
        WITH CLUSTERING ORDER BY (created_at DESC, job_id DESC)""",
    # A slot's Running jobs (kind 0), expiring jobs by expires_at (1), pending deliveries
    # by creation (2) and purges by deletion (3): `at` orders each kind, `id` is the job's
    # or the delivery's id.
    """CREATE TABLE IF NOT EXISTS slot_index (
        slot int, kind int, at double, namespace text, id text, record blob, payload blob,
        PRIMARY KEY ((slot), kind, at, namespace, id))""",
    # Output, a job's in one partition (all its versions): a chunk's first part (and where
    # it starts, how it is stored, how many parts it has); its further parts; the chunk
    # starting at a byte offset.
    """CREATE TABLE IF NOT EXISTS chunks (
        namespace text, job_id text, version int, seq bigint, "offset" bigint,
        encoding text, parts int, data blob,
        PRIMARY KEY ((namespace, job_id), version, seq))""",
    """CREATE TABLE IF NOT EXISTS chunk_parts (
        namespace text, job_id text, version int, seq bigint, part int, data blob,
        PRIMARY KEY ((namespace, job_id, version, seq), part))""",
    """CREATE TABLE IF NOT EXISTS chunk_offsets (
        namespace text, job_id text, version int, "offset" bigint, seq bigint,
        PRIMARY KEY ((namespace, job_id), version, "offset"))
        WITH CLUSTERING ORDER BY (version ASC, "offset" DESC)""",
    # Output versions a later version completed.
    """CREATE TABLE IF NOT EXISTS versions (
        namespace text, job_id text, version int, record blob,
        PRIMARY KEY ((namespace, job_id), version))""",
    # A job's deliveries in due order, and each by its id.
    """CREATE TABLE IF NOT EXISTS deliveries (
        namespace text, job_id text, created_at double, delivery_id text,
        record blob, payload blob,
        PRIMARY KEY ((namespace, job_id), created_at, delivery_id))""",
    """CREATE TABLE IF NOT EXISTS deliveries_by_id (
        namespace text, delivery_id text, record blob, payload blob,
        PRIMARY KEY ((namespace, delivery_id)))""",
    # A deleted job whose output is still being removed: hides it from readers at once.
    """CREATE TABLE IF NOT EXISTS purges (
        namespace text, job_id text, slot int, deleted_at double,
        PRIMARY KEY ((namespace, job_id)))""",
    "CREATE TABLE IF NOT EXISTS namespaces (name text PRIMARY KEY, record blob)",
    "CREATE TABLE IF NOT EXISTS api_keys (key_id text PRIMARY KEY, record blob)",
    # The audit log by UTC day of its commit, in commit order.
    """CREATE TABLE IF NOT EXISTS audit (
        day text, commit_id text, n int, record blob,
        PRIMARY KEY ((day), commit_id, n))""",
)
TABLE_NAMES = tuple(ddl.split("EXISTS ", 1)[1].split()[0] for ddl in TABLES)

KEYSPACE_DDL = (
    "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication ="
    " {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
)
EXISTING_TABLES = "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?"
COMMITLOG_SYNC = "SELECT value FROM system_views.settings WHERE name = 'commitlog_sync'"

_TS = "USING TIMESTAMP ?"
_TTL_TS = "USING TTL ? AND TIMESTAMP ?"

# -- leases (lightweight transactions) -----------------------------------------------------

READ_LEASE = "SELECT epoch, last_ts, commits FROM leases WHERE slot = ?"
FIRST_LEASE = (
    "INSERT INTO leases (slot, epoch, owner, acquired_at, last_ts) VALUES (?, 1, ?, ?, ?)"
    " IF NOT EXISTS"
)
#: Conditional on the stamp too: a commit recorded meanwhile (a higher stamp) makes the
#: taker read again, so its floor is above every stamp of the epoch it fences.
NEXT_LEASE = (
    "UPDATE leases SET epoch = ?, owner = ?, acquired_at = ? WHERE slot = ?"
    " IF epoch = ? AND last_ts = ?"
)
#: The commit point: the commit id (with its stamp) joins the lease while it has the epoch;
#: the commit before it, already applied, leaves in the same write.
RECORD = "UPDATE leases SET commits[?] = ?, last_ts = ? WHERE slot = ? IF epoch = ?"
RECORD_FORGETTING = (
    "UPDATE leases SET commits[?] = ?, commits[?] = null, last_ts = ? WHERE slot = ? IF epoch = ?"
)
FORGET = "UPDATE leases SET commits[?] = null WHERE slot = ? IF EXISTS"
#: Admin commits (slot -1) hold no epoch: their lease row is written without LWT.
RECORD_ADMIN = "UPDATE leases USING TIMESTAMP ? SET commits[?] = ? WHERE slot = ?"
FORGET_ADMIN = "DELETE commits[?] FROM leases USING TIMESTAMP ? WHERE slot = ?"
#: A purge step is fenced like a commit and raises the lease's stamp like one.
FENCE = "UPDATE leases SET last_ts = ? WHERE slot = ? IF epoch = ?"

STAGE = "INSERT INTO staged (slot, commit_id, part, data) VALUES (?, ?, ?, ?)"
STAGED = "SELECT data FROM staged WHERE slot = ? AND commit_id = ?"
STAGED_IDS = "SELECT commit_id FROM staged WHERE slot = ? AND part = 0 ALLOW FILTERING"
DROP_STAGED = "DELETE FROM staged WHERE slot = ? AND commit_id = ?"

# -- writes (timestamped) --------------------------------------------------------------------

PUT_JOB = f"INSERT INTO jobs (namespace, job_id, record) VALUES (?, ?, ?) {_TTL_TS}"
PUT_LISTED = (
    "INSERT INTO jobs_by_created (namespace, created_at, job_id, record)"
    f" VALUES (?, ?, ?, ?) {_TTL_TS}"
)
PUT_INDEXED = (
    "INSERT INTO slot_index (slot, kind, at, namespace, id, record, payload)"
    f" VALUES (?, ?, ?, ?, ?, ?, ?) {_TTL_TS}"
)
PUT_CHUNK = (
    'INSERT INTO chunks (namespace, job_id, version, seq, "offset", encoding, parts, data)'
    f" VALUES (?, ?, ?, ?, ?, ?, ?, ?) {_TS}"
)
PUT_PART = (
    "INSERT INTO chunk_parts (namespace, job_id, version, seq, part, data)"
    f" VALUES (?, ?, ?, ?, ?, ?) {_TS}"
)
PUT_OFFSET = (
    'INSERT INTO chunk_offsets (namespace, job_id, version, "offset", seq)'
    f" VALUES (?, ?, ?, ?, ?) {_TS}"
)
PUT_VERSION = (
    f"INSERT INTO versions (namespace, job_id, version, record) VALUES (?, ?, ?, ?) {_TTL_TS}"
)
PUT_DELIVERY = (
    "INSERT INTO deliveries (namespace, job_id, created_at, delivery_id, record, payload)"
    f" VALUES (?, ?, ?, ?, ?, ?) {_TTL_TS}"
)
PUT_DELIVERY_ID = (
    "INSERT INTO deliveries_by_id (namespace, delivery_id, record, payload)"
    f" VALUES (?, ?, ?, ?) {_TTL_TS}"
)
PUT_PURGE = f"INSERT INTO purges (namespace, job_id, slot, deleted_at) VALUES (?, ?, ?, ?) {_TS}"
PUT_NAMESPACE = f"INSERT INTO namespaces (name, record) VALUES (?, ?) {_TS}"
PUT_API_KEY = f"INSERT INTO api_keys (key_id, record) VALUES (?, ?) {_TS}"
PUT_AUDIT = f"INSERT INTO audit (day, commit_id, n, record) VALUES (?, ?, ?, ?) {_TS}"

DELETE_JOB = f"DELETE FROM jobs {_TS} WHERE namespace = ? AND job_id = ?"
DELETE_LISTED = (
    f"DELETE FROM jobs_by_created {_TS} WHERE namespace = ? AND created_at = ? AND job_id = ?"
)
DELETE_INDEXED = (
    f"DELETE FROM slot_index {_TS}"
    " WHERE slot = ? AND kind = ? AND at = ? AND namespace = ? AND id = ?"
)
DELETE_VERSIONS = f"DELETE FROM versions {_TS} WHERE namespace = ? AND job_id = ?"
DELETE_DELIVERY = (
    f"DELETE FROM deliveries {_TS}"
    " WHERE namespace = ? AND job_id = ? AND created_at = ? AND delivery_id = ?"
)
DELETE_DELIVERY_ID = f"DELETE FROM deliveries_by_id {_TS} WHERE namespace = ? AND delivery_id = ?"
DELETE_PURGE = f"DELETE FROM purges {_TS} WHERE namespace = ? AND job_id = ?"
PURGE_CHUNKS = (
    f"DELETE FROM chunks {_TS} WHERE namespace = ? AND job_id = ? AND version = ? AND seq <= ?"
)
PURGE_PARTS = (
    f"DELETE FROM chunk_parts {_TS} WHERE namespace = ? AND job_id = ? AND version = ? AND seq = ?"
)
PURGE_OFFSETS = (
    f"DELETE FROM chunk_offsets {_TS}"
    ' WHERE namespace = ? AND job_id = ? AND version = ? AND "offset" <= ?'
)

# -- reads ------------------------------------------------------------------------------------

GET_JOB = "SELECT record FROM jobs WHERE namespace = ? AND job_id = ?"
GET_JOBS = "SELECT record FROM jobs WHERE namespace = ? AND job_id IN ?"
#: A page of a namespace's listing below an upper bound (exclusive) and from a lower one.
LIST_JOBS = (
    "SELECT record FROM jobs_by_created WHERE namespace = ?"
    " AND (created_at, job_id) < (?, ?) AND (created_at, job_id) >= (?, ?) LIMIT ?"
)
SLOT_KIND = "SELECT record, payload FROM slot_index WHERE slot = ? AND kind = ?"
EXPIRED = (
    "SELECT record FROM slot_index WHERE slot = ? AND (kind, at, namespace, id) > (?, ?, ?, ?)"
    " AND (kind, at) <= (?, ?) LIMIT ?"
)
LOAD_PURGES = "SELECT namespace, id FROM slot_index WHERE slot = ? AND kind = ?"
GET_PURGE = "SELECT slot, deleted_at FROM purges WHERE namespace = ? AND job_id = ?"
#: The first chunks left of a job, without their data: how many one purge step removes.
PROBE_PURGE = (
    'SELECT version, seq, "offset", parts FROM chunks WHERE namespace = ? AND job_id = ? LIMIT ?'
)
#: Where the next chunks start, without their data.
PROBE_CHUNKS = (
    'SELECT seq, "offset", parts FROM chunks'
    " WHERE namespace = ? AND job_id = ? AND version = ? AND seq > ? LIMIT ?"
)
READ_CHUNKS = (
    'SELECT seq, "offset", encoding, parts, data FROM chunks'
    " WHERE namespace = ? AND job_id = ? AND version = ? AND seq > ? LIMIT ?"
)
READ_PARTS = (
    "SELECT data FROM chunk_parts WHERE namespace = ? AND job_id = ? AND version = ? AND seq = ?"
)
CHUNK_SEQS = (
    "SELECT seq FROM chunks WHERE namespace = ? AND job_id = ? AND version = ? AND seq IN ?"
)
SEQ_AT_OFFSET = (
    "SELECT seq FROM chunk_offsets WHERE namespace = ? AND job_id = ? AND version = ?"
    ' AND "offset" <= ? LIMIT 1'
)
LIST_VERSIONS = "SELECT record FROM versions WHERE namespace = ? AND job_id = ?"
GET_VERSIONS = "SELECT version FROM versions WHERE namespace = ? AND job_id = ? AND version IN ?"
LIST_DELIVERIES = "SELECT record, payload FROM deliveries WHERE namespace = ? AND job_id = ?"
GET_DELIVERY = (
    "SELECT record, payload FROM deliveries_by_id WHERE namespace = ? AND delivery_id = ?"
)
GET_NAMESPACE = "SELECT record FROM namespaces WHERE name = ?"
GET_API_KEY = "SELECT record FROM api_keys WHERE key_id = ?"
PING = "SELECT release_version FROM system.local"
