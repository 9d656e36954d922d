"""Request dependencies: who is calling, and which namespace a request is about."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query

from actors.validation import check_namespace
from serve_app import context
from serve_app.keys import Principal
from storage.errors import BadRequest, Forbidden


async def principal(authorization: Annotated[str | None, Header()] = None) -> Principal:
    return await context.get().keys.authenticate(authorization)


Caller = Annotated[Principal, Depends(principal)]


def resolve_namespace(caller: Principal, requested: str | None) -> str:
    """`?namespace=` (or a body's), else the key's only namespace; anything ambiguous is a 400."""
    if requested is None:
        if len(caller.namespaces) == 1:
            return next(iter(caller.namespaces))
        raise BadRequest("say which namespace: ?namespace=<name> (this key has several or all)")
    namespace = check_namespace(requested)
    if not caller.can_use(namespace):
        raise Forbidden(f"this key may not use namespace {namespace!r}")
    return namespace


async def namespace(caller: Caller, namespace: Annotated[str | None, Query()] = None) -> str:
    return resolve_namespace(caller, namespace)


Ns = Annotated[str, Depends(namespace)]


def require_admin(caller: Principal) -> None:
    if not caller.admin:
        raise Forbidden("this needs the admin key")
