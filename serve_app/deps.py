"""What handlers depend on, injected: the replica's config, store, shard client, key cache,
requests in flight and byte budgets; and who is calling, and which namespace a request is about.

`create_app(deps)` puts a `Deps` on the app; handlers take it with `Depends(deps)`, so a
test builds the app around a `ShardClient.in_process(...)` and needs no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Query, Request
from starlette.requests import HTTPConnection

from actors.commands import check_namespace
from actors.limits import MAX_APPEND_BYTES
from actors.shard_client import CALL_TIMEOUT_S, ShardClient
from serve_app.budget import ByteBudget, InFlight
from serve_app.keys import KeyCache, Principal
from storage.base import Store
from storage.errors import BadRequest, Forbidden


@dataclass(frozen=True)
class ApiConfig:
    store_url: str
    num_shards: int
    admin_key_sha256: str
    max_wait_s: float = 60.0
    heartbeat_s: float = 15.0
    key_cache_s: float = 1.0
    max_inline_output_bytes: int = 16 * 1024 * 1024
    sse_retry_ms: int = 3000
    #: Requests a replica works on at once, long-polls aside (serve_app/shedding.py).
    max_in_flight: int = 512
    #: A request that waited longer than this to reach the replica is shed (the same module).
    max_queued_s: float = 3.0
    shard_call_timeout_s: float = CALL_TIMEOUT_S


#: Append bodies one replica holds at once: two of the largest (`MAX_APPEND_BYTES`); a
#: namespace, one (`budget.NAMESPACE_SHARE`).
APPENDS_HELD_BYTES = 2 * MAX_APPEND_BYTES
#: Inline `/output` answers one replica builds at once (the output and its JSON answer).
ANSWERS_HELD_BYTES = 128 * 1024 * 1024


def _appends() -> ByteBudget:
    return ByteBudget(APPENDS_HELD_BYTES, what="append bodies")


def _answers() -> ByteBudget:
    return ByteBudget(ANSWERS_HELD_BYTES, what="inline output answers")


@dataclass(frozen=True)
class Deps:
    """Everything a replica's handlers share."""

    config: ApiConfig
    store: Store
    shards: ShardClient
    keys: KeyCache
    in_flight: InFlight
    appends: ByteBudget = field(default_factory=_appends)
    answers: ByteBudget = field(default_factory=_answers)

    @classmethod
    def create(cls, config: ApiConfig, store: Store, shards: ShardClient) -> Deps:
        keys = KeyCache(store, admin_key_sha256=config.admin_key_sha256, ttl_s=config.key_cache_s)
        in_flight = InFlight(config.max_in_flight, max_queued_s=config.max_queued_s)
        return cls(config, store, shards, keys, in_flight)


def of(connection: HTTPConnection) -> Deps:
    """The `Deps` of the app serving `connection` (a request or a WebSocket)."""
    found: Deps | None = getattr(connection.app.state, "deps", None)
    if found is None:
        raise RuntimeError("the app has no dependencies yet (create_app(deps) or app.state.deps)")
    return found


async def deps(connection: HTTPConnection) -> Deps:
    """`of(connection)` as a dependency; async, because FastAPI runs a plain def in a thread."""
    return of(connection)


D = Annotated[Deps, Depends(deps)]


async def principal(request: Request) -> Principal:
    """Who is calling, as `serve_app.guard` authenticated them before any body was read."""
    found: Principal | None = getattr(request.state, "principal", None)
    if found is None:
        raise RuntimeError("the request did not pass serve_app.guard.Guard (create_app adds it)")
    return found


Caller = Annotated[Principal, Depends(principal)]


def resolve_namespace(caller: Principal, requested: str | None) -> str:
    """`?namespace=` (or a body's), else the key's only namespace; anything ambiguous is a 400,
    a malformed name 422 (for every key alike), another tenant's 403."""
    if requested is None:
        if len(caller.namespaces) == 1:
            return next(iter(caller.namespaces))
        raise BadRequest("say which namespace: ?namespace=<name> (this key has several or all)")
    check_namespace(requested)
    if not caller.can_use(requested):
        raise Forbidden(f"this key may not use namespace {requested!r}")
    return requested


def submit_namespace(caller: Principal, given: str | None, query: str | None) -> str:
    """A submit's namespace: the body's (`given`) or `?namespace=` (`query`), which must not
    differ (400), resolved as `resolve_namespace` does."""
    if given is not None and query is not None and given != query:
        raise BadRequest("the body's namespace and ?namespace= differ")
    return resolve_namespace(caller, given if given is not None else query)


async def namespace(caller: Caller, namespace: Annotated[str | None, Query()] = None) -> str:
    return resolve_namespace(caller, namespace)


Ns = Annotated[str, Depends(namespace)]


def require_admin(caller: Principal) -> None:
    if not caller.admin:
        raise Forbidden("this needs the admin key")
