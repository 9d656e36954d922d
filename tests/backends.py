"""The backends the contract suite (tests/contract) and the end-to-end store tests
(tests/e2e/test_backends.py) run on: one `TestBackend` each, listed in `BACKENDS`.

Adding a backend to the suites is a class here and its line in `BACKENDS`. A backend whose
server is unreachable skips loudly, or fails when CI=true (`need_server`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from storage.base import Store
from storage.cassandra_driver import location, new_cluster
from storage.cassandra_rows import load_audit
from storage.memory import MemoryStore
from storage.records import AuditEntry
from tests.conftest import POSTGRES_URL, need_server


class TestBackend:
    """How the suites get an empty store of one backend.

    `session` makes the location the session's tests share (a database, a keyspace) and
    removes it after; `empty` clears it before each test, faster than making a new one.
    `fresh` is a location nobody has opened yet (schema, several stores on one database),
    removed after the test.
    """

    __test__ = False  # not a test class, though its name starts with Test
    name: str
    #: False for the in-memory store: nothing outlives the store object.
    persistent = True

    def need(self) -> None:
        """Skip loudly, or fail in CI, when the backend's server is unreachable."""

    @contextmanager
    def session(self, tmp: Path) -> Iterator[str]:
        """The URL of the session's location (`tmp`: a folder of the session's own)."""
        with self.fresh(tmp) as url:
            yield url

    async def empty(self, store: Store, url: str) -> None:
        """Remove what earlier tests wrote at `url` (`store` is open on it)."""

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        raise NotImplementedError(f"{self.name} keeps nothing to open twice")
        yield ""

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        """The audit log as stored, oldest first (the Store has no reader for it)."""
        raise NotImplementedError


class Memory(TestBackend):
    name = "memory"
    persistent = False

    @contextmanager
    def session(self, tmp: Path) -> Iterator[str]:
        yield "memory://"

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        assert isinstance(store, MemoryStore)
        return list(store.audit)


_AUDIT_SQL = "SELECT at, namespace, actor, action, target, detail FROM audit_log ORDER BY id"


class Sqlite(TestBackend):
    name = "sqlite"

    @contextmanager
    def session(self, tmp: Path) -> Iterator[str]:
        yield f"sqlite:///{tmp}/{secrets.token_hex(4)}/aos.db"  # tmp is absolute: sqlite:////

    async def empty(self, store: Store, url: str) -> None:
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn, conn:
            names = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT IN ('schema_version') AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
            for (name,) in names:
                conn.execute(f'DELETE FROM "{name}"')

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        yield f"sqlite:///{tmp}/{secrets.token_hex(4)}/aos.db"

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            rows = conn.execute(_AUDIT_SQL).fetchall()
        return [
            AuditEntry(at, namespace, actor, action, target, json.loads(detail))
            for at, namespace, actor, action, target, detail in rows
        ]


#: Every table but the schema's version, so a table a migration adds is emptied too.
_PG_TABLES = (
    "SELECT tablename FROM pg_tables"
    " WHERE schemaname = current_schema() AND tablename <> 'schema_version'"
)


class Postgres(TestBackend):
    name = "postgres"

    def need(self) -> None:
        parts = urlsplit(POSTGRES_URL)
        need_server(parts.hostname or "127.0.0.1", parts.port or 5432, "PostgreSQL")

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        name = f"aos_contract_{secrets.token_hex(6)}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield urlsplit(POSTGRES_URL)._replace(path=f"/{name}").geturl()
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                conn.execute(drop.format(sql.Identifier(name)))

    async def empty(self, store: Store, url: str) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute(_PG_TABLES)
            tables = [sql.Identifier(name) for [name] in await cur.fetchall()]
            joined = sql.SQL(", ").join(tables)
            await conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(joined))

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute(_AUDIT_SQL)
            return [AuditEntry(*row) for row in await cur.fetchall()]


CASSANDRA_URL = os.environ.get("AOS_TEST_CASSANDRA_URL", "cassandra://127.0.0.1:9042/aos_test")


class Cassandra(TestBackend):
    """A keyspace per session (tables take ~0.3 s each to make), emptied partition by
    partition: a DELETE per partition the last test wrote, ~20x faster than TRUNCATE."""

    name = "cassandra"

    def __init__(self) -> None:
        self._driver: Any = None

    def need(self) -> None:
        where = location(CASSANDRA_URL)
        need_server(where.hosts[0], where.port, "Cassandra")

    def driver(self) -> Any:
        """One driver session for the test process (the driver shuts it down at exit)."""
        if self._driver is None:
            self._driver = new_cluster(location(CASSANDRA_URL)).connect()
        return self._driver

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        keyspace = f"aos_test_{secrets.token_hex(4)}"
        try:
            yield urlsplit(CASSANDRA_URL)._replace(path=f"/{keyspace}").geturl()
        finally:
            self.driver().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)

    async def empty(self, store: Store, url: str) -> None:
        await asyncio.to_thread(self._empty, location(url).keyspace)

    def _empty(self, keyspace: str) -> None:
        session = self.driver()
        for table, key in self._partition_keys(keyspace).items():
            columns = ", ".join(f'"{name}"' for name in key)
            where = " AND ".join(f'"{name}" = %s' for name in key)
            partitions = session.execute(f"SELECT DISTINCT {columns} FROM {keyspace}.{table}")
            futures = [
                session.execute_async(f"DELETE FROM {keyspace}.{table} WHERE {where}", row)
                for row in partitions
            ]
            for future in futures:
                future.result()

    def _partition_keys(self, keyspace: str) -> dict[str, list[str]]:
        """Each table's partition key columns, in order, as the keyspace holds them."""
        rows = self.driver().execute(
            "SELECT table_name, column_name, kind, position FROM system_schema.columns"
            " WHERE keyspace_name = %s",
            (keyspace,),
        )
        keys: dict[str, list[tuple[int, str]]] = {}
        for table, column, kind, position in rows:
            if kind == "partition_key":
                keys.setdefault(table, []).append((position, column))
        return {table: [name for _, name in sorted(key)] for table, key in keys.items()}

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        keyspace = location(url).keyspace

        def read() -> list[AuditEntry]:
            rows = self.driver().execute(f"SELECT commit_id, n, record FROM {keyspace}.audit")
            return [load_audit(record) for _, _, record in sorted(rows)]

        return await asyncio.to_thread(read)


#: Every backend, by the name tests are parametrized with.
BACKENDS: dict[str, TestBackend] = {
    backend.name: backend
    for backend in (
        Memory(),
        Sqlite(),
        Postgres(),
        Cassandra(),
    )
}
PERSISTENT = [name for name, backend in BACKENDS.items() if backend.persistent]
