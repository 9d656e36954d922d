"""PostgreSQL: a database per location."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from storage.base import Store
from storage.records import AuditEntry
from tests.backends.base import TestBackend
from tests.backends.local import AUDIT_SQL
from tests.conftest import POSTGRES_URL, need_server

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
            cur = await conn.execute(AUDIT_SQL)
            return [AuditEntry(*row) for row in await cur.fetchall()]
