"""MySQL (MariaDB in the tests): a database per location."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncmy

from storage.base import Store
from storage.records import AuditEntry
from tests.backends.base import TestBackend
from tests.backends.local import AUDIT_SQL
from tests.conftest import need_server

T = TypeVar("T")
MYSQL_URL = os.environ.get("AOS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


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
        rows = await mysql_run(url, AUDIT_SQL)
        return [
            AuditEntry(at, namespace, actor, action, target, json.loads(detail))
            for at, namespace, actor, action, target, detail in rows
        ]
