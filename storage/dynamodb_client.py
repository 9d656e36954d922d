"""The DynamoDB store's one door to the service: every call bounded in time, every error
translated here, and the paging and batching DynamoDB asks of its callers."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from storage.errors import AosError, Unstorable
from storage.sql import BINDING_ERRORS, unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Item = dict[str, Any]

#: The longest one call may take, retries included: a dead endpoint is `StoreUnavailable`
#: within this (the client's own timeouts are shorter: `CONNECT_TIMEOUT_S`, `READ_TIMEOUT_S`).
CALL_TIMEOUT_S = 9.0
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
#: Requests one operation has in flight at once (batches, parts of a staged commit).
PARALLEL_REQUESTS = 16
#: Rounds of a batch read or write whose unprocessed part (throttling) is sent again.
BATCH_ROUNDS = 8
GET_BATCH, WRITE_BATCH = 100, 25


class ConditionFailed(Exception):
    """A conditional write's condition did not hold: the caller decides what that means."""


class Contended(Exception):
    """A transaction met another on one of its items (DynamoDB's TransactionConflict)."""


class Dynamo:
    """A DynamoDB client of one store: `call` is the only way to the service."""

    def __init__(self, client: Any, where: str) -> None:
        self.client = client
        self.where = where
        self._parallel = asyncio.Semaphore(PARALLEL_REQUESTS)

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """The answer of one operation (`put_item`, `query`, ...), in at most
        `CALL_TIMEOUT_S`. Raises `ConditionFailed`, `Contended`, `Unstorable` (DynamoDB
        refused the data: too big, a value it cannot hold), else `StoreUnavailable`."""
        with self.translated(operation):
            async with self._parallel, asyncio.timeout(CALL_TIMEOUT_S):
                answer: dict[str, Any] = await getattr(self.client, operation)(**_named(params))
                return answer

    @contextmanager
    def translated(self, action: str) -> Iterator[None]:
        """The one place errors become ours. Never with AWS's text: it may echo the data."""
        try:
            yield
        except (AosError, ConditionFailed, Contended):
            raise
        except ClientError as exc:
            raise self._client_error(action, exc) from exc
        except (ParamValidationError, *BINDING_ERRORS) as exc:  # the data's fault, client side
            raise Unstorable() from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("dynamodb %s %s failed: %s", self.where, action, type(exc).__name__)
            raise unavailable(f"dynamodb {self.where}") from exc

    def _client_error(self, action: str, exc: ClientError) -> Exception:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ConditionalCheckFailedException":
            return ConditionFailed()
        if code == "ValidationException":
            return Unstorable()
        if code == "TransactionCanceledException":
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if "ValidationError" in reasons:
                return Unstorable()
            if "ConditionalCheckFailed" in reasons:
                return ConditionFailed()
            if "TransactionConflict" in reasons:
                return Contended()
        log.warning("dynamodb %s %s failed: %s", self.where, action, code or "unknown error")
        return unavailable(f"dynamodb {self.where}")

    async def query(self, *, stop: int | None = None, **params: Any) -> list[Item]:
        """The items of a query, every page, or the pages until `stop` items are in."""
        items: list[Item] = []
        while True:
            answer = await self.call("query", **params)
            items += answer.get("Items", [])
            last = answer.get("LastEvaluatedKey")
            if last is None or (stop is not None and len(items) >= stop):
                return items
            params["ExclusiveStartKey"] = last

    async def get_many(self, table: str, keys: list[Item]) -> list[Item]:
        """The items of `table` at `keys` that exist (consistent reads), in any order."""
        unique = list({_identity(key): key for key in keys}.values())
        parts = await gather(
            self._get_some(table, unique[i : i + GET_BATCH])
            for i in range(0, len(unique), GET_BATCH)
        )
        return [item for part in parts for item in part]

    async def _get_some(self, table: str, keys: list[Item]) -> list[Item]:
        found: list[Item] = []
        request: dict[str, Any] = {table: {"Keys": keys, "ConsistentRead": True}}
        for round_ in range(BATCH_ROUNDS):
            answer = await self.call("batch_get_item", RequestItems=request)
            found += answer.get("Responses", {}).get(table, [])
            request = answer.get("UnprocessedKeys") or {}
            if not request:
                return found
            await asyncio.sleep(0.05 * 2**round_)
        raise unavailable(f"dynamodb {self.where} (throttled)")

    async def write_many(self, table: str, requests: list[dict[str, Any]]) -> None:
        """BatchWriteItem's `requests` ({"PutRequest": ...} or {"DeleteRequest": ...}) on
        `table`, 25 a call, not atomic: for what `StagedStore` makes idempotent."""
        await gather(
            self._write_some(table, requests[i : i + WRITE_BATCH])
            for i in range(0, len(requests), WRITE_BATCH)
        )

    async def _write_some(self, table: str, requests: list[dict[str, Any]]) -> None:
        pending: dict[str, Any] = {table: requests}
        for round_ in range(BATCH_ROUNDS):
            answer = await self.call("batch_write_item", RequestItems=pending)
            pending = answer.get("UnprocessedItems") or {}
            if not pending:
                return
            await asyncio.sleep(0.05 * 2**round_)
        raise unavailable(f"dynamodb {self.where} (throttled)")


async def gather(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await `calls` together (`Dynamo.call` bounds how many are in flight)."""
    return list(await asyncio.gather(*calls))


_EXPRESSIONS = (
    "KeyConditionExpression",
    "FilterExpression",
    "ProjectionExpression",
    "UpdateExpression",
    "ConditionExpression",
)
_NAME = re.compile(r"#(\w+)")


def _named(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with "#attr" in its expressions standing for the attribute `attr` (so no
    attribute name can be one of DynamoDB's hundreds of reserved words), unless mapped."""
    found = {
        f"#{name}": name
        for field in _EXPRESSIONS
        if field in params
        for name in _NAME.findall(params[field])
    }
    if not found:
        return params
    return params | {"ExpressionAttributeNames": found | params.get("ExpressionAttributeNames", {})}


def _identity(key: Item) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, next(iter(value.values()))) for name, value in key.items()))
