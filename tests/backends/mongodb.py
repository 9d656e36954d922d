"""MongoDB (FerretDB in the tests): a database per location."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from pymongo import AsyncMongoClient, MongoClient

from storage.base import Store
from storage.mongodb_docs import AUDIT, audit_of
from storage.records import AuditEntry
from tests.backends.base import TestBackend
from tests.conftest import need_server

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
