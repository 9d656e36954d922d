"""Contract fixtures: an opened, empty Store per backend (memory, a SQLite file, PostgreSQL).

PostgreSQL runs on a database of our own, created for the session and dropped
after it; tests that need a brand-new schema get a scratch database of their own.
An unreachable server skips loudly, or fails when CI=true.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from storage.base import Store, open_store
from storage.memory import MemoryStore
from storage.records import AuditEntry
from tests.conftest import POSTGRES_URL, need_server

#: Every table but the schema's version, so a table a migration adds is emptied too.
TABLES = (
    "SELECT tablename FROM pg_tables"
    " WHERE schemaname = current_schema() AND tablename <> 'schema_version'"
)


def _need_postgres() -> None:
    parts = urlsplit(POSTGRES_URL)
    need_server(parts.hostname or "127.0.0.1", parts.port or 5432, "PostgreSQL")


def _with_database(name: str) -> str:
    return urlsplit(POSTGRES_URL)._replace(path=f"/{name}").geturl()


def _create_database() -> tuple[str, str]:
    name = f"aos_contract_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, _with_database(name)


def _drop_database(name: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        conn.execute(query)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The session's PostgreSQL database; its URL."""
    _need_postgres()
    name, url = _create_database()
    yield url
    _drop_database(name)


@pytest.fixture
def fresh_pg_database() -> Iterator[str]:
    """A PostgreSQL database nobody has opened yet, for schema tests."""
    _need_postgres()
    name, url = _create_database()
    yield url
    _drop_database(name)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/data/aos.db"  # tmp_path is absolute: sqlite:////tmp/...
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQL database with no schema yet, which several stores may open."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fresh/aos.db"
    url: str = request.getfixturevalue("fresh_pg_database")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An opened store with nothing in it."""
    store = open_store(store_url)
    await store.open()
    if store_url.startswith("postgresql"):
        async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as conn:
            tables = [
                sql.Identifier(name) for [name] in await (await conn.execute(TABLES)).fetchall()
            ]
            await conn.execute(
                sql.SQL("TRUNCATE {} RESTART IDENTITY").format(sql.SQL(", ").join(tables))
            )
    yield store
    await store.close()


@pytest.fixture
def read_audit(store: Store, store_url: str) -> Callable[[], Awaitable[list[AuditEntry]]]:
    """The audit log as stored; the Store protocol has no reader for it (nothing serves it yet)."""

    async def read() -> list[AuditEntry]:
        if isinstance(store, MemoryStore):
            return list(store.audit)
        query = "SELECT at, namespace, actor, action, target, detail FROM audit_log ORDER BY id"
        if store_url.startswith("sqlite"):
            with closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as conn:
                rows = conn.execute(query).fetchall()
            return [
                AuditEntry(at, namespace, actor, action, target, json.loads(detail))
                for at, namespace, actor, action, target, detail in rows
            ]
        async with await psycopg.AsyncConnection.connect(store_url) as conn:
            cur = await conn.execute(query)
            return [AuditEntry(*row) for row in await cur.fetchall()]

    return read
