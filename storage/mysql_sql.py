"""How MySQL and MariaDB spell the SQL backends' shared statements, and the statements of
MySQL's own: a chunk kept as several rows, leases taken without RETURNING."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from storage import rules, sql
from storage.sql import Dialect, Params, Row, Step

#: Tables in InnoDB, text in utf8mb4 compared byte by byte with no trailing-space padding
#: (the collation is settled when the store opens: `NOPAD_COLLATIONS`), so "a", "A" and
#: "a " are three ids and they sort as Python sorts them.
MYSQL = Dialect(
    name="mysql",
    blob="LONGBLOB",
    json="JSON",
    double="DOUBLE",
    bigint="BIGINT",
    boolean="BOOLEAN",
    identity="BIGINT AUTO_INCREMENT PRIMARY KEY",
    tag_filter="JSON_CONTAINS(tags, ?)",
    # Over the service's limits (actors/limits.py: 128 for an id, 63 for a namespace), and
    # two of them in one key stay within InnoDB's 3072 bytes (4 bytes a character).
    key="VARCHAR(255)",
    table_options=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}",
)
#: MariaDB 10.2+, then MySQL 8.0.17+.
NOPAD_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")

#: The stored bytes of a chunk go in rows of at most this many (`rules.parts`): the first in
#: `output_chunks`, the rest in `output_chunk_parts`. A row is sent escaped (up to twice its
#: size) and read back whole, and each must fit `max_allowed_packet`, so a 16 MiB chunk
#: needs no bigger packet than 4 MiB. Fixed for good: a read takes a chunk whose first row
#: is exactly this long to have more.
PART_BYTES = 1024 * 1024
MIN_PACKET_BYTES = 4 * 1024 * 1024

#: The tables the store keeps (each checked to be InnoDB when it opens).
TABLES = (
    "schema_version",
    "jobs",
    "output_chunks",
    "output_chunk_parts",
    "output_versions",
    "output_purges",
    "webhook_deliveries",
    "namespaces",
    "api_keys",
    "audit_log",
    "shard_leases",
)

INSERT_PART = (
    "INSERT INTO output_chunk_parts (namespace, job_id, version, seq, part, data)"
    " VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE namespace = namespace"
)
#: The further rows of the chunks from seq to seq, in order.
READ_PARTS = (
    "SELECT seq, data FROM output_chunk_parts WHERE namespace = ? AND job_id = ?"
    " AND version = ? AND seq BETWEEN ? AND ? ORDER BY seq, part"
)
PURGE_PARTS = (
    "DELETE FROM output_chunk_parts WHERE namespace = ? AND job_id = ? AND version = ? AND seq <= ?"
)
#: Bumps the epoch under the row's lock; the same transaction then reads it (LEASE_EPOCH).
TAKE_LEASE = (
    "INSERT INTO shard_leases (slot, epoch, owner, acquired_at) VALUES (?, 1, ?, ?)"
    " ON DUPLICATE KEY UPDATE epoch = epoch + 1, owner = VALUES(owner),"
    " acquired_at = VALUES(acquired_at)"
)
#: The fence, read with a shared lock: a concurrent `acquire_shard` waits for the commit.
FENCE = sql.LEASE_EPOCH + " LOCK IN SHARE MODE"

#: A snapshot for a read of several statements (the session reads committed otherwise).
SNAPSHOT = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
)


def _upsert(statement: str) -> str:
    """`INSERT ... ON CONFLICT (key) DO UPDATE SET "c" = excluded."c", ...` as MySQL says it."""
    insert, _, changes = statement.partition(" ON CONFLICT ")
    sets = re.sub(r'excluded\."(\w+)"', r'VALUES("\1")', changes.split(" DO UPDATE SET ", 1)[1])
    return f"{insert} ON DUPLICATE KEY UPDATE {sets}"


def _if_absent(statement: str) -> str:
    """An insert that leaves a row already there as it is. Not INSERT IGNORE, which would
    also turn a bad value into a warning and a silently changed row."""
    insert = statement.removesuffix(" ON CONFLICT DO NOTHING")
    assert insert != statement, statement
    return f"{insert} ON DUPLICATE KEY UPDATE namespace = namespace"


#: The shared statements MySQL spells its own way: each runs as these statements, in order,
#: with the same parameters.
_SPELLED: dict[str, tuple[str, ...]] = {
    sql.UPSERT_JOB: (_upsert(sql.UPSERT_JOB),),
    sql.UPSERT_DELIVERY: (_upsert(sql.UPSERT_DELIVERY),),
    sql.UPSERT_NAMESPACE: (_upsert(sql.UPSERT_NAMESPACE),),
    sql.UPSERT_API_KEY: (_upsert(sql.UPSERT_API_KEY),),
    sql.INSERT_CHUNK: (_if_absent(sql.INSERT_CHUNK),),
    sql.INSERT_VERSION: (_if_absent(sql.INSERT_VERSION),),
    sql.INSERT_PURGE: (_if_absent(sql.INSERT_PURGE),),
    # A purge step removes the chunks' further rows with them, in its one transaction.
    sql.PURGE_CHUNKS: (PURGE_PARTS, sql.PURGE_CHUNKS),
}


@functools.cache
def spelled(statement: str) -> tuple[str, ...]:
    """`statement` as asyncmy runs it: MySQL's words, `%s` placeholders (a literal `%`
    doubled, since asyncmy formats the parameters in)."""
    return tuple(_driver(s) for s in _SPELLED.get(statement, (statement,)))


def _driver(statement: str) -> str:
    return statement.replace("%", "%%").replace("?", "%s")


def parted(step: Step) -> list[Step]:
    """A commit's chunk rows cut to `PART_BYTES`: the first part in the chunk's row, the
    rest in rows of `output_chunk_parts`."""
    statement, rows = step
    if statement != sql.INSERT_CHUNK:
        return [step]
    firsts: list[Params] = []
    further: list[Params] = []
    for namespace, job_id, seq, offset, stored, version, encoding in rows:
        first, *rest = rules.parts(stored, PART_BYTES)
        firsts.append((namespace, job_id, seq, offset, first, version, encoding))
        further.extend(
            (namespace, job_id, version, seq, part, data) for part, data in enumerate(rest, 1)
        )
    return [(statement, firsts), *([(INSERT_PART, further)] if further else [])]


def joined(rows: list[Row], parts: Iterable[Row]) -> list[Row]:
    """The chunk rows with their further parts (seq, data; in seq and part order) joined."""
    further: dict[int, list[bytes]] = {}
    for seq, data in parts:
        further.setdefault(seq, []).append(data)
    return [
        (*row[:4], b"".join([row[4], *further[row[2]]]), *row[5:]) if row[2] in further else row
        for row in rows
    ]
