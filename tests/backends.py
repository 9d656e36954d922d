"""The backends the contract suite (tests/contract) and the end-to-end store tests
(tests/e2e/test_backends.py) run on: one `TestBackend` each, listed in `BACKENDS`.

Adding a backend to the suites is a class here and its line in `BACKENDS`. A backend whose
server is unreachable skips loudly, or fails when CI=true (`need_server`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aioboto3
import boto3
import psycopg
from psycopg import sql

from storage import dynamodb_items, dynamodb_tables
from storage.base import Store
from storage.dynamodb import DEFAULT_REGION, parse_url
from storage.memory import MemoryStore
from storage.records import AuditEntry
from tests.conftest import POSTGRES_URL, need_server

#: moto's server mode (`make services`); each session and fresh location is a table prefix.
DYNAMODB_URL = os.environ.get("AOS_TEST_DYNAMODB_URL", "dynamodb://127.0.0.1:4566/aos-test")


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


class DynamoDB(TestBackend):
    """moto's DynamoDB: a location is a table prefix, emptied by scanning its tables."""

    name = "dynamodb"

    def need(self) -> None:
        parts = urlsplit(DYNAMODB_URL)
        need_server(parts.hostname or "127.0.0.1", parts.port or 4566, "DynamoDB (moto)")
        # A local server takes any credentials; botocore wants some.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        base = urlsplit(DYNAMODB_URL)
        prefix = f"{parse_url(DYNAMODB_URL)[1]}-{secrets.token_hex(6)}"
        try:
            yield base._replace(path=f"/{prefix}").geturl()
        finally:
            _drop_tables(DYNAMODB_URL, prefix)

    async def empty(self, store: Store, url: str) -> None:
        prefix = parse_url(url)[1]

        async def empty(client: Any, table: dynamodb_tables.Table) -> None:
            name = f"{prefix}-{table.name}"
            found = await scan_table(client, name, ", ".join(table.keys))
            for i in range(0, len(found), 25):
                requests = [{"DeleteRequest": {"Key": key}} for key in found[i : i + 25]]
                await client.batch_write_item(RequestItems={name: requests})

        async with dynamodb_client(url) as client:
            await asyncio.gather(*(empty(client, table) for table in dynamodb_tables.TABLES))

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        name = f"{parse_url(url)[1]}-{dynamodb_tables.AUDIT.name}"
        async with dynamodb_client(url) as client:
            found = await scan_table(client, name, None)
        found.sort(key=lambda item: item["id"]["S"])
        return [dynamodb_items.audit_of(item) for item in found]


@asynccontextmanager
async def dynamodb_client(url: str) -> AsyncIterator[Any]:
    endpoint, _, region = parse_url(url)
    async with _session().client(
        "dynamodb", endpoint_url=endpoint, region_name=region or DEFAULT_REGION
    ) as client:
        yield client


@functools.cache
def _session() -> Any:
    return aioboto3.Session()


async def scan_table(client: Any, table: str, projection: str | None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    if projection is not None:
        params["ProjectionExpression"] = projection
    found: list[dict[str, Any]] = []
    while True:
        answer = await client.scan(**params)
        found += answer["Items"]
        if "LastEvaluatedKey" not in answer:
            return found
        params["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def _drop_tables(url: str, prefix: str) -> None:
    endpoint, _, region = parse_url(url)
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name=region or DEFAULT_REGION)
    for page in client.get_paginator("list_tables").paginate():
        for name in page["TableNames"]:
            if name.startswith(f"{prefix}-"):
                client.delete_table(TableName=name)


#: Every backend, by the name tests are parametrized with.
BACKENDS: dict[str, TestBackend] = {
    backend.name: backend
    for backend in (
        Memory(),
        Sqlite(),
        Postgres(),
        DynamoDB(),
    )
}
PERSISTENT = [name for name, backend in BACKENDS.items() if backend.persistent]
