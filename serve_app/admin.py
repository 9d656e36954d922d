"""Admin endpoints: namespaces and their API keys."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from actors.hooks import PREVIOUS_UNTIL, SECRET
from actors.timestamps import iso
from actors.validation import check_namespace
from serve_app import context
from serve_app.deps import Caller, require_admin
from serve_app.keys import mint
from serve_app.models import (
    KeyCreate,
    NamespaceConfig,
    NamespaceCreate,
    SecretRotation,
    namespace_json,
)
from storage.errors import Forbidden, NotFound

router = APIRouter(prefix="/api/v1/namespaces")


@router.post("", status_code=201)
async def create_namespace(body: NamespaceCreate, caller: Caller) -> JSONResponse:
    require_admin(caller)
    name = check_namespace(body.name)
    namespace = await context.get().call(name, "create_namespace", body.config(), caller.key_id)
    return JSONResponse(
        namespace_json(namespace, with_secret=True),
        status_code=201,
        headers={"Location": f"/api/v1/namespaces/{name}"},
    )


@router.get("/{name}")
async def get_namespace(name: str, caller: Caller) -> dict[str, Any]:
    name = check_namespace(name)
    if not caller.can_use(name):
        raise Forbidden(f"this key may not use namespace {name!r}")
    return namespace_json(await context.get().call(name, "get_namespace"))


@router.patch("/{name}")
async def update_namespace(name: str, body: NamespaceConfig, caller: Caller) -> dict[str, Any]:
    require_admin(caller)
    name = check_namespace(name)
    namespace = await context.get().call(name, "update_namespace", body.config(), caller.key_id)
    return namespace_json(namespace)


@router.post("/{name}/webhook-secret/rotate")
async def rotate_webhook_secret(
    name: str, caller: Caller, body: SecretRotation | None = None
) -> dict[str, Any]:
    """A new signing secret; the old one signs beside it until the grace period ends."""
    require_admin(caller)
    name = check_namespace(name)
    grace_s = (body or SecretRotation()).grace_s
    namespace = await context.get().call(name, "rotate_webhook_secret", grace_s, caller.key_id)
    return {
        "webhookSecret": namespace.config[SECRET],
        "previousSecretValidUntil": iso(namespace.config[PREVIOUS_UNTIL]),
    }


@router.post("/{name}/keys", status_code=201)
async def create_key(name: str, caller: Caller, body: KeyCreate | None = None) -> JSONResponse:
    """A new key for the namespace. Its secret is in this response and nowhere else."""
    require_admin(caller)
    name = check_namespace(name)
    key, secret = mint((name,), now=time.time())
    await context.get().call(name, "put_api_key", key, caller.key_id)
    return JSONResponse({"keyId": key.key_id, "key": secret, "namespace": name}, status_code=201)


@router.delete("/{name}/keys/{key_id}", status_code=204)
async def revoke_key(name: str, key_id: str, caller: Caller) -> Response:
    require_admin(caller)
    name = check_namespace(name)
    ctx = context.get()
    key = await ctx.store.get_api_key(key_id)
    if key is None or name not in key.namespaces:
        raise NotFound(f"no key {key_id!r} in namespace {name!r}")
    if key.revoked_at is None:
        revoked = type(key)(
            key.key_id, key.secret_hash, key.namespaces, key.created_at, key.admin, time.time()
        )
        await ctx.call(name, "put_api_key", revoked, caller.key_id)
    ctx.keys.forget(key_id)
    return Response(status_code=204)
