"""The backends without a server: the in-memory store and SQLite."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from storage.base import Store
from storage.memory import MemoryStore
from storage.records import AuditEntry
from tests.backends.base import TestBackend


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


AUDIT_SQL = "SELECT at, namespace, actor, action, target, detail FROM audit_log ORDER BY id"


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
            rows = conn.execute(AUDIT_SQL).fetchall()
        return [
            AuditEntry(at, namespace, actor, action, target, json.loads(detail))
            for at, namespace, actor, action, target, detail in rows
        ]
