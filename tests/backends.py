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
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncmy
import psycopg
from psycopg import sql
from pymongo import AsyncMongoClient, MongoClient

from storage.base import Store
from storage.memory import MemoryStore
from storage.mongodb_docs import AUDIT, audit_of
from storage.records import AuditEntry
from tests.conftest import POSTGRES_URL, need_server

T = TypeVar("T")
MYSQL_URL = os.environ.get("AOS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


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
    #: Whether the store talks to a server over TCP (at its URL's host and port).
    has_server = True

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

    def server(self, url: str) -> tuple[str, int]:
        """The host and port of the server `url` names."""
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        return parts.hostname, parts.port

    def via(self, url: str, port: int) -> str:
        """`url` with its server at 127.0.0.1:`port` (a proxy in front of it)."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        return parts._replace(
            netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
        ).geturl()


class Memory(TestBackend):
    name = "memory"
    persistent = False
    has_server = False

    @contextmanager
    def session(self, tmp: Path) -> Iterator[str]:
        yield "memory://"

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        assert isinstance(store, MemoryStore)
        return list(store.audit)


_AUDIT_SQL = "SELECT at, namespace, actor, action, target, detail FROM audit_log ORDER BY id"


class Sqlite(TestBackend):
    name = "sqlite"
    has_server = False

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


def _mysql_args(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
        "database": parts.path.lstrip("/") or None,
        "autocommit": True,
        "charset": "utf8mb4",
    }


async def mysql_run(url: str, *statements: str) -> list[tuple[Any, ...]]:
    """Run `statements` on the server of `url`, in its database; the last one's rows."""
    conn = await asyncmy.connect(**_mysql_args(url))
    try:
        async with conn.cursor() as cur:
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                await cur.execute(statement)
                rows = list(await cur.fetchall() or ())
            return rows
    finally:
        conn.close()


def _blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end from sync code, even one called inside an event loop."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coro).result()


class Mysql(TestBackend):
    name = "mysql"

    def need(self) -> None:
        parts = urlsplit(MYSQL_URL)
        need_server(parts.hostname or "127.0.0.1", parts.port or 3306, "MariaDB")

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        name = f"aos_contract_{secrets.token_hex(6)}"
        _blocking(mysql_run(MYSQL_URL, f"CREATE DATABASE {name}"))
        try:
            yield urlsplit(MYSQL_URL)._replace(path=f"/{name}").geturl()
        finally:
            _blocking(mysql_run(MYSQL_URL, f"DROP DATABASE IF EXISTS {name}"))

    async def empty(self, store: Store, url: str) -> None:
        # DELETE, not TRUNCATE: MySQL's TRUNCATE makes each table anew, ten times slower.
        names = await mysql_run(
            url,
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
            " AND TABLE_NAME <> 'schema_version'",
        )
        await mysql_run(url, *(f"DELETE FROM {name}" for (name,) in names))

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        rows = await mysql_run(url, _AUDIT_SQL)
        return [
            AuditEntry(at, namespace, actor, action, target, json.loads(detail))
            for at, namespace, actor, action, target, detail in rows
        ]


#: The MongoDB-protocol test server (`make services`: FerretDB on SQLite).
MONGODB_URL = os.environ.get("AOS_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017/")


class Mongodb(TestBackend):
    """A database per location: FerretDB's SQLite handler makes each one a file of its own."""

    name = "mongodb"

    def need(self) -> None:
        parts = urlsplit(MONGODB_URL)
        need_server(parts.hostname or "127.0.0.1", parts.port or 27017, "MongoDB (FerretDB)")

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        name = f"aos_contract_{secrets.token_hex(6)}"
        try:
            yield urlsplit(MONGODB_URL)._replace(path=f"/{name}").geturl()
        finally:
            with MongoClient(MONGODB_URL, serverSelectionTimeoutMS=5000) as client:
                client.drop_database(name)

    async def empty(self, store: Store, url: str) -> None:
        async with AsyncMongoClient(url) as client:
            db = client.get_default_database()
            for name in await db.list_collection_names():
                await db[name].delete_many({})

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        async with AsyncMongoClient(url) as client:
            docs = await client.get_default_database()[AUDIT].find(sort=[("_id", 1)]).to_list()
        return [audit_of(doc) for doc in docs]


#: Every backend, by the name tests are parametrized with.
BACKENDS: dict[str, TestBackend] = {
    backend.name: backend
    for backend in (
        Memory(),
        Sqlite(),
        Postgres(),
        Mysql(),
        Mongodb(),
    )
}
PERSISTENT = [name for name, backend in BACKENDS.items() if backend.persistent]
WITH_A_SERVER = [name for name, backend in BACKENDS.items() if backend.has_server]
