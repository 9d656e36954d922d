"""Admin endpoints: namespaces and their API keys; the shards and where they run."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from actors.commands import check_id
from actors.limits import MAX_KEY_DESCRIPTION_CHARS, check_text
from actors.namespace_settings import NamespaceSettings, namespace_json
from actors.routing import shard_for
from actors.shard_states import shard_states
from actors.timestamps import iso
from serve_app.deps import Caller, D, Deps, require_admin
from serve_app.keys import mint
from serve_app.models import KeyCreate, NamespaceConfig, NamespaceCreate, SecretRotation
from serve_app.openapi import COMMON, responses
from storage.errors import Forbidden, NotFound
from storage.records import Namespace

router = APIRouter(responses=responses(*COMMON))
NAMESPACES = "/api/v1/namespaces"


@router.post(NAMESPACES, status_code=201, responses=responses(409))
async def create_namespace(body: NamespaceCreate, caller: Caller, deps: D) -> JSONResponse:
    require_admin(caller)
    namespace = await deps.shards.create_namespace(body.name, body.changes(), actor=caller.key_id)
    return JSONResponse(
        _namespace(namespace, deps, with_secret=True),
        status_code=201,
        headers={"Location": f"/api/v1/namespaces/{namespace.name}"},
    )


@router.get(NAMESPACES + "/{name}", responses=responses(404))
async def get_namespace(name: str, caller: Caller, deps: D) -> dict[str, Any]:
    """The namespace's settings, and `shard`: the slot of the shard that owns it."""
    if not caller.can_use(name):
        raise Forbidden(f"this key may not use namespace {name!r}")
    return _namespace(await deps.shards.get_namespace(name), deps)


@router.patch(NAMESPACES + "/{name}", responses=responses(404))
async def update_namespace(
    name: str, body: NamespaceConfig, caller: Caller, deps: D
) -> dict[str, Any]:
    require_admin(caller)
    namespace = await deps.shards.update_namespace(name, body.changes(), actor=caller.key_id)
    return _namespace(namespace, deps)


@router.post(NAMESPACES + "/{name}/webhook-secret/rotate", responses=responses(404))
async def rotate_webhook_secret(
    name: str, caller: Caller, deps: D, body: SecretRotation | None = None
) -> dict[str, Any]:
    """A new signing secret; the old one signs beside it until the grace period ends."""
    require_admin(caller)
    grace_s = (body or SecretRotation()).grace_s
    namespace = await deps.shards.rotate_webhook_secret(name, grace_s=grace_s, actor=caller.key_id)
    settings = NamespaceSettings.from_config(namespace.config)
    return {
        "webhookSecret": settings.secret,
        "previousSecretValidUntil": iso(settings.previous_secret_until),
    }


@router.post(NAMESPACES + "/{name}/keys", status_code=201, responses=responses(404))
async def create_key(
    name: str, caller: Caller, deps: D, body: KeyCreate | None = None
) -> JSONResponse:
    """A new key for the namespace. Its secret is in this response and nowhere else."""
    require_admin(caller)
    check_text("description", (body or KeyCreate()).description, MAX_KEY_DESCRIPTION_CHARS)
    key, secret = mint((name,), now=time.time())
    await deps.shards.put_api_key(name, key, actor=caller.key_id)
    return JSONResponse({"keyId": key.key_id, "key": secret, "namespace": name}, status_code=201)


@router.delete(NAMESPACES + "/{name}/keys/{key_id}", status_code=204, responses=responses(404))
async def revoke_key(name: str, key_id: str, caller: Caller, deps: D) -> Response:
    require_admin(caller)
    key = await deps.store.get_api_key(check_id("keyId", key_id))
    if key is None or name not in key.namespaces:
        raise NotFound(f"no key {key_id!r} in namespace {name!r}")
    if key.revoked_at is None:
        revoked = dataclasses.replace(key, revoked_at=time.time())
        await deps.shards.put_api_key(name, revoked, actor=caller.key_id)
    deps.keys.forget(key_id)
    return Response(status_code=204)


@router.get("/api/v1/admin/shards")
async def list_shards(caller: Caller, deps: D) -> list[dict[str, Any]]:
    """Every shard, in slot order: `{slot, node, epoch, liveJobs, pendingWrites, state}`
    (`actors.shard_states`). Answers within about 2 s even while shards are down: those
    are `"state": "unavailable"`, their other figures null."""
    require_admin(caller)
    return await shard_states(deps.shards)


def _namespace(namespace: Namespace, deps: Deps, *, with_secret: bool = False) -> dict[str, Any]:
    """The namespace as the API shows it: its settings and `shard`, the slot that owns it."""
    shard = shard_for(namespace.name, deps.shards.num_shards)
    return namespace_json(namespace, with_secret=with_secret) | {"shard": shard}
