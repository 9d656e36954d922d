"""DynamoDB (moto's server in the tests): a table prefix per location."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aioboto3
import boto3

from storage import dynamodb_items, dynamodb_tables
from storage.base import Store
from storage.dynamodb import DEFAULT_REGION, parse_url
from storage.records import AuditEntry
from tests.backends.base import TestBackend
from tests.conftest import need_server

#: moto's server mode (`make services`); each session and fresh location is a table prefix.
DYNAMODB_URL = os.environ.get("AOS_TEST_DYNAMODB_URL", "dynamodb://127.0.0.1:4566/aos-test")


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
