"""Fuzzing the API in process over PostgreSQL (tests/fuzzing.py), which refuses what SQLite
stores (NUL in text and jsonb): no request may get a 5xx or raise out of the app.

The app runs on schemathesis's ASGI client, whose one event-loop thread serves every
request: the store and the shard are opened there, by the app's lifespan, and closed by it.
An exception escaping the app is what a real server would answer with a 500 or a dropped
connection, so any exception counts.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import psycopg
import pytest
import schemathesis
from fastapi import FastAPI
from psycopg import sql
from schemathesis.python import asgi

from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from serve_app.app import create_app
from serve_app.deps import ApiConfig, Deps
from serve_app.keys import key_hash
from storage.registry import open_store
from tests.conftest import POSTGRES_URL, need_server
from tests.fuzzing import Known, config, fuzz

ADMIN_KEY = "fuzz-admin-key"


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch PostgreSQL database, dropped after the test; its URL."""
    parts = urlsplit(POSTGRES_URL)
    need_server(parts.hostname or "127.0.0.1", parts.port or 5432, "PostgreSQL")
    name = f"aos_fuzz_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield parts._replace(path=f"/{name}").geturl()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        conn.execute(query)


@pytest.fixture
def app(database: str) -> Iterator[FastAPI]:
    @asynccontextmanager
    async def serving(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(database)
        await store.open()
        shard = Shard(
            store, ShardConfig(slot=0, num_shards=1, webhook_allowed_networks="127.0.0.0/8")
        )
        await shard.start()
        api = ApiConfig(store_url=database, num_shards=1, admin_key_sha256=key_hash(ADMIN_KEY))
        app.state.deps = Deps.create(api, store, ShardClient.in_process([shard], store=store))
        try:
            yield
        finally:
            await shard.stop()
            await store.close()

    app = create_app()
    app.router.lifespan_context = serving
    yield app
    asgi.shutdown_lifespans()  # schemathesis keeps a started lifespan until the process exits


@pytest.mark.parametrize("who", ["namespace", "admin"])
def test_no_request_gets_a_5xx_or_raises_over_postgres(
    who: str, app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    # Each failure names the line that raised; a traceback logged per request would bury that.
    caplog.set_level(logging.CRITICAL, logger="serve_app.errors")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config())
    with asgi.get_client(app) as http:
        known = Known.make(http, "", ADMIN_KEY)
        key = known.key if who == "namespace" else ADMIN_KEY
        fuzz(schema, who=who, key=key, known=known, dropped=(Exception,)).check(schema)
